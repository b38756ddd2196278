import concurrent.futures
import datetime
import http.server
import json
import os
import shutil
import ssl
import tempfile
import threading

from absl.testing import absltest
import grpc

from workers import certs
from workers import tls

_ECHO = '/test.Echo/Echo'


def _echo(request: bytes, context) -> bytes:
  # Shows the server saw the client's certificate.
  peer = context.auth_context().get('x509_common_name', [b'?'])[0]
  return peer + b':' + request


class _GrpcServer:
  """A Python gRPC echo server, over TLS when given files."""

  def __init__(self, files):
    self._server = grpc.server(concurrent.futures.ThreadPoolExecutor(2))
    self._server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        'test.Echo', {'Echo': grpc.unary_unary_rpc_method_handler(_echo)})])
    if files is None:
      self.port = self._server.add_insecure_port('127.0.0.1:0')
    else:
      self.port = self._server.add_secure_port(
          '127.0.0.1:0', tls.grpc_server_credentials(files))
    self._server.start()
    self.target = f'127.0.0.1:{self.port}'

  def stop(self):
    self._server.stop(0)


class _JsonHandler(http.server.BaseHTTPRequestHandler):

  def _reply(self, body):
    data = json.dumps(body).encode()
    self.send_response(200)
    self.send_header('Content-Type', 'application/json')
    self.send_header('Content-Length', str(len(data)))
    self.end_headers()
    self.wfile.write(data)

  def do_GET(self):  # pylint: disable=invalid-name
    if self.path == '/text':
      self.send_response(502)
      self.send_header('Content-Length', '5')
      self.end_headers()
      self.wfile.write(b'<bad>')
      return
    self._reply({'path': self.path})

  def do_POST(self):  # pylint: disable=invalid-name
    length = int(self.headers['Content-Length'])
    self._reply({'got': json.loads(self.rfile.read(length))})

  def log_message(self, *args):
    del args


class _HttpServer:
  """An HTTP(S) JSON server that demands a client certificate over TLS."""

  def __init__(self, files):
    self._server = http.server.ThreadingHTTPServer(('127.0.0.1', 0),
                                                   _JsonHandler)
    if files is not None:
      context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
      context.verify_mode = ssl.CERT_REQUIRED
      context.load_verify_locations(files.ca)
      context.load_cert_chain(files.cert, files.key)
      self._server.socket = context.wrap_socket(self._server.socket,
                                                server_side=True)
    self.target = f'127.0.0.1:{self._server.server_address[1]}'
    threading.Thread(target=self._server.serve_forever, daemon=True).start()

  def stop(self):
    self._server.shutdown()
    self._server.server_close()


class TlsTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp()
    cls.dir = os.path.join(cls.root, 'ours')
    certs.write_bundle(cls.dir, ['edge-0', 'coordinator'])
    cls.other_dir = os.path.join(cls.root, 'other')
    certs.write_bundle(cls.other_dir, ['coordinator'])
    cls.server = tls.TlsFiles.from_dir(cls.dir, 'edge-0')
    cls.client = tls.TlsFiles.from_dir(cls.dir, 'coordinator')
    # Trusts our CA but has a cert from another: servers must refuse it.
    cls.stranger = tls.TlsFiles(
        ca=cls.client.ca, cert=os.path.join(cls.other_dir, 'coordinator.crt'),
        key=os.path.join(cls.other_dir, 'coordinator.key'))
    # Our cert, but trusting another CA: must refuse our servers.
    cls.distrustful = tls.TlsFiles(ca=os.path.join(cls.other_dir, 'ca.crt'),
                                   cert=cls.client.cert, key=cls.client.key)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root)
    super().tearDownClass()

  def _copy(self, **replace) -> tls.TlsFiles:
    """The client's files copied to a fresh dir, some replaced by content."""
    out = self.create_tempdir().full_path
    paths = {}
    for field in ('ca', 'cert', 'key'):
      paths[field] = os.path.join(out, os.path.basename(
          getattr(self.client, field)))
      shutil.copy(getattr(self.client, field), paths[field])
      if field in replace:
        with open(paths[field], 'wb') as f:
          f.write(replace[field])
    return tls.TlsFiles(**paths)

  # TlsFiles.

  def test_from_dir_uses_the_certs_layout(self):
    self.assertEqual(self.client, tls.TlsFiles(
        ca=os.path.join(self.dir, 'ca.crt'),
        cert=os.path.join(self.dir, 'coordinator.crt'),
        key=os.path.join(self.dir, 'coordinator.key'),
        crl=os.path.join(self.dir, 'ca.crl')))

  def test_plaintext_only_when_asked_for(self):
    with self.assertRaisesRegex(tls.TlsError, 'pass --insecure explicitly'):
      tls.resolve('', 'coordinator', False, 'the coordinator')
    self.assertIsNone(tls.resolve('', 'coordinator', True, 'the coordinator'))
    with self.assertRaisesRegex(tls.TlsError, 'contradict'):
      tls.resolve(self.dir, 'coordinator', True, 'the coordinator')
    self.assertEqual(tls.resolve(self.dir, 'coordinator', False, 'x'),
                     self.client)

  def test_peer_policy_admits_roles_and_refuses_revoked_certificates(self):
    policy = tls.PeerPolicy(self.client, ['coordinator'])
    with open(self.client.cert, 'rb') as f:
      pem = f.read()
    self.assertEqual(policy.check_pem(pem), ('coordinator', 'coordinator'))
    with self.assertRaisesRegex(PermissionError, 'may not call'):
      tls.PeerPolicy(self.client, ['edge-server']).check_pem(pem)
    ca_dir = self.create_tempdir().full_path
    certs.write_bundle(ca_dir, ['coordinator', 'edge-server-0'])
    files = tls.TlsFiles.from_dir(ca_dir, 'coordinator')
    policy = tls.PeerPolicy(files, ['coordinator'])
    with open(files.cert, 'rb') as f:
      pem = f.read()
    self.assertEqual(policy.check_pem(pem)[0], 'coordinator')
    certs.write_crl(ca_dir, [certs.x509.load_pem_x509_certificate(pem)])
    with self.assertRaisesRegex(PermissionError, 'is revoked'):
      policy.check_pem(pem)
    # An expired CRL refuses everyone (as nginx does), until re-signed.
    ca = certs.load_ca(ca_dir)
    old = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(
        days=40)
    with open(files.crl, 'wb') as f:
      serial = certs.x509.load_pem_x509_certificate(pem).serial_number
      f.write(certs.make_crl(ca, [serial], days=30, now=old).public_bytes(
          certs.serialization.Encoding.PEM))
    with self.assertRaisesRegex(PermissionError, 'expired'):
      policy.check_pem(pem)
    certs.write_crl(ca_dir)
    with self.assertRaisesRegex(PermissionError, 'is revoked'):
      policy.check_pem(pem)  # Re-signed: the revocation still stands.

  def test_certificates_without_a_role_are_refused(self):
    legacy = certs.make_ca()
    ca_dir = self.create_tempdir().full_path
    with open(os.path.join(ca_dir, 'ca.crt'), 'wb') as f:
      f.write(legacy.cert_pem())
    cert = (certs.x509.CertificateBuilder()
            .subject_name(certs._name('edge-server-0'))  # pylint: disable=protected-access
            .issuer_name(legacy.cert.subject)
            .public_key(certs.new_key().public_key())
            .serial_number(1)
            .not_valid_before(legacy.cert.not_valid_before_utc)
            .not_valid_after(legacy.cert.not_valid_after_utc)
            .sign(legacy.key, certs.hashes.SHA256()))
    policy = tls.PeerPolicy(tls.TlsFiles(os.path.join(ca_dir, 'ca.crt'), '',
                                         ''), ['edge-server'])
    with self.assertRaisesRegex(PermissionError, 'subject alternative'):
      policy.check_pem(cert.public_bytes(certs.serialization.Encoding.PEM))

  def test_missing_file_is_named(self):
    with self.assertRaisesRegex(
        tls.TlsError, r'cannot read the certificate file .*/edge-9\.crt: No '
        r'such file.*python -m workers.certs'):
      tls.TlsFiles.from_dir(self.dir, 'edge-9')

  def test_unparseable_files_are_named(self):
    with self.assertRaisesRegex(tls.TlsError, r'CA file .*ca\.crt holds no'):
      self._copy(ca=b'junk').validate()
    with self.assertRaisesRegex(tls.TlsError, r'file .*\.crt holds no PEM'):
      self._copy(cert=b'junk').validate()
    with self.assertRaisesRegex(tls.TlsError, r'key file .*\.key is not an'):
      self._copy(key=b'junk').validate()

  def test_key_of_another_node_is_refused(self):
    with open(self.server.key, 'rb') as f:
      files = self._copy(key=f.read())
    with self.assertRaisesRegex(tls.TlsError, r'coordinator\.key is not the '
                                r'key of .*coordinator\.crt'):
      files.validate()

  def test_cert_of_another_ca_is_refused(self):
    with open(self.stranger.cert, 'rb') as f:
      cert = f.read()
    with open(self.stranger.key, 'rb') as f:
      files = self._copy(cert=cert, key=f.read())
    with self.assertRaisesRegex(tls.TlsError, 'not signed by the CA in'):
      files.validate()

  def test_expired_cert_is_refused(self):
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(
        days=400)
    with self.assertRaisesRegex(tls.TlsError, r'coordinator\.crt is valid '
                                'only from'):
      self.client.validate(now=later)

  # gRPC.

  def _echo_call(self, server: _GrpcServer, files, server_name=None,
                 target=None) -> bytes:
    channel = tls.grpc_channel(target or server.target, files,
                               server_name=server_name)
    try:
      return channel.unary_unary(_ECHO)(b'hi', timeout=5)
    finally:
      channel.close()

  def test_mutual_tls_grpc_call(self):
    server = _GrpcServer(self.server)
    self.addCleanup(server.stop)
    self.assertEqual(self._echo_call(server, self.client), b'coordinator:hi')
    # By IP or any name, as long as the server's cert names what we verify.
    self.assertEqual(
        self._echo_call(server, self.client, server_name='edge-0'),
        b'coordinator:hi')
    self.assertEqual(self._echo_call(
        server, self.client, target=f'localhost:{server.port}'),
                     b'coordinator:hi')

  def test_grpc_refusals(self):
    server = _GrpcServer(self.server)
    self.addCleanup(server.stop)
    # A client with another CA's cert; a client that trusts another CA;
    # a client expecting another node's name.
    for files, name in [(self.stranger, None),
                        (self.distrustful, None),
                        (self.client, 'edge-1')]:
      with self.assertRaises(grpc.RpcError) as raised:
        self._echo_call(server, files, server_name=name)
      self.assertEqual(raised.exception.code(), grpc.StatusCode.UNAVAILABLE)
    with self.assertRaises(grpc.RpcError) as raised:
      self._echo_call(server, None)  # Plaintext to a TLS port.
    self.assertEqual(raised.exception.code(), grpc.StatusCode.UNAVAILABLE)
    with open(self.client.ca, 'rb') as f:  # TLS, but no client cert.
      no_cert = grpc.secure_channel(server.target,
                                    grpc.ssl_channel_credentials(f.read()))
    self.addCleanup(no_cert.close)
    with self.assertRaises(grpc.RpcError) as raised:
      no_cert.unary_unary(_ECHO)(b'hi', timeout=5)
    self.assertEqual(raised.exception.code(), grpc.StatusCode.UNAVAILABLE)

  def test_insecure_channel_without_tls(self):
    server = _GrpcServer(None)
    self.addCleanup(server.stop)
    self.assertEqual(self._echo_call(server, None), b'?:hi')

  # HTTP.

  def test_https_json_with_client_cert(self):
    server = _HttpServer(self.server)
    self.addCleanup(server.stop)
    self.assertEqual(tls.http_get_json(server.target, '/x?y=1', self.client),
                     (200, {'path': '/x?y=1'}))
    self.assertEqual(
        tls.http_post_json(server.target, '/p', {'a': [1, 2]}, self.client,
                           server_name='edge-0'),
        (200, {'got': {'a': [1, 2]}}))
    self.assertEqual(tls.http_get_json(server.target, '/text', self.client),
                     (502, '<bad>'))

  def test_https_refusals(self):
    server = _HttpServer(self.server)
    self.addCleanup(server.stop)
    with self.assertRaises(ssl.SSLCertVerificationError):
      tls.http_get_json(server.target, '/', self.distrustful)
    with self.assertRaises(ssl.SSLCertVerificationError):
      tls.http_get_json(server.target, '/', self.client, server_name='edge-1')
    # The server refuses a stranger's cert: an alert or a reset, by timing.
    with self.assertRaises(OSError):
      tls.http_get_json(server.target, '/', self.stranger)

  def test_plain_http_without_tls(self):
    server = _HttpServer(None)
    self.addCleanup(server.stop)
    self.assertEqual(tls.http_get_json(server.target, '/a'),
                     (200, {'path': '/a'}))
    self.assertEqual(tls.http_post_json(server.target, '/a', None),
                     (200, {'got': None}))


if __name__ == '__main__':
  absltest.main()
