import datetime
import ipaddress
import os
import shutil
import stat
import subprocess
import sys
import tempfile

from absl.testing import absltest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID

from workers import certs
from workers import tls
from workers.secagg import keys as secagg_keys
from workers.secagg import messages as secagg_messages

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_NODES = ['coordinator', 'edge-server-0', 'edge-0']


def _load(path: str) -> x509.Certificate:
  with open(path, 'rb') as f:
    return x509.load_pem_x509_certificate(f.read())


def _store(ca_path: str) -> verification.Store:
  return verification.Store([_load(ca_path)])


def _verify_server(ca_path: str, cert_path: str,
                   subject: verification.Subject) -> None:
  verifier = (verification.PolicyBuilder().store(_store(ca_path))
              .build_server_verifier(subject))
  verifier.verify(_load(cert_path), [])


def _verify_client(ca_path: str, cert_path: str) -> None:
  verifier = (verification.PolicyBuilder().store(_store(ca_path))
              .build_client_verifier())
  verifier.verify(_load(cert_path), [])


class CertsTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp()
    cls.dir = os.path.join(cls.root, 'bundle')
    cls.written = certs.write_bundle(
        cls.dir, _NODES, {'edge-0': ['10.0.0.5', 'edge-0.edge.default.svc']})
    cls.other_dir = os.path.join(cls.root, 'other')
    certs.write_bundle(cls.other_dir, ['edge-0'])

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root)
    super().tearDownClass()

  def _path(self, name: str) -> str:
    return os.path.join(self.dir, name)

  def test_writes_ca_and_one_cert_and_key_per_node(self):
    expected = ['ca.crt', 'ca.key'] + [f'{n}.{ext}' for n in _NODES
                                       for ext in ('crt', 'key')]
    self.assertCountEqual(os.listdir(self.dir), expected)
    self.assertEqual(self.written[:2], [self._path('ca.crt'),
                                        self._path('ca.key')])

  def test_chain_verifies_for_server_and_client_auth(self):
    ca = self._path('ca.crt')
    for node in _NODES:
      cert = self._path(f'{node}.crt')
      for subject in (
          verification.DNSName(node), verification.DNSName('localhost'),
          verification.IPAddress(ipaddress.ip_address('127.0.0.1'))):
        _verify_server(ca, cert, subject)
      _verify_client(ca, cert)
    edge = self._path('edge-0.crt')
    _verify_server(ca, edge, verification.DNSName('edge-0.edge.default.svc'))
    _verify_server(ca, edge, verification.IPAddress(
        ipaddress.ip_address('10.0.0.5')))
    with self.assertRaises(verification.VerificationError):
      _verify_server(ca, self._path('coordinator.crt'),
                     verification.DNSName('edge-0'))

  def test_openssl_verify_agrees(self):
    if shutil.which('openssl') is None:
      self.skipTest('no openssl binary; the cryptography checks still ran')
    for purpose in ('sslserver', 'sslclient'):
      result = subprocess.run(
          ['openssl', 'verify', '-purpose', purpose, '-CAfile',
           self._path('ca.crt'), self._path('edge-server-0.crt')],
          capture_output=True, text=True, check=False)
      self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
    result = subprocess.run(
        ['openssl', 'verify', '-CAfile', self._path('ca.crt'),
         os.path.join(self.other_dir, 'edge-0.crt')],
        capture_output=True, text=True, check=False)
    self.assertNotEqual(result.returncode, 0)

  def test_cert_from_another_ca_does_not_verify(self):
    other = os.path.join(self.other_dir, 'edge-0.crt')
    with self.assertRaises(verification.VerificationError):
      _verify_server(self._path('ca.crt'), other,
                     verification.DNSName('edge-0'))
    with self.assertRaises(verification.VerificationError):
      _verify_client(self._path('ca.crt'), other)
    with self.assertRaisesRegex(tls.TlsError, 'not signed by the CA'):
      tls.TlsFiles(ca=self._path('ca.crt'), cert=other,
                   key=os.path.join(self.other_dir, 'edge-0.key')).validate()

  def test_node_cert_has_sans_eku_and_p256_key(self):
    cert = _load(self._path('edge-0.crt'))
    sans = cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    self.assertEqual(sans.get_values_for_type(x509.DNSName),
                     ['edge-0', 'localhost', 'edge-0.edge.default.svc'])
    self.assertEqual(sans.get_values_for_type(x509.IPAddress),
                     [ipaddress.ip_address('127.0.0.1'),
                      ipaddress.ip_address('10.0.0.5')])
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    self.assertCountEqual(list(eku), [ExtendedKeyUsageOID.SERVER_AUTH,
                                      ExtendedKeyUsageOID.CLIENT_AUTH])
    self.assertFalse(cert.extensions.get_extension_for_class(
        x509.BasicConstraints).value.ca)
    self.assertIsInstance(cert.public_key().curve, ec.SECP256R1)
    self.assertIn('CN=edge-0', cert.subject.rfc4514_string())
    validity = cert.not_valid_after_utc - cert.not_valid_before_utc
    self.assertBetween(validity.days, 364, 366)

  def test_ca_signs_leaves_only(self):
    ca = _load(self._path('ca.crt'))
    constraints = ca.extensions.get_extension_for_class(
        x509.BasicConstraints).value
    self.assertTrue(constraints.ca)
    self.assertEqual(constraints.path_length, 0)
    self.assertTrue(ca.extensions.get_extension_for_class(
        x509.KeyUsage).value.key_cert_sign)

  def test_keys_are_private_and_certs_readable(self):
    for name in os.listdir(self.dir):
      mode = stat.S_IMODE(os.stat(self._path(name)).st_mode)
      self.assertEqual(mode, 0o600 if name.endswith('.key') else 0o644, name)

  def test_tls_files_of_each_node_validate(self):
    for node in _NODES:
      tls.TlsFiles.from_dir(self.dir, node)

  def test_non_empty_dir_needs_overwrite_or_reuse_ca(self):
    out = self.create_tempdir().full_path
    certs.write_bundle(out, ['edge-0'])
    ca_before = _load(os.path.join(out, 'ca.crt'))
    with self.assertRaisesRegex(certs.CertError, 'not empty.*--overwrite'):
      certs.write_bundle(out, ['edge-0'])
    # A pod added later: signed by the same CA, the others untouched.
    edge0 = _load(os.path.join(out, 'edge-0.crt'))
    certs.write_bundle(out, ['edge-1'], reuse_ca=True)
    self.assertEqual(_load(os.path.join(out, 'ca.crt')), ca_before)
    self.assertEqual(_load(os.path.join(out, 'edge-0.crt')), edge0)
    _verify_client(os.path.join(out, 'ca.crt'), os.path.join(out, 'edge-1.crt'))
    with self.assertRaisesRegex(certs.CertError, 'edge-1.crt.*--overwrite'):
      certs.write_bundle(out, ['edge-1'], reuse_ca=True)
    certs.write_bundle(out, ['edge-0'], overwrite=True)
    self.assertNotEqual(_load(os.path.join(out, 'ca.crt')), ca_before)

  def test_bad_input_writes_nothing(self):
    out = os.path.join(self.create_tempdir().full_path, 'new')
    cases = [
        (['Edge_0'], {}, "node name 'Edge_0' is not valid"),
        (['ca'], {}, "node name 'ca' is not valid"),
        (['edge-0', 'edge-0'], {}, 'listed twice'),
        (['edge-0'], {'edge-9': ['10.0.0.9']}, "'edge-9', which is not in"),
        (['edge-0'], {'edge-0': ['bad name']}, 'neither an IP'),
        ([], {}, 'no nodes'),
    ]
    for nodes, sans, message in cases:
      with self.assertRaisesRegex(certs.CertError, message):
        certs.write_bundle(out, nodes, sans)
      self.assertFalse(os.path.exists(out))

  def test_node_cert_ends_with_its_ca(self):
    now = datetime.datetime.now(datetime.timezone.utc)
    ca = certs.make_ca(days=10, now=now)
    node = certs.issue_node_cert(ca, 'edge-0', days=365, now=now)
    self.assertEqual(node.cert.not_valid_after_utc, ca.cert.not_valid_after_utc)

  def test_san_flags(self):
    self.assertEqual(
        certs.parse_san_flags(['edge-0=10.0.0.5,edge-0.svc', 'edge-0=*.x.io'],
                              ['edge-0']),
        {'edge-0': ['10.0.0.5', 'edge-0.svc', '*.x.io']})
    with self.assertRaisesRegex(certs.CertError, 'expected NODE=NAME'):
      certs.parse_san_flags(['10.0.0.5'], ['edge-0'])

  def _cli(self, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'workers.certs', *args],
                          cwd=_ROOT, capture_output=True, text=True,
                          timeout=60, check=False)

  def test_cli_writes_bundle(self):
    out = os.path.join(self.create_tempdir().full_path, 'certs')
    result = self._cli(f'--out_dir={out}', '--nodes=coordinator,edge-0',
                       '--san=edge-0=10.0.0.5,edge-0.edge.default.svc')
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertIn('edge-0.crt for edge-0, localhost, 127.0.0.1, 10.0.0.5, '
                  'edge-0.edge.default.svc', result.stdout)
    tls.TlsFiles.from_dir(out, 'edge-0')

  def test_cli_bad_input_is_one_error_line_and_status_2(self):
    out = self.create_tempdir().full_path
    with open(os.path.join(out, 'notes.txt'), 'w') as f:
      f.write('x')
    cases = [
        ([f'--out_dir={out}', '--nodes=edge-0'], 'is not empty'),
        ([f'--out_dir={out}/new', '--nodes=edge-0', '--san=edge-1=10.0.0.1'],
         "node 'edge-1' is not in --nodes"),
        ([f'--out_dir={out}/new', '--nodes=Edge0'], "'Edge0' is not valid"),
    ]
    for args, message in cases:
      result = self._cli(*args)
      self.assertEqual(result.returncode, 2, result.stderr)
      self.assertIn(message, result.stderr)
      self.assertTrue(result.stderr.startswith('error: '), result.stderr)
      self.assertNotIn('Traceback', result.stderr)


