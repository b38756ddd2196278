import datetime
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
    certs.write_bundle(ours, ['edge-0', 'edge-1', 'edge-server-0',
                              'edge-server-1', 'coordinator'])
    cls.ours = ours
    theirs = os.path.join(cls.root, 'theirs')
    certs.write_bundle(theirs, ['edge-server-0'])
    cls.pod = tls.TlsFiles.from_dir(ours, 'edge-0')
    # Pods admit edge servers only.
    cls.client = tls.TlsFiles.from_dir(ours, 'edge-server-0')
    # Trusts our CA but has a cert from another: nginx must refuse it.
    cls.stranger = tls.TlsFiles(ca=cls.client.ca,
                                cert=os.path.join(theirs, 'edge-server-0.crt'),
                                key=os.path.join(theirs, 'edge-server-0.key'))
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
    self.assertEqual(body['subject'],
                     'CN=edge-server-0,OU=edge-server,O=tff-edge')
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

  # Authorization by role, revocation, expiry, rotation.

  def _files(self, node: str) -> tls.TlsFiles:
    return tls.TlsFiles.from_dir(self.ours, node)

  def test_only_edge_servers_may_call_a_pod(self):
    upstream = _Listener()
    self.addCleanup(upstream.close)
    terminator = self._terminator(upstream.target)
    for caller in ('coordinator', 'edge-1'):  # Another pod, the coordinator.
      with self.subTest(caller=caller):
        with self.assertRaises(grpc.RpcError) as raised:
          _get_executor(terminator.target, self._files(caller),
                        server_name='edge-0')
        self.assertEqual(raised.exception.code(),
                         grpc.StatusCode.PERMISSION_DENIED)
        self.assertIn(tls_terminator.FORBIDDEN, raised.exception.details())
        self.assertEqual(
            tls.http_get_json(self.terminator.target, '/control/status',
                              self._files(caller), server_name='edge-0'),
            (403, {'error': tls_terminator.FORBIDDEN}))
    self.assertEqual(upstream.connections(), 0)
    self.assertTrue(_get_executor(self.terminator.target,
                                  self._files('edge-server-1'),
                                  server_name='edge-0').HasField('executor'))

  def test_a_certificate_of_another_role_with_a_forged_subject_is_refused(self):
    # An OU that only looks right inside another attribute: the whole
    # subject must match, so the CN cannot smuggle "OU=edge-server" in.
    from cryptography import x509 as x509_lib  # pylint: disable=g-import-not-at-top
    from cryptography.hazmat.primitives import hashes  # pylint: disable=g-import-not-at-top
    from cryptography.x509.oid import NameOID  # pylint: disable=g-import-not-at-top
    ca = certs.load_ca(self.ours)
    key = certs.new_key()
    subject = x509_lib.Name([
        x509_lib.NameAttribute(NameOID.ORGANIZATION_NAME, 'tff-edge'),
        x509_lib.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, 'edge-pod'),
        x509_lib.NameAttribute(NameOID.COMMON_NAME,
                               'x,OU=edge-server,O=tff-edge')])
    issued = certs.issue_node_cert(ca, 'edge-9', role='edge-pod')
    forged = (x509_lib.CertificateBuilder().subject_name(subject)
              .issuer_name(ca.cert.subject).public_key(key.public_key())
              .serial_number(x509_lib.random_serial_number())
              .not_valid_before(issued.cert.not_valid_before_utc)
              .not_valid_after(issued.cert.not_valid_after_utc)
              .sign(ca.key, hashes.SHA256()))
    out = self.create_tempdir().full_path
    shutil.copy(self.client.ca, os.path.join(out, 'ca.crt'))
    with open(os.path.join(out, 'forged.crt'), 'wb') as f:
      f.write(forged.public_bytes(certs.serialization.Encoding.PEM))
    with open(os.path.join(out, 'forged.key'), 'wb') as f:
      f.write(certs.Issued(None, key).key_pem())
    forged_files = tls.TlsFiles.from_dir(out, 'forged', validate=False)
    with self.assertRaises(grpc.RpcError) as raised:
      _get_executor(self.terminator.target, forged_files,
                    server_name='edge-0')
    self.assertEqual(raised.exception.code(),
                     grpc.StatusCode.PERMISSION_DENIED)

  def test_expired_certificate_is_refused(self):
    out = self.create_tempdir().full_path
    ca = certs.load_ca(self.ours)
    old = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(
        days=3)
    expired = certs.issue_node_cert(ca, 'edge-server-5', days=1, now=old)
    shutil.copy(self.client.ca, os.path.join(out, 'ca.crt'))
    with open(os.path.join(out, 'edge-server-5.crt'), 'wb') as f:
      f.write(expired.cert_pem())
    with open(os.path.join(out, 'edge-server-5.key'), 'wb') as f:
      f.write(expired.key_pem())
    files = tls.TlsFiles.from_dir(out, 'edge-server-5', validate=False)
    with self.assertRaises(grpc.RpcError) as raised:
      _get_executor(self.terminator.target, files, server_name='edge-0')
    self.assertEqual(raised.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
    self.assertEqual(tls.http_get_json(self.terminator.target,
                                       '/control/status', files,
                                       server_name='edge-0')[0], 403)

  def test_revoked_certificate_is_refused_after_reload_and_rotation_fails_no_call(self):
    # A CA directory of its own: the revocation and the rotation stay here.
    ca_dir = self.create_tempdir().full_path
    certs.write_bundle(ca_dir, ['edge-0', 'edge-server-0', 'edge-server-1'])
    pod = tls.TlsFiles.from_dir(ca_dir, 'edge-0')
    good = tls.TlsFiles.from_dir(ca_dir, 'edge-server-0')
    revoked = tls.TlsFiles.from_dir(ca_dir, 'edge-server-1')
    terminator = tls_terminator.NginxTerminator(
        0, pod, self.worker.target, None, self.create_tempdir().full_path,
        listen_host='127.0.0.1').start()
    self.addCleanup(terminator.stop)
    self.assertTrue(_get_executor(terminator.target, revoked,
                                  server_name='edge-0').HasField('executor'))
    # Calls run without pause through the revocation and a rotation.
    channel = tls.grpc_channel(terminator.target, good, server_name='edge-0')
    self.addCleanup(channel.close)
    stub = executor_pb2_grpc.ExecutorGroupStub(channel)
    failures, calls, stop = [], [0], threading.Event()

    def call_forever():
      while not stop.is_set():
        try:
          stub.GetExecutor(executor_pb2.GetExecutorRequest(
              cardinalities=value_serialization.serialize_cardinalities(
                  {tff.CLIENTS: 1})), timeout=10)
          calls[0] += 1
        except grpc.RpcError as e:
          failures.append(e)

    caller = threading.Thread(target=call_forever)
    caller.start()
    time.sleep(0.5)
    with open(revoked.cert, 'rb') as f:
      certs.write_crl(ca_dir, [certs.x509.load_pem_x509_certificate(f.read())])
    terminator.reload()
    time.sleep(0.5)
    # Rotation: a new key and certificate for the pod.
    renewed = certs.issue_node_cert(certs.load_ca(ca_dir), 'edge-0')
    with open(pod.key + '.new', 'wb') as f:
      f.write(renewed.key_pem())
    with open(pod.cert + '.new', 'wb') as f:
      f.write(renewed.cert_pem())
    os.replace(pod.key + '.new', pod.key)
    os.replace(pod.cert + '.new', pod.cert)
    terminator.reload()
    time.sleep(1.0)
    stop.set()
    caller.join()
    self.assertEqual(failures, [])
    self.assertGreater(calls[0], 10)
    self.assertEqual(terminator.reloads, 2)
    with self.assertRaises(grpc.RpcError) as raised:
      _get_executor(terminator.target, revoked, server_name='edge-0')
    self.assertEqual(raised.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
    # New connections see the new certificate.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(pod.ca)
    context.check_hostname = False
    with socket.create_connection(('127.0.0.1', terminator.port)) as raw:
      with context.wrap_socket(raw) as conn:
        served = certs.x509.load_der_x509_certificate(conn.getpeercert(True))
    self.assertEqual(served.serial_number, renewed.cert.serial_number)

  def test_reload_with_files_that_do_not_fit_keeps_serving(self):
    ca_dir = self.create_tempdir().full_path
    certs.write_bundle(ca_dir, ['edge-0', 'edge-server-0'])
    pod = tls.TlsFiles.from_dir(ca_dir, 'edge-0')
    terminator = tls_terminator.NginxTerminator(
        0, pod, self.worker.target, None, self.create_tempdir().full_path,
        listen_host='127.0.0.1').start()
    self.addCleanup(terminator.stop)
    shutil.copy(self.stranger.key, pod.key)  # Half a rotation.
    with self.assertRaisesRegex(tls.TlsError, 'not the key of'):
      terminator.reload()
    self.assertTrue(_get_executor(
        terminator.target, tls.TlsFiles.from_dir(ca_dir, 'edge-server-0'),
        server_name='edge-0').HasField('executor'))

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
    for line in (f'pid "{run_dir}/nginx.0.pid";', 'error_log stderr warn;',
                 'listen 0.0.0.0:8443 ssl http2 reuseport;',
                 'ssl_verify_client on;',
                 f'client_max_body_size {worker_process.GRPC_MAX_MESSAGE_MB}m;', 'grpc_pass grpc://executor;',
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
