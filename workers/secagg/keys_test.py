import datetime
import os
import stat
import tempfile

from absl.testing import absltest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.x509.oid import NameOID

from workers.secagg import keys
from workers.secagg import messages
from workers.secagg import testing

_P = 2**255 - 19
# RFC 7748 section 6.1.
_ALICE_SK = bytes.fromhex(
    '77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a')
_ALICE_PK = bytes.fromhex(
    '8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a')
_BOB_SK = bytes.fromhex(
    '5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb')
_BOB_PK = bytes.fromhex(
    'de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f')
_SHARED = bytes.fromhex(
    '4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742')
# RFC 8032 section 7.1, test 1 (empty message).
_ED_SK = bytes.fromhex(
    '9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60')
_ED_PK = bytes.fromhex(
    'd75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a')
_ED_SIG = bytes.fromhex(
    'e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155'
    '5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b')
# u-coordinates of small order (libsodium's x25519 blocklist): 0, 1, the two
# of order 8, p - 1, p, p + 1.
_LOW_ORDER = [
    0, 1,
    int('3256062509165574317959836263561106312940081157278488055600233871679'
        '27233504'),
    int('3938235723548961458172306078155302111252991171944069817688288585396'
        '3445705823'),
    _P - 1, _P, _P + 1]


def _ladder(scalar: bytes, u: int) -> int:
  """RFC 7748 section 5 Montgomery ladder in plain Python (an oracle)."""
  k = bytearray(scalar)
  k[0] &= 248
  k[31] &= 127
  k[31] |= 64
  k = int.from_bytes(bytes(k), 'little')
  x1, x2, z2, x3, z3, swap = u % _P, 1, 0, u % _P, 1, 0
  for t in reversed(range(255)):
    bit = (k >> t) & 1
    swap ^= bit
    if swap:
      x2, x3, z2, z3 = x3, x2, z3, z2
    swap = bit
    a, b = (x2 + z2) % _P, (x2 - z2) % _P
    aa, bb = a * a % _P, b * b % _P
    e = (aa - bb) % _P
    c, d = (x3 + z3) % _P, (x3 - z3) % _P
    da, cb = d * a % _P, c * b % _P
    x3 = (da + cb) ** 2 % _P
    z3 = x1 * (da - cb) ** 2 % _P
    x2 = aa * bb % _P
    z2 = e * (aa + 121665 * e) % _P
  if swap:
    x2, z2 = x3, z3
  return x2 * pow(z2, _P - 2, _P) % _P


class PrimitiveVectorsTest(absltest.TestCase):

  def test_x25519_rfc7748(self):
    alice = x25519.X25519PrivateKey.from_private_bytes(_ALICE_SK)
    bob = x25519.X25519PrivateKey.from_private_bytes(_BOB_SK)
    self.assertEqual(keys.public_bytes(alice), _ALICE_PK)
    self.assertEqual(keys.public_bytes(bob), _BOB_PK)
    self.assertEqual(alice.exchange(keys.check_x25519(_BOB_PK, 'bob')),
                     _SHARED)
    self.assertEqual(_ladder(_ALICE_SK, int.from_bytes(_BOB_PK, 'little')),
                     int.from_bytes(_SHARED, 'little'))

  def test_ed25519_rfc8032(self):
    key = ed25519.Ed25519PrivateKey.from_private_bytes(_ED_SK)
    self.assertEqual(keys.public_bytes(key), _ED_PK)
    self.assertEqual(key.sign(b''), _ED_SIG)
    public = ed25519.Ed25519PublicKey.from_public_bytes(_ED_PK)
    self.assertTrue(keys.verify(public, _ED_SIG, b''))
    self.assertFalse(keys.verify(public, _ED_SIG, b'x'))
    self.assertFalse(keys.verify(public, bytes(64), b''))


class X25519CheckTest(absltest.TestCase):

  def test_low_order_keys_are_refused(self):
    for u in _LOW_ORDER:
      self.assertEqual(_ladder(os.urandom(32), u), 0, msg=u)  # The oracle.
      for raw in (u.to_bytes(32, 'little'),
                  ((u + 2**255) % 2**256).to_bytes(32, 'little')):
        with self.assertRaises(messages.ProtocolError, msg=u):
          keys.check_x25519(raw, 'k')

  def test_non_canonical_and_wrong_length_are_refused(self):
    good = int.from_bytes(_BOB_PK, 'little')
    for raw in [(good + 2**255).to_bytes(32, 'little'),
                (good + _P).to_bytes(32, 'little') if good + _P < 2**256
                else (2**256 - 1).to_bytes(32, 'little'),
                _BOB_PK[:31], _BOB_PK + b'\x00', b'']:
      with self.assertRaises(messages.ProtocolError):
        keys.check_x25519(raw, 'k')

  def test_fresh_keys_are_accepted(self):
    for _ in range(20):
      round_keys = keys.RoundKeys.generate()
      keys.check_x25519(round_keys.c_public, 'c')
      keys.check_x25519(round_keys.s_public, 's')
      self.assertNotEqual(round_keys.c_public, round_keys.s_public)


