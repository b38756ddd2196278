import concurrent.futures

from absl.testing import absltest
import grpc

from workers import limits
from workers import wire
from workers import worker_process

_GOOD = {'failures': [{'pod': 'edge-1', 'edge_server': 'es', 'kind': 'error',
                       'error': 'x'}],
         'pod_seconds': {'edge-0': 1.5}, 'merged_pods': 1,
         'pod_bytes_sent': 10, 'pod_bytes_received': 20}


def _status(code: grpc.StatusCode) -> grpc.RpcError:
  """A real RpcError with `code`, from a real server that aborts."""
  server = grpc.server(concurrent.futures.ThreadPoolExecutor(1))
  server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
      'test.S', {'M': grpc.unary_unary_rpc_method_handler(
          lambda request, context: context.abort(code, 'boom'))})])
  port = server.add_insecure_port('127.0.0.1:0')
  server.start()
  try:
    with grpc.insecure_channel(f'127.0.0.1:{port}') as channel:
      try:
        channel.unary_unary('/test.S/M')(b'', timeout=10)
      except grpc.RpcError as e:
        return e
  finally:
    server.stop(0)
  raise AssertionError('no error')


class LimitsTest(absltest.TestCase):

  def test_message_over_the_cap_is_a_clear_error(self):
    cap = worker_process.GRPC_MAX_MESSAGE_MB * 1000 * 1000
    limits.check_message_size(cap, 'Run')
    with self.assertRaisesRegex(limits.MessageTooLarge,
                                'Run to es is .* MB, over the .* MB message '
                                'cap .*TFF_EDGE_MAX_MESSAGE_MB'):
      limits.check_message_size(cap + 1, 'Run to es')

  def test_good_reply_passes_and_bad_ones_are_named(self):
    limits.check_reply(_GOOD, {'partial': b'x'})
    bad = [
        ([], {}),
        ({**_GOOD, 'pod_bytes_sent': -1}, {}),
        ({**_GOOD, 'pod_bytes_sent': 1.5}, {}),
        ({**_GOOD, 'pod_seconds': [1]}, {}),
        ({**_GOOD, 'failures': [{'pod': 'edge-1'}]}, {}),
        ({**_GOOD, 'failures': 'none'}, {}),
        (_GOOD, {'partial': b'', 'other': b''}),
    ]
    for reply, blobs in bad:
      with self.subTest(reply=str(reply)[:60]):
        with self.assertRaises(limits.BadReply):
          limits.check_reply(reply, blobs)

  def test_every_failure_becomes_a_kind(self):
    for code, kind in ((grpc.StatusCode.DEADLINE_EXCEEDED, 'timeout'),
                       (grpc.StatusCode.UNAVAILABLE, 'unavailable'),
                       (grpc.StatusCode.PERMISSION_DENIED, 'refused'),
                       (grpc.StatusCode.RESOURCE_EXHAUSTED, 'too_large'),
                       (grpc.StatusCode.INTERNAL, 'error'),
                       (grpc.StatusCode.UNKNOWN, 'error')):
      with self.subTest(code=code.name):
        got, detail = limits.failure_of(_status(code))
        self.assertEqual(got, kind)
        self.assertIn(code.name, detail)
    self.assertEqual(limits.failure_of(wire.WireError('x'))[0], 'bad_reply')
    self.assertEqual(limits.failure_of(KeyError('k'))[0], 'error')


if __name__ == '__main__':
  absltest.main()