class SecAggIdentityTest(absltest.TestCase):
  """An edge pod's SecAgg identity, certified through its TLS CSR."""

  def setUp(self):
    super().setUp()
    self.ca = certs.make_ca()
    self.dir = self.create_tempdir().full_path
    self.secagg_key = os.path.join(self.dir, 'secagg-identity.key')

  def _csr(self, name='edge-0', role='edge-pod', secagg_key=None):
    _, path = certs.make_node_csr(self.dir, name, role,
                                  secagg_key or self.secagg_key)
    with open(path, 'rb') as f:
      return f.read()

  def test_signed_csr_binds_the_identity_for_the_roster(self):
    cert = certs.sign_csr(self.ca, self._csr(), 'edge-0', 'edge-pod')
    roster = secagg_keys.CertificateRoster(self.ca.cert)
    der = secagg_keys.certificate_der(cert)
    got = roster.identity('edge-0', der)
    own = secagg_keys.load_or_create_identity(self.secagg_key)
    self.assertEqual(secagg_keys.public_bytes(got),
                     secagg_keys.public_bytes(own))
    with self.assertRaisesRegex(secagg_messages.Refused, 'names edge-0'):
      roster.identity('edge-1', der)
    # Revoked: refused.
    revoked = secagg_keys.CertificateRoster(self.ca.cert,
                                            [cert.serial_number])
    with self.assertRaisesRegex(secagg_messages.Refused, 'revoked'):
      revoked.identity('edge-0', der)
    # The certificate still serves TLS as before.
    self.assertEqual(tls.identity(cert), ('edge-pod', 'edge-0'))

  def test_identity_of_another_node_key_or_role_is_refused(self):
    # The extension of one CSR pasted into another node's CSR: its
    # signature covers the first node's TLS key and name.
    pasted = x509.load_pem_x509_csr(self._csr()).extensions.get_extension_for_oid(
        secagg_keys.IDENTITY_EXTENSION_OID).value
    other_key = ec.generate_private_key(ec.SECP256R1())
    forged = (x509.CertificateSigningRequestBuilder()
              .subject_name(x509.load_pem_x509_csr(self._csr()).subject)
              .add_extension(pasted, critical=False)
              .sign(other_key, certs.hashes.SHA256()))
    with self.assertRaisesRegex(certs.CertError, 'not signed by its identity'):
      certs.sign_csr(self.ca, forged.public_bytes(
          certs.serialization.Encoding.PEM), 'edge-0', 'edge-pod')
    # Only edge pods are parties.
    with self.assertRaisesRegex(certs.CertError, 'only edge-pod'):
      self._csr('edge-server-0', 'edge-server',
                os.path.join(self.dir, 'other.key'))
    # A pod certificate without it is no SecAgg identity.
    plain = certs.issue_node_cert(self.ca, 'edge-3', role='edge-pod')
    with self.assertRaisesRegex(secagg_messages.Refused, 'no SecAgg identity'):
      secagg_keys.CertificateRoster(self.ca.cert).identity(
          'edge-3', secagg_keys.certificate_der(plain.cert))
    # An edge server's certificate is never a party's, extension or not.
    identity = secagg_keys.generate_identity()
    server = certs.issue_node_cert(self.ca, 'edge-server-0')
    ext = secagg_keys.identity_extension(identity, 'edge-server-0',
                                         server.key.public_key())
    rogue = (x509.CertificateBuilder().subject_name(server.cert.subject)
             .issuer_name(self.ca.cert.subject)
             .public_key(server.key.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(server.cert.not_valid_before_utc)
             .not_valid_after(server.cert.not_valid_after_utc)
             .add_extension(server.cert.extensions.get_extension_for_class(
                 x509.SubjectAlternativeName).value, critical=False)
             .add_extension(ext, critical=False)
             .sign(self.ca.key, certs.hashes.SHA256()))
    with self.assertRaisesRegex(secagg_messages.Refused, 'only edge-pod'):
      secagg_keys.CertificateRoster(self.ca.cert).identity(
          'edge-server-0', secagg_keys.certificate_der(rogue))

  def test_bundle_certifies_given_identities(self):
    out = os.path.join(self.dir, 'bundle')
    identity = secagg_keys.generate_identity()
    certs.write_bundle(out, ['coordinator', 'edge-0', 'edge-1'],
                       secagg_identities={'edge-0': identity})
    ca = x509.load_pem_x509_certificate(
        open(os.path.join(out, 'ca.crt'), 'rb').read())
    roster = secagg_keys.CertificateRoster(ca)
    cert = x509.load_pem_x509_certificate(
        open(os.path.join(out, 'edge-0.crt'), 'rb').read())
    got = roster.identity('edge-0', secagg_keys.certificate_der(cert))
    self.assertEqual(secagg_keys.public_bytes(got),
                     secagg_keys.public_bytes(identity))
    with self.assertRaisesRegex(certs.CertError, 'not in --nodes'):
      certs.write_bundle(os.path.join(self.dir, 'b2'), ['edge-0'],
                         secagg_identities={'edge-9': identity})


if __name__ == '__main__':
  absltest.main()