class IdentityTest(absltest.TestCase):

  def test_identity_file_is_private_and_stable(self):
    with tempfile.TemporaryDirectory() as d:
      path = os.path.join(d, 'identity.key')
      first = keys.load_or_create_identity(path)
      self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
      again = keys.load_or_create_identity(path)
      self.assertEqual(keys.public_bytes(first), keys.public_bytes(again))
      with open(path, 'wb') as f:
        f.write(b'short')
      with self.assertRaisesRegex(ValueError, '5 bytes'):
        keys.load_or_create_identity(path)

  def test_static_roster(self):
    a, b = keys.generate_identity(), keys.generate_identity()
    roster = keys.Roster.of({'edge-0': a, 'edge-1': b})
    self.assertEqual(keys.public_bytes(roster.identity('edge-0')),
                     keys.public_bytes(a))
    with self.assertRaisesRegex(messages.Refused, 'not on the roster'):
      roster.identity('edge-2')
    with self.assertRaises(messages.ProtocolError):
      keys.Roster({'../x': keys.public_bytes(a)})


class CertificateRosterTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.ca_key, self.ca = testing.make_ca()
    self.identity = keys.generate_identity()
    self.cert = keys.certificate_der(keys.issue_identity_certificate(
        self.ca_key, self.ca, 'edge-0', self.identity.public_key()))
    self.roster = keys.CertificateRoster(self.ca)

  def test_certified_identity(self):
    key = self.roster.identity('edge-0', self.cert)
    self.assertEqual(keys.public_bytes(key), keys.public_bytes(self.identity))
    self.assertEqual(keys.identity_certificates(
        [x509.load_der_x509_certificate(self.cert)]), {'edge-0': self.cert})

  def test_certificate_for_another_party_is_refused(self):
    with self.assertRaisesRegex(messages.Refused, 'names edge-0'):
      self.roster.identity('edge-1', self.cert)

  def test_missing_foreign_or_garbage_certificates_are_refused(self):
    with self.assertRaisesRegex(messages.Refused, 'no identity certificate'):
      self.roster.identity('edge-0', None)
    other_key, other_ca = testing.make_ca('other-ca')
    foreign = keys.certificate_der(keys.issue_identity_certificate(
        other_key, other_ca, 'edge-0', self.identity.public_key()))
    with self.assertRaisesRegex(messages.Refused, 'not issued by'):
      self.roster.identity('edge-0', foreign)
    # Same subject name as our CA, different key: still refused.
    impostor_key, impostor = testing.make_ca()
    forged = keys.certificate_der(keys.issue_identity_certificate(
        impostor_key, impostor, 'edge-0', self.identity.public_key()))
    with self.assertRaisesRegex(messages.Refused, 'not issued by'):
      self.roster.identity('edge-0', forged)
    with self.assertRaises(messages.Refused):
      self.roster.identity('edge-0', b'\x30\x03garbage')

  def test_non_ed25519_or_expired_certificates_are_refused(self):
    ec_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'edge-0')])
    base = (x509.CertificateBuilder().subject_name(name)
            .issuer_name(self.ca.subject).serial_number(7)
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName('edge-0')]), False))
    ec_cert = (base.public_key(ec_key.public_key())
               .not_valid_before(now - datetime.timedelta(days=1))
               .not_valid_after(now + datetime.timedelta(days=1))
               .sign(self.ca_key, hashes.SHA256()))
    with self.assertRaisesRegex(messages.Refused, 'Ed25519'):
      self.roster.identity('edge-0', keys.certificate_der(ec_cert))
    expired = (base.public_key(self.identity.public_key())
               .not_valid_before(now - datetime.timedelta(days=3))
               .not_valid_after(now - datetime.timedelta(days=1))
               .sign(self.ca_key, hashes.SHA256()))
    with self.assertRaisesRegex(messages.Refused, 'expired'):
      self.roster.identity('edge-0', keys.certificate_der(expired))


if __name__ == '__main__':
  absltest.main()
