import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top
from absl.testing import absltest
import grpc
import numpy as np
import portpicker
import tensorflow_federated as tff
from tensorflow_federated.proto.v0 import executor_pb2
from tensorflow_federated.proto.v0 import executor_pb2_grpc
from tensorflow_federated.python.core.backends.native import compiler
from tensorflow_federated.python.core.impl.executors import value_serialization

from workers import certs
from workers import executor_client
from workers import tls
from workers import tls_terminator
from workers import worker_process

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_REJECTED = tls_terminator.REJECTED


@tff.federated_computation(tff.FederatedType(np.float32, tff.CLIENTS))
def _client_sum(values):
  return tff.federated_sum(values)


def _serialized(comp):
  native = compiler.desugar_and_transform_to_native(comp)
  return value_serialization.serialize_value(native, native.type_signature)[0]


class _ControlHandler(http.server.BaseHTTPRequestHandler):
  """Echoes what the terminator forwarded: path and the caller's subject."""

  def do_GET(self):  # pylint: disable=invalid-name
    data = json.dumps({'path': self.path,
                       'subject': self.headers['X-Client-Subject']}).encode()
    self.send_response(200)
    self.send_header('Content-Type', 'application/json')
    self.send_header('Content-Length', str(len(data)))
    self.end_headers()
    self.wfile.write(data)

  def log_message(self, *args):
    del args


class _Listener:
  """A TCP port that counts connections and never answers: a fake upstream."""

  def __init__(self):
    self._socket = socket.create_server(('127.0.0.1', 0))
    self._socket.setblocking(False)
    self.target = f'127.0.0.1:{self._socket.getsockname()[1]}'
    self._accepted = []

  def connections(self) -> int:
    while True:
      try:
        self._accepted.append(self._socket.accept()[0])
      except BlockingIOError:
        return len(self._accepted)

  def close(self):
    for conn in self._accepted:
      conn.close()
    self._socket.close()


def _get_executor(target: str, files, timeout: float = 10,
                  server_name=None) -> executor_pb2.GetExecutorResponse:
  channel = tls.grpc_channel(target, files, server_name=server_name)
  try:
    return executor_pb2_grpc.ExecutorGroupStub(channel).GetExecutor(
        executor_pb2.GetExecutorRequest(
            cardinalities=value_serialization.serialize_cardinalities(
                {tff.CLIENTS: 1})), timeout=timeout)
  finally:
    channel.close()


class NginxTerminatorTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    try:
      tls_terminator.find_nginx()
    except tls_terminator.TerminatorError as e:
      raise AssertionError(f'{e} (these tests need the real nginx)') from None
    cls.root = tempfile.mkdtemp()
    ours = os.path.join(cls.root, 'ours')
    certs.write_bundle(ours, ['edge-0', 'coordinator'])
    theirs = os.path.join(cls.root, 'theirs')
    certs.write_bundle(theirs, ['coordinator'])
    cls.pod = tls.TlsFiles.from_dir(ours, 'edge-0')
    cls.client = tls.TlsFiles.from_dir(ours, 'coordinator')
    # Trusts our CA but has a cert from another: nginx must refuse it.
    cls.stranger = tls.TlsFiles(ca=cls.client.ca,
                                cert=os.path.join(theirs, 'coordinator.crt'),
                                key=os.path.join(theirs, 'coordinator.key'))
    # Our cert, but trusting another CA: must refuse our terminator.
    cls.distrustful = tls.TlsFiles(ca=os.path.join(theirs, 'ca.crt'),
                                   cert=cls.client.cert, key=cls.client.key)
    cls.worker = worker_process.WorkerProcess().start()
    cls.control = http.server.ThreadingHTTPServer(('127.0.0.1', 0),
                                                  _ControlHandler)
    threading.Thread(target=cls.control.serve_forever, daemon=True).start()
    cls.terminator = tls_terminator.NginxTerminator(
        0, cls.pod, cls.worker.target,
        f'127.0.0.1:{cls.control.server_address[1]}',
        os.path.join(cls.root, 'run')).start()

  @classmethod
  def tearDownClass(cls):
    cls.terminator.stop()
    cls.control.shutdown()
    cls.control.server_close()
    cls.worker.stop()
    shutil.rmtree(cls.root)
    super().tearDownClass()

  def _terminator(self, grpc_upstream: str, http_upstream=None
                  ) -> tls_terminator.NginxTerminator:
    terminator = tls_terminator.NginxTerminator(
        0, self.pod, grpc_upstream, http_upstream,
        self.create_tempdir().full_path, listen_host='127.0.0.1').start()
    self.addCleanup(terminator.stop)
    return terminator

  def test_executor_call_through_mutual_tls(self):
    client = executor_client.ExecutorClient(
        self.terminator.target,
        tls.grpc_channel(self.terminator.target, self.client,
                         server_name='edge-0'))
    self.addCleanup(client.close)
    values_type = _client_sum.type_signature.parameter
    arg, _ = value_serialization.serialize_value([1.0, 2.0, 4.5], values_type)
    result = client.run('sum', _serialized(_client_sum), arg, 3, timeout=60)
    value, _ = value_serialization.deserialize_value(
        executor_client.unplaced(result))
    self.assertEqual(float(value), 7.5)

  def test_large_messages_pass_both_ways(self):
    # nginx's default body limit is 1 MB; ours has none.
    channel = tls.grpc_channel(self.terminator.target, self.client)
    self.addCleanup(channel.close)
    stub = executor_pb2_grpc.ExecutorGroupStub(channel)
    executor = _get_executor(self.terminator.target, self.client).executor
    big = np.arange(2_000_000, dtype=np.float32)  # 8 MB.
    value, _ = value_serialization.serialize_value(
        big, tff.TensorType(np.float32, [big.size]))
    ref = stub.CreateValue(executor_pb2.CreateValueRequest(
        executor=executor, value=value), timeout=60).value_ref
    back = stub.Compute(executor_pb2.ComputeRequest(
        executor=executor, value_ref=ref), timeout=60).value
    np.testing.assert_array_equal(
        value_serialization.deserialize_value(back)[0], big)

  def test_rejected_callers_never_reach_the_executor(self):
    upstream = _Listener()
    self.addCleanup(upstream.close)
    terminator = self._terminator(upstream.target)
    with open(self.client.ca, 'rb') as f:
      no_cert = grpc.secure_channel(
          terminator.target, grpc.ssl_channel_credentials(f.read()))
    self.addCleanup(no_cert.close)
    with self.assertRaises(grpc.RpcError) as raised:
      executor_pb2_grpc.ExecutorGroupStub(no_cert).GetExecutor(
          executor_pb2.GetExecutorRequest(), timeout=10)
    self.assertEqual(raised.exception.code(),
                     grpc.StatusCode.UNAUTHENTICATED)
    self.assertIn(_REJECTED, raised.exception.details())
    with self.assertRaises(grpc.RpcError) as raised:
      _get_executor(terminator.target, self.stranger)
    self.assertEqual(raised.exception.code(),
                     grpc.StatusCode.UNAUTHENTICATED)
    # We refuse the terminator's cert: the handshake fails.
    with self.assertRaises(grpc.RpcError) as raised:
      _get_executor(terminator.target, self.distrustful)
    self.assertEqual(raised.exception.code(), grpc.StatusCode.UNAVAILABLE)
    self.assertIn('CERTIFICATE_VERIFY_FAILED', raised.exception.details())
    self.assertEqual(upstream.connections(), 0)
    # The same call with our cert is passed on (and hangs: no gRPC there).
    with self.assertRaises(grpc.RpcError) as raised:
      _get_executor(terminator.target, self.client, timeout=1)
    self.assertEqual(raised.exception.code(),
                     grpc.StatusCode.DEADLINE_EXCEEDED)
    self.assertEqual(upstream.connections(), 1)

  def test_rejection_is_an_error_not_unavailable_for_executor_client(self):
    client = executor_client.ExecutorClient(
        self.terminator.target,
        tls.grpc_channel(self.terminator.target, self.stranger))
    self.addCleanup(client.close)
    with self.assertRaises(executor_client.ExecutorError) as raised:
      client.run('sum', _serialized(_client_sum), None, 1, timeout=10)
    self.assertEqual(raised.exception.kind, 'error')
    self.assertIn(_REJECTED, str(raised.exception))

  def test_server_name_is_verified(self):
    self.assertTrue(_get_executor(self.terminator.target, self.client,
                                  server_name='edge-0').HasField('executor'))
    with self.assertRaises(grpc.RpcError) as raised:
      _get_executor(self.terminator.target, self.client, server_name='edge-1')
    self.assertEqual(raised.exception.code(), grpc.StatusCode.UNAVAILABLE)

  def test_dead_upstreams_are_unavailable(self):
    control = f'127.0.0.1:{portpicker.pick_unused_port()}'
    terminator = self._terminator(
        f'127.0.0.1:{portpicker.pick_unused_port()}', control)
    client = executor_client.ExecutorClient(
        terminator.target, tls.grpc_channel(terminator.target, self.client))
    self.addCleanup(client.close)
    with self.assertRaises(executor_client.ExecutorError) as raised:
      client.run('sum', _serialized(_client_sum), None, 1, timeout=10)
    self.assertEqual(raised.exception.kind, 'unavailable')
    self.assertIn('no executor service answers', str(raised.exception))
    self.assertEqual(
        tls.http_get_json(terminator.target, '/control/x', self.client),
        (502, {'error': 'TLS terminator: no control endpoint answers at '
                        f'{control}'}))

  def test_control_needs_a_client_cert_from_our_ca(self):
    target = self.terminator.target
    status, body = tls.http_get_json(target, '/control/status?x=1',
                                     self.client, server_name='edge-0')
    self.assertEqual(status, 200)
    self.assertEqual(body['path'], '/control/status?x=1')
    self.assertIn('CN=coordinator', body['subject'])
    self.assertEqual(tls.http_get_json(target, '/control/status',
                                       self.stranger),
                     (403, {'error': _REJECTED}))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(self.client.ca)
    conn = http.client.HTTPSConnection(target, context=context, timeout=5)
    conn.request('GET', '/control/status')
    response = conn.getresponse()
    self.assertEqual(response.status, 403)
    self.assertEqual(json.loads(response.read()), {'error': _REJECTED})
    conn.close()
    with self.assertRaises(OSError):  # ssl.SSLCertVerificationError
      tls.http_get_json(target, '/control/status', self.distrustful)

  def test_port_in_use_fails_with_nginx_stderr(self):
    taken = socket.create_server(('127.0.0.1', 0))
    self.addCleanup(taken.close)
    terminator = tls_terminator.NginxTerminator(
        taken.getsockname()[1], self.pod, self.worker.target, None,
        self.create_tempdir().full_path, listen_host='127.0.0.1')
    self.addCleanup(terminator.stop)
    with self.assertRaisesRegex(tls_terminator.TerminatorError,
                                'exited with status 1:.*Address already in '
                                'use'):
      terminator.start()

  def test_bad_config_fails_with_nginx_stderr(self):
    terminator = tls_terminator.NginxTerminator(
        0, self.pod, 'no-such-host.invalid:80', None,
        self.create_tempdir().full_path)
    self.addCleanup(terminator.stop)
    with self.assertRaisesRegex(tls_terminator.TerminatorError,
                                r'host not found in upstream.*config: .*'
                                r'nginx\.conf'):
      terminator.start()

  def test_bad_cert_fails_before_nginx(self):
    terminator = tls_terminator.NginxTerminator(
        0, tls.TlsFiles(ca=self.pod.ca, cert=self.stranger.cert,
                        key=self.stranger.key),
        self.worker.target, None, self.create_tempdir().full_path)
    with self.assertRaisesRegex(tls.TlsError, 'not signed by the CA'):
      terminator.start()
    self.assertFalse(terminator.alive())

  def test_config_keeps_writes_in_run_dir(self):
    run_dir = self.create_tempdir().full_path
    config = tls_terminator.NginxTerminator(
        8443, self.pod, '127.0.0.1:8000', '127.0.0.1:8001', run_dir).config()
    for line in (f'pid "{run_dir}/nginx.pid";', 'error_log stderr warn;',
                 'listen 0.0.0.0:8443 ssl http2;', 'ssl_verify_client on;',
                 'client_max_body_size 0;', 'grpc_pass grpc://executor;',
                 'proxy_pass http://control;', 'master_process off;',
                 f'proxy_temp_path "{run_dir}/proxy";'):
      self.assertIn(line, config)
    self.assertNotIn('/var/', config)
    without_control = tls_terminator.NginxTerminator(
        8443, self.pod, '127.0.0.1:8000', None, run_dir).config()
    self.assertNotIn('/control/', without_control)

  def test_bad_arguments_are_named(self):
    with self.assertRaisesRegex(tls_terminator.TerminatorError,
                                "grpc_upstream '127.0.0.1' is not host:port"):
      tls_terminator.NginxTerminator(0, self.pod, '127.0.0.1', None, '/tmp/x')
    with self.assertRaisesRegex(tls_terminator.TerminatorError,
                                'run_dir path .* has a quote'):
      tls_terminator.NginxTerminator(0, self.pod, '127.0.0.1:1', None,
                                     '/tmp/a;b')

  def test_missing_nginx_says_to_run_setup(self):
    old_path = os.environ['PATH']
    old_fallbacks = tls_terminator._NGINX_FALLBACKS
    os.environ['PATH'] = '/nonexistent'
    tls_terminator._NGINX_FALLBACKS = ()
    try:
      with self.assertRaisesRegex(tls_terminator.TerminatorError,
                                  'nginx is not installed.*setup.sh'):
        tls_terminator.find_nginx()
    finally:
      os.environ['PATH'] = old_path
      tls_terminator._NGINX_FALLBACKS = old_fallbacks

  def test_nginx_dies_with_a_killed_parent(self):
    script = textwrap.dedent(f"""
        import sys, time
        from workers import tls, tls_terminator
        t = tls_terminator.NginxTerminator(
            0, tls.{self.pod!r}, '127.0.0.1:1', None, {self.create_tempdir()
            .full_path!r}, listen_host='127.0.0.1').start()
        print(t.pid, t.port, flush=True)
        time.sleep(600)
        """)
    parent = subprocess.Popen([sys.executable, '-c', script], cwd=_ROOT,
                              stdout=subprocess.PIPE, text=True)
    self.addCleanup(parent.wait)
    self.addCleanup(parent.kill)
    nginx_pid, port = map(int, parent.stdout.readline().split())
    self.assertTrue(_pid_alive(nginx_pid))
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while _pid_alive(nginx_pid) and time.monotonic() < deadline:
      time.sleep(0.05)
    self.assertFalse(_pid_alive(nginx_pid), 'nginx outlived its parent')
    with self.assertRaises(ConnectionRefusedError):  # No orphan holds it.
      socket.create_connection(('127.0.0.1', port), timeout=2).close()

  def test_stop(self):
    terminator = self._terminator(self.worker.target)
    self.assertTrue(terminator.alive())
    terminator.stop()
    self.assertFalse(terminator.alive())
    with self.assertRaises(ConnectionRefusedError):
      socket.create_connection(('127.0.0.1', terminator.port), timeout=2)


def _pid_alive(pid: int) -> bool:
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().split()[2] != 'Z'  # A zombie is dead for us.
  except FileNotFoundError:
    return False


if __name__ == '__main__':
  absltest.main()
