"""Party keys: long-term Ed25519 identities, per-round X25519 pairs, roster.

Each party (pod) holds a long-term Ed25519 identity key (RFC 8032), created
on the pod and never sent anywhere. Its public half is bound to the party's
name by the roster, either

* `Roster`: a fixed {party id: public key} map the operator distributes
  (tests, benchmarks, small static deployments), or
* `CertificateRoster`: the cluster CA certifies an Ed25519 identity key per
  node. Adverts carry the certificate and every party checks it against the
  CA it already trusts for mutual TLS (and its revocation list), so no new
  distribution channel is needed and the relaying tier cannot mint
  identities without the CA's offline key. Two certificate forms:
  - the pod's own TLS certificate (role edge-pod) with the identity key in
    an extension (`identity_extension`), which the pod's CSR carries and the
    signer copies (workers.certs): one CSR, one approval, one certificate,
    and only edge pods can be parties;
  - a dedicated identity certificate whose subject key is the Ed25519 key
    (`issue_identity_certificate`; tests and benchmarks).
* `SelfSignedRoster`: for clusters without a CA (--insecure): each party
  vouches for itself. It keeps the protocol running, but a relay can then
  substitute keys (docs/secagg.md).

Per round (per attempt) every party draws two fresh X25519 pairs (RFC 7748):
c for the AEAD that carries its secret shares, s for its pairwise masks
(Bonawitz et al. 2017, section 4). It signs them with its identity key;
others reject unsigned or mismatched keys, keys signed by another identity,
and low-order or non-canonical public keys (whose Diffie-Hellman output is
all-zero or predictable; RFC 7748 section 6.1).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from collections.abc import Iterable, Mapping

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.x509.oid import NameOID

from workers.secagg import messages

KEY_BYTES = 32
SIGNATURE_BYTES = 64
# The node-certificate extension that carries a pod's SecAgg identity key
# (a UUID OID, ITU-T X.667: no registration needed).
IDENTITY_EXTENSION_OID = x509.ObjectIdentifier(
    '2.25.124980960988180581274289418517297909773')
PARTY_ROLE = 'edge-pod'
_SPIFFE_PREFIX = 'spiffe://tff-edge/'
_BINDING = b'tff-edge secagg identity v1\x00'
_P25519 = 2**255 - 19
# Any fixed scalar: X25519 clamps it to a multiple of 8, which kills every
# point of order dividing 8, on the curve or its twist, to the all-zero
# output that OpenSSL refuses. So one exchange decides "low order".
_PROBE = x25519.X25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def generate_identity() -> ed25519.Ed25519PrivateKey:
  return ed25519.Ed25519PrivateKey.generate()


def load_or_create_identity(path: str) -> ed25519.Ed25519PrivateKey:
  """The identity key in `path` (32 raw bytes), created 0600 if missing."""
  if not os.path.exists(path):
    raw = generate_identity().private_bytes_raw()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, 'wb') as f:
      f.write(raw)
  with open(path, 'rb') as f:
    raw = f.read()
  if len(raw) != KEY_BYTES:
    raise ValueError(f'SecAgg identity key {path} holds {len(raw)} bytes, not '
                     f'{KEY_BYTES}; delete it to make a new one (and '
                     're-certify it) or mount the right key')
  return ed25519.Ed25519PrivateKey.from_private_bytes(raw)


def public_bytes(key) -> bytes:
  """Raw 32-byte public key of an Ed25519 or X25519 private/public key."""
  if hasattr(key, 'public_key'):
    key = key.public_key()
  return key.public_bytes_raw()


def check_x25519(raw: bytes, what: str) -> x25519.X25519PublicKey:
  """A canonical, not low-order X25519 public key, else ProtocolError."""
  if len(raw) != KEY_BYTES:
    raise messages.ProtocolError(f'{what}: {len(raw)} bytes, not 32')
  u = int.from_bytes(raw, 'little')
  if u >= _P25519:  # Top bit set, or an unreduced coordinate.
    raise messages.ProtocolError(f'{what}: not a canonical X25519 key')
  key = x25519.X25519PublicKey.from_public_bytes(raw)
  try:
    _PROBE.exchange(key)
  except ValueError:
    raise messages.ProtocolError(f'{what}: low-order X25519 key') from None
  return key


@dataclasses.dataclass
class RoundKeys:
  """A party's fresh X25519 pairs for one attempt of one round."""
  c_secret: x25519.X25519PrivateKey  # Share encryption.
  s_secret: x25519.X25519PrivateKey  # Pairwise masks.

  @classmethod
  def generate(cls) -> 'RoundKeys':
    return cls(x25519.X25519PrivateKey.generate(),
               x25519.X25519PrivateKey.generate())

  @property
  def c_public(self) -> bytes:
    return public_bytes(self.c_secret)

  @property
  def s_public(self) -> bytes:
    return public_bytes(self.s_secret)


