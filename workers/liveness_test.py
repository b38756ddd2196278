"""Tests for workers/liveness.py against real gRPC servers."""

import concurrent.futures
import threading

from absl.testing import absltest
import grpc
import portpicker

from workers import liveness


class _Server:
  """A gRPC server whose Run and Ping handlers the test steers."""

  def __init__(self, ping=True):
    self.release = threading.Event()  # Lets blocked handlers return.
    # Set when a Run call ends; while its handler still waits, that is a
    # cancellation.
    self.ended = threading.Event()
    self.returned = threading.Event()  # Set when a Run handler returns.
    self.run_seconds = 0.0
    self.run_status = grpc.StatusCode.OK
    self.ping_answers = ping  # False: Ping blocks like a frozen process.
    handlers = {'Run': grpc.unary_unary_rpc_method_handler(self._run)}
    if ping is not None:
      handlers['Ping'] = grpc.unary_unary_rpc_method_handler(self._ping)
    self._server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=8))
    self._server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler('t.Peer', handlers)])
    port = portpicker.pick_unused_port()
    self._server.add_insecure_port(f'127.0.0.1:{port}')
    self._server.start()
    self.channel = grpc.insecure_channel(f'127.0.0.1:{port}')

  def _run(self, request, context):
    context.add_callback(self.ended.set)
    self.release.wait(self.run_seconds)
    self.returned.set()
    if self.run_status != grpc.StatusCode.OK:
      context.abort(self.run_status, 'the handler failed')
    return b'result:' + request

  def _ping(self, request, context):
    del context
    if not self.ping_answers:
      self.release.wait()
    return request

  def ping(self, timeout: float) -> None:
    self.channel.unary_unary('/t.Peer/Ping')(b'', timeout=timeout)

  def call(self, silence_timeout: float, deadline: float = 120.0,
           interval: float = 0.2):
    future = self.channel.unary_unary('/t.Peer/Run').future(
        b'x', timeout=deadline)
    return liveness.await_call(future, self.ping, silence_timeout, 'Run',
                               interval=interval)

  def stop(self):
    self.release.set()
    self.channel.close()
    self._server.stop(None)


class AwaitCallTest(absltest.TestCase):

  def _server(self, **kwargs) -> _Server:
    server = _Server(**kwargs)
    self.addCleanup(server.stop)
    return server

  def test_a_call_longer_than_the_silence_timeout_finishes_while_pings_answer(self):
    server = self._server()
    server.run_seconds = 8.0  # Forty ping intervals, two silence timeouts.
    self.assertEqual(server.call(silence_timeout=4.0), b'result:x')

  def test_a_silence_timeout_below_the_ping_interval_still_pings_first(self):
    server = self._server()
    server.run_seconds = 10.0  # Past the interval, 2.5 silence timeouts.
    self.assertEqual(server.call(silence_timeout=4.0, interval=8.0),
                     b'result:x')

  def test_a_peer_that_stops_answering_pings_is_given_up_and_the_call_cancelled(self):
    server = self._server(ping=False)
    server.run_seconds = 600.0  # Until released: only the pings end it.
    with self.assertRaisesRegex(liveness.Unresponsive,
                                r'Run: the peer answered no ping for 1 s'):
      server.call(silence_timeout=1.0)
    # The server saw the call end while its handler still waited: the
    # cancellation reached it, so it can stop working for nobody.
    self.assertTrue(server.ended.wait(30))
    self.assertFalse(server.returned.is_set())

  def test_a_peer_without_ping_still_counts_as_answering(self):
    server = self._server(ping=None)  # UNIMPLEMENTED is an answer.
    server.run_seconds = 8.0
    self.assertEqual(server.call(silence_timeout=4.0), b'result:x')

  def test_the_calls_own_failure_and_deadline_pass_through(self):
    server = self._server()
    server.run_status = grpc.StatusCode.INTERNAL
    with self.assertRaises(grpc.RpcError) as raised:
      server.call(silence_timeout=5.0)
    self.assertEqual(raised.exception.code(), grpc.StatusCode.INTERNAL)
    server.run_status = grpc.StatusCode.OK
    server.run_seconds = 600.0
    with self.assertRaises(grpc.RpcError) as raised:
      server.call(silence_timeout=60.0, deadline=1.0)
    self.assertEqual(raised.exception.code(),
                     grpc.StatusCode.DEADLINE_EXCEEDED)

  def test_a_ping_to_a_closed_port_is_unanswered(self):
    port = portpicker.pick_unused_port()
    channel = grpc.insecure_channel(f'127.0.0.1:{port}')
    self.addCleanup(channel.close)
    ping = lambda t: channel.unary_unary('/t.Peer/Ping')(b'', timeout=t)
    self.assertFalse(liveness.answers(ping, 5.0))


if __name__ == '__main__':
  absltest.main()