def verify(public: ed25519.Ed25519PublicKey, signature: bytes,
           message: bytes) -> bool:
  try:
    public.verify(signature, message)
  except InvalidSignature:
    return False
  return True


class Roster:
  """Party id -> Ed25519 identity public key, fixed by the operator."""

  def __init__(self, identities: Mapping[str, bytes]):
    self._keys = {}
    for party, raw in identities.items():
      messages.check_party(party)
      if len(raw) != KEY_BYTES:
        raise ValueError(f'identity key of {party} is not 32 bytes')
      self._keys[party] = ed25519.Ed25519PublicKey.from_public_bytes(raw)

  @classmethod
  def of(cls, private_keys: Mapping[str, ed25519.Ed25519PrivateKey]
         ) -> 'Roster':
    return cls({p: public_bytes(k) for p, k in private_keys.items()})

  def identity(self, party: str, certificate: bytes | None = None
               ) -> ed25519.Ed25519PublicKey:
    """The identity key of `party`, else Refused. Certificates are ignored."""
    del certificate
    try:
      return self._keys[party]
    except KeyError:
      raise messages.Refused(f'party {party} is not on the roster') from None


def issue_identity_certificate(ca_key, ca_cert: x509.Certificate, party: str,
                               identity: ed25519.Ed25519PublicKey,
                               days: int = 825) -> x509.Certificate:
  """A CA-signed certificate binding `party` (SAN and CN) to `identity`."""
  messages.check_party(party)
  now = datetime.datetime.now(datetime.timezone.utc)
  builder = (
      x509.CertificateBuilder()
      .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                  party)]))
      .issuer_name(ca_cert.subject)
      .public_key(identity)
      .serial_number(x509.random_serial_number())
      .not_valid_before(now - datetime.timedelta(minutes=5))
      .not_valid_after(now + datetime.timedelta(days=days))
      .add_extension(x509.SubjectAlternativeName([x509.DNSName(party)]),
                     critical=False)
      .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                     critical=True)
      .add_extension(x509.KeyUsage(
          digital_signature=True, content_commitment=False,
          key_encipherment=False, data_encipherment=False,
          key_agreement=False, key_cert_sign=False, crl_sign=False,
          encipher_only=False, decipher_only=False), critical=True))
  return builder.sign(ca_key, hashes.SHA256())


class CertificateRoster:
  """Identities certified by the cluster CA, checked as adverts bring them."""

  def __init__(self, ca_certificate: x509.Certificate,
               revoked: Iterable[int] = ()):
    self._ca = ca_certificate
    self._revoked = frozenset(revoked)
    self._cache: dict[bytes, tuple[str, ed25519.Ed25519PublicKey]] = {}

  @classmethod
  def from_pem(cls, ca_pem: bytes, revoked: Iterable[int] = ()
               ) -> 'CertificateRoster':
    return cls(x509.load_pem_x509_certificate(ca_pem), revoked)

  def identity(self, party: str, certificate: bytes | None = None
               ) -> ed25519.Ed25519PublicKey:
    """The identity key the DER `certificate` certifies for `party`."""
    if certificate is None:
      raise messages.Refused(f'party {party} sent no identity certificate')
    cached = self._cache.get(certificate)
    if cached is None:
      cached = self._check(certificate)
      if len(self._cache) < 100_000:
        self._cache[certificate] = cached
    name, key = cached
    if name != party:
      raise messages.Refused(f'the certificate presented for party {party} '
                             f'names {name}')
    return key

  def _check(self, der: bytes) -> tuple[str, ed25519.Ed25519PublicKey]:
    try:
      cert = x509.load_der_x509_certificate(der)
      cert.verify_directly_issued_by(self._ca)
    except (ValueError, TypeError, InvalidSignature) as e:
      raise messages.Refused(f'identity certificate not issued by the '
                             f'cluster CA: {str(e)[:80]}') from None
    now = datetime.datetime.now(datetime.timezone.utc)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
      raise messages.Refused('identity certificate expired or not yet valid')
    if cert.serial_number in self._revoked:
      raise messages.Refused(f'identity certificate (serial '
                             f'{cert.serial_number:x}) is revoked')
    key = cert.public_key()
    if not isinstance(key, ed25519.Ed25519PublicKey):
      # A node's TLS certificate with the identity in an extension.
      try:
        role, name = node_identity(cert)
      except messages.Refused as e:
        raise messages.Refused(f'identity certificate is not for an Ed25519 '
                               f'key, nor a node certificate ({e})') from None
      if role != PARTY_ROLE:
        raise messages.Refused(f'certificate of {role} {name}: only '
                               f'{PARTY_ROLE} nodes are SecAgg parties')
      identity = parse_identity_extension(cert.extensions, name, key)
      if identity is None:
        raise messages.Refused(f'certificate of {name} carries no SecAgg '
                               'identity key (issued before SecAgg+? make a '
                               'new CSR with workers.identity)')
      return messages.check_party(name), identity
    try:
      names = cert.extensions.get_extension_for_class(
          x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
      names = []
    if len(names) != 1:
      raise messages.Refused('identity certificate must name exactly one '
                             'party in its SAN')
    return messages.check_party(names[0]), key


def _spki(public_key) -> bytes:
  return public_key.public_bytes(
      serialization.Encoding.DER,
      serialization.PublicFormat.SubjectPublicKeyInfo)


def _binding_message(name: str, tls_public_key) -> bytes:
  return _BINDING + name.encode() + b'\x00' + _spki(tls_public_key)


def identity_extension(identity: ed25519.Ed25519PrivateKey, name: str,
                       tls_public_key) -> x509.UnrecognizedExtension:
  """The extension binding `identity` to node `name` and its TLS key.

  Its value is a DER OCTET STRING of the 32-byte Ed25519 public key and the
  identity's signature over (name, the TLS key): whoever put it in a CSR
  holds both keys.
  """
  payload = public_bytes(identity) + identity.sign(
      _binding_message(name, tls_public_key))
  return x509.UnrecognizedExtension(
      IDENTITY_EXTENSION_OID, bytes([0x04, len(payload)]) + payload)


def parse_identity_extension(extensions: x509.Extensions, name: str,
                             tls_public_key
                             ) -> ed25519.Ed25519PublicKey | None:
  """The identity key in `extensions` (of a CSR or certificate), if any.

  Raises:
    messages.Refused: the extension is malformed or its signature does not
      bind the identity to `name` and `tls_public_key`.
  """
  try:
    value = extensions.get_extension_for_oid(IDENTITY_EXTENSION_OID).value
  except x509.ExtensionNotFound:
    return None
  data = value.value
  size = KEY_BYTES + SIGNATURE_BYTES
  if len(data) != size + 2 or data[:2] != bytes([0x04, size]):
    raise messages.Refused('SecAgg identity extension is malformed')
  key = ed25519.Ed25519PublicKey.from_public_bytes(data[2:2 + KEY_BYTES])
  if not verify(key, data[2 + KEY_BYTES:],
                _binding_message(name, tls_public_key)):
    raise messages.Refused(f'SecAgg identity extension of {name} is not '
                           'signed by its identity key for this node')
  return key


def node_identity(cert: x509.Certificate) -> tuple[str, str]:
  """(role, name) of a node certificate (spiffe://tff-edge/<role>/<name>)."""
  try:
    sans = cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
  except x509.ExtensionNotFound:
    raise messages.Refused('certificate has no subject alternative names'
                           ) from None
  uris = [u for u in sans.get_values_for_type(x509.UniformResourceIdentifier)
          if u.startswith(_SPIFFE_PREFIX)]
  if len(uris) != 1:
    raise messages.Refused('certificate does not name one tff-edge node')
  role, _, name = uris[0][len(_SPIFFE_PREFIX):].partition('/')
  common = [a.value for a in cert.subject.get_attributes_for_oid(
      NameOID.COMMON_NAME)]
  if common != [name]:
    raise messages.Refused('certificate URI and subject name disagree')
  return role, name


def certificate_der(cert: x509.Certificate) -> bytes:
  return cert.public_bytes(serialization.Encoding.DER)


class SelfSignedRoster:
  """Parties that vouch for themselves: for clusters without a CA.

  Accepts a certificate that `self_signed_certificate` made: it proves the
  key's holder chose the name, not that the name is theirs. Only for
  --insecure clusters, whose network is trusted anyway.
  """

  def identity(self, party: str, certificate: bytes | None = None
               ) -> ed25519.Ed25519PublicKey:
    if certificate is None:
      raise messages.Refused(f'party {party} sent no identity certificate')
    try:
      cert = x509.load_der_x509_certificate(certificate)
      key = cert.public_key()
      if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ValueError('not an Ed25519 key')
      cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature) as e:
      raise messages.Refused(f'identity certificate of {party} is not '
                             f'self-signed by an Ed25519 key: {e}') from None
    names = [a.value for a in cert.subject.get_attributes_for_oid(
        NameOID.COMMON_NAME)]
    if names != [party]:
      raise messages.Refused(f'the certificate presented for party {party} '
                             f'names {names}')
    return key


def self_signed_certificate(identity: ed25519.Ed25519PrivateKey, party: str,
                            days: int = 3650) -> bytes:
  """DER certificate of `identity` for `party`, signed by itself."""
  messages.check_party(party)
  name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, party)])
  now = datetime.datetime.now(datetime.timezone.utc)
  cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
          .public_key(identity.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=days))
          .sign(identity, None))
  return certificate_der(cert)


def identity_certificates(certs: Iterable[x509.Certificate]
                          ) -> dict[str, bytes]:
  """{party: DER} of identity certificates, keyed by their SAN."""
  out = {}
  for cert in certs:
    names = cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    out[names[0]] = certificate_der(cert)
  return out
