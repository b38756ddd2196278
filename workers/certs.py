"""The cluster's TLS certificates: a CA, node certificates with roles, CRLs.

    # Everything at once (local clusters, tests): CA + one cert per node.
    python -m workers.certs --out_dir=certs \
        --nodes=coordinator,edge-server-0,edge-0,edge-1 \
        --san=edge-0=10.0.0.5,edge-0.edge.default.svc

    # Keys born where they are used (a site): the node makes its key and a
    # CSR; the CA's holder signs; the key never leaves the node.
    python -m workers.certs csr  --dir=/data/identity --name=edge-0 --role=edge-pod
    python -m workers.certs sign --ca_dir=ca --csr=edge-0.csr --name=edge-0 \
        --role=edge-pod --out=edge-0.crt
    python -m workers.certs revoke --ca_dir=ca --cert=edge-0.crt   # -> ca.crl
    python -m workers.certs crl --ca_dir=ca      # re-sign ca.crl before it expires

Every node certificate carries its role twice, written only by the signer
(never copied from a CSR): as the URI SAN spiffe://tff-edge/<role>/<name>
(read by the edge servers' gRPC authorization, workers.tls.PeerPolicy) and
as the subject's OU (read by nginx on the pods, which has no SAN variable).
Roles: coordinator (calls edge servers), edge-server (serves the
coordinator, calls pods), edge-pod (serves edge servers). Without an explicit
ROLE:NAME in --nodes the role follows the name: `coordinator`, names
starting with `edge-server`, and the rest are edge pods.

Certificates name the node, localhost and 127.0.0.1 (plus --san names) and
are good for TLS server and client auth. Keys are EC P-256, files 0600.
ca.key is needed only to sign and revoke: keep it off the nodes.

An edge pod's CSR may also carry its SecAgg identity (an Ed25519 public key
with its signature over the node name and TLS key; workers.secagg.keys):
`csr --secagg_key=PATH` makes that key (0600) if missing and adds it, and
`sign` copies it, checked, into the certificate. The certificate then
certifies the pod as a SecAgg party too: one CSR, one approval.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
import re
import sys
from typing import Any, Mapping, Optional, Sequence

from absl import app
from absl import flags
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.oid import NameOID

from data_prep import entry_point
from data_prep.errors import UserError
from workers import tls
from workers.secagg import keys as secagg_keys
from workers.secagg import messages as secagg_messages

CA_KEY_FILE = 'ca.key'
CRL_FILE = tls.CRL_FILE
ROLES = tls.ROLES
DEFAULT_CRL_DAYS = 30
DEFAULT_CA_DAYS = 3650
DEFAULT_NODE_DAYS = 365
# Every node is reachable under these on its own machine (health probes,
# local_cluster, a sidecar terminator talking to its pod).
LOCAL_SANS = ('localhost', '127.0.0.1')
_ORGANIZATION = 'tff-edge'
# Backdated so a peer whose clock is a little behind accepts a fresh cert.
_CLOCK_SKEW = datetime.timedelta(minutes=5)
# Node names become file names and DNS SANs: one lowercase DNS label, as in
# workers.topology. 'ca' would collide with ca.crt/ca.key.
_NODE_NAME = re.compile(r'[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?')
_DNS_LABEL = re.compile(r'[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?')
_RESERVED_NAMES = frozenset({'ca'})

_OUT_DIR = flags.DEFINE_string(
    'out_dir', None, 'Directory for ca.crt, ca.key and <node>.crt/.key.')
_NODES = flags.DEFINE_list(
    'nodes', None, 'Comma-separated node names, e.g. '
    'coordinator,edge-server-0,edge-0 (one certificate each).')
_SAN = flags.DEFINE_multi_string(
    'san', [], 'NODE=NAME[,NAME...]: extra DNS names or IP addresses in '
    "NODE's certificate (repeatable), e.g. edge-0=10.0.0.5,edge-0.edge.svc.")
_OVERWRITE = flags.DEFINE_bool(
    'overwrite', False, 'Write into a non-empty --out_dir, replacing the files '
    'of the same names. Without --reuse_ca this makes a new CA: certificates '
    'there of nodes not in --nodes stop verifying.')
_REUSE_CA = flags.DEFINE_bool(
    'reuse_ca', False, 'Sign --nodes with the ca.crt/ca.key already in '
    '--out_dir instead of making a new CA (adds nodes to a running cluster).')
_DAYS = flags.DEFINE_integer('days', DEFAULT_NODE_DAYS,
                             'Validity of node certificates, in days.')
_CA_DAYS = flags.DEFINE_integer('ca_days', DEFAULT_CA_DAYS,
                                'Validity of a new CA certificate, in days.')
FLAGS = flags.FLAGS


def define_command_flags() -> None:
  """Flags of csr, sign, revoke and crl: defined only when run as a program
  (other modules define --name or --ca_dir too, in one test process)."""
  flags.DEFINE_string('name', None, 'csr, sign: the node name.')
  flags.DEFINE_enum('role', None, list(tls.ROLES),
                    'csr, sign: the node role (sign writes it).')
  flags.DEFINE_string(
      'dir', None, 'csr: the node\'s own directory for <name>.key (made here '
      'if missing, 0600) and <name>.csr.')
  flags.DEFINE_string(
      'ca_dir', None, 'sign, revoke, crl: directory with ca.crt and ca.key.')
  flags.DEFINE_string('csr', None, 'sign: the PEM CSR file.')
  flags.DEFINE_string('out', None, 'sign: where to write the certificate '
                      '(default: the CSR path with .crt).')
  flags.DEFINE_multi_string('cert', [], 'revoke: certificate file(s) to '
                            'revoke.')
  flags.DEFINE_string(
      'secagg_key', None, 'csr (and workers.identity): also certify this '
      'SecAgg identity key, an edge pod\'s (made here if missing, 0600); '
      'the certificate must then bind it.')
  flags.DEFINE_integer(
      'crl_days', DEFAULT_CRL_DAYS, 'revoke, crl: days until the CRL must be '
      're-signed (`crl`); nginx and the edge servers refuse everyone once it '
      'has expired.')


class CertError(UserError):
  """Bad node names, SANs or output directory; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Issued:
  """A certificate and its private key."""
  cert: x509.Certificate
  key: ec.EllipticCurvePrivateKey

  def cert_pem(self) -> bytes:
    return self.cert.public_bytes(serialization.Encoding.PEM)

  def key_pem(self) -> bytes:
    return self.key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())


def role_for(name: str) -> str:
  """The role a node of this name has unless given (see module doc)."""
  if name == 'coordinator' or name.startswith('coordinator-'):
    return 'coordinator'
  if name.startswith('edge-server'):
    return 'edge-server'
  if name == 'monitoring' or name.startswith('prometheus'):
    return 'monitoring'
  return 'edge-pod'


def parse_node(value: str) -> tuple[str, str]:
  """'NAME' or 'ROLE:NAME' -> (name, role)."""
  role, sep, name = value.strip().rpartition(':')
  name = check_node_name(name)
  if not sep:
    return name, role_for(name)
  if role not in tls.ROLES:
    raise CertError(f'role {role!r} of {value!r} is not one of '
                    f'{", ".join(tls.ROLES)}')
  return name, role


def check_role(role: str) -> str:
  if role not in tls.ROLES:
    raise CertError(f'role {role!r} is not one of {", ".join(tls.ROLES)}')
  return role


def check_node_name(name: str) -> str:
  """Returns `name` if it can name a node, else raises CertError."""
  if not _NODE_NAME.fullmatch(name) or name in _RESERVED_NAMES:
    raise CertError(
        f'node name {name!r} is not valid: use lowercase letters, digits and '
        "'-' (a DNS label, at most 63 characters, not 'ca'), e.g. edge-0")
  return name


def parse_san(value: str) -> x509.GeneralName:
  """An IP address or DNS name (wildcard first label allowed) as a SAN."""
  try:
    return x509.IPAddress(ipaddress.ip_address(value))
  except ValueError:
    pass
  name = value.lower()
  labels = name.split('.')
  if labels[0] == '*' and len(labels) > 1:
    labels = labels[1:]
  if (len(name) > 253 or
      not all(_DNS_LABEL.fullmatch(label) for label in labels)):
    raise CertError(f'SAN {value!r} is neither an IP address nor a DNS name '
                    '(e.g. 10.0.0.5 or edge-0.edge.default.svc)')
  return x509.DNSName(name)


def parse_san_flags(values: Sequence[str],
                    nodes: Sequence[str]) -> dict[str, list[str]]:
  """Parses --san values `NODE=NAME[,NAME...]` into {node: [names]}."""
  sans: dict[str, list[str]] = {}
  for value in values:
    node, sep, names = value.partition('=')
    node = node.strip()
    if not sep or not names.strip():
      raise CertError(f'--san={value}: expected NODE=NAME[,NAME...], e.g. '
                      'edge-0=10.0.0.5,edge-0.edge.default.svc')
    if node not in nodes:
      raise CertError(f'--san={value}: node {node!r} is not in --nodes '
                      f'({",".join(nodes)}); add it there or fix the name')
    for name in names.split(','):
      if name.strip():
        try:
          parse_san(name.strip())
        except CertError as e:
          raise CertError(f'--san={value}: {e}') from None
        sans.setdefault(node, []).append(name.strip())
  return sans


def _now() -> datetime.datetime:
  return datetime.datetime.now(datetime.timezone.utc)


def _name(common_name: str, role: Optional[str] = None) -> x509.Name:
  attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION)]
  if role is not None:
    # nginx matches the whole RFC 2253 subject "CN=..,OU=<role>,O=tff-edge".
    attributes.append(
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role))
  attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
  return x509.Name(attributes)


def make_ca(common_name: str = 'tff-edge cluster CA',
            days: int = DEFAULT_CA_DAYS,
            now: Optional[datetime.datetime] = None) -> Issued:
  """A new self-signed CA that may sign node certificates only."""
  if days < 1:
    raise CertError(f'CA validity of {days} days: use at least 1')
  now = now or _now()
  key = ec.generate_private_key(ec.SECP256R1())
  name = _name(common_name)
  cert = (
      x509.CertificateBuilder()
      .subject_name(name)
      .issuer_name(name)
      .public_key(key.public_key())
      .serial_number(x509.random_serial_number())
      .not_valid_before(now - _CLOCK_SKEW)
      .not_valid_after(now + datetime.timedelta(days=days))
      # path_length=0: it signs leaves, never another CA.
      .add_extension(x509.BasicConstraints(ca=True, path_length=0),
                     critical=True)
      .add_extension(x509.KeyUsage(
          digital_signature=True, content_commitment=False,
          key_encipherment=False, data_encipherment=False, key_agreement=False,
          key_cert_sign=True, crl_sign=True, encipher_only=False,
          decipher_only=False), critical=True)
      .add_extension(x509.SubjectKeyIdentifier.from_public_key(
          key.public_key()), critical=False)
      .sign(key, hashes.SHA256()))
  return Issued(cert, key)


def issue_node_cert(ca: Issued, node: str, extra_sans: Sequence[str] = (),
                    days: int = DEFAULT_NODE_DAYS,
                    now: Optional[datetime.datetime] = None,
                    role: Optional[str] = None,
                    public_key=None,
                    secagg_identity=None) -> Issued:
  """A certificate for `node`, for TLS server and client auth, signed by `ca`.

  Args:
    ca: The CA (from make_ca or load_ca).
    node: The node's name: its CN and first DNS SAN.
    extra_sans: More DNS names or IP addresses besides LOCAL_SANS.
    days: Validity; capped at the CA's own end of validity.
    now: Start of validity (tests).
    role: One of ROLES (default: role_for(node)).
    public_key: Certify this key (from a CSR); default: make a new key pair,
      returned in the result.
    secagg_identity: An edge pod's SecAgg identity: its Ed25519 private key
      (the extension is made here, for the node's TLS key) or the extension
      of its CSR (already checked by sign_csr).

  Returns:
    The node's certificate, and its new key (None with `public_key`).
  """
  check_node_name(node)
  role = check_role(role or role_for(node))
  if days < 1:
    raise CertError(f'certificate validity of {days} days: use at least 1')
  now = now or _now()
  sans: list[x509.GeneralName] = [
      x509.UniformResourceIdentifier(tls.spiffe_id(role, node))]
  for value in (node, *LOCAL_SANS, *extra_sans):
    san = parse_san(value)
    if san not in sans:
      sans.append(san)
  key = None
  if public_key is None:
    key = ec.generate_private_key(ec.SECP256R1())
    public_key = key.public_key()
  if secagg_identity is not None:
    if role != secagg_keys.PARTY_ROLE:
      raise CertError(f'{node} is a {role}: only {secagg_keys.PARTY_ROLE} '
                      'nodes hold a SecAgg identity')
    if not isinstance(secagg_identity, x509.UnrecognizedExtension):
      secagg_identity = secagg_keys.identity_extension(secagg_identity, node,
                                                       public_key)
  not_after = min(now + datetime.timedelta(days=days),
                  ca.cert.not_valid_after_utc)
  ca_ski = ca.cert.extensions.get_extension_for_class(
      x509.SubjectKeyIdentifier).value
  cert = (
      x509.CertificateBuilder()
      .subject_name(_name(node, role))
      .issuer_name(ca.cert.subject)
      .public_key(public_key)
      .serial_number(x509.random_serial_number())
      .not_valid_before(now - _CLOCK_SKEW)
      .not_valid_after(not_after)
      .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                     critical=True)
      .add_extension(x509.KeyUsage(
          digital_signature=True, content_commitment=False,
          key_encipherment=False, data_encipherment=False, key_agreement=False,
          key_cert_sign=False, crl_sign=False, encipher_only=False,
          decipher_only=False), critical=True)
      # Both: an edge server serves the coordinator and calls its pods.
      .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                            ExtendedKeyUsageOID.CLIENT_AUTH]),
                     critical=False)
      .add_extension(x509.SubjectAlternativeName(sans), critical=False)
      .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key),
                     critical=False)
      .add_extension(
          x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
              ca_ski), critical=False))
  if secagg_identity is not None:
    cert = cert.add_extension(secagg_identity, critical=False)
  return Issued(cert.sign(ca.key, hashes.SHA256()), key)


def new_key() -> ec.EllipticCurvePrivateKey:
  return ec.generate_private_key(ec.SECP256R1())


def make_csr(key, node: str, role: str, secagg_identity=None
             ) -> x509.CertificateSigningRequest:
  """A CSR for `node` in `role` (the signer checks both, and writes them).

  With `secagg_identity` (an edge pod's Ed25519 key) it also asks to certify
  that key as the pod's SecAgg identity.
  """
  check_node_name(node)
  check_role(role)
  builder = (x509.CertificateSigningRequestBuilder()
             .subject_name(_name(node, role))
             .add_extension(x509.SubjectAlternativeName(
                 [x509.UniformResourceIdentifier(tls.spiffe_id(role, node))]),
                            critical=False))
  if secagg_identity is not None:
    if role != secagg_keys.PARTY_ROLE:
      raise CertError(f'{node} is a {role}: only {secagg_keys.PARTY_ROLE} '
                      'nodes hold a SecAgg identity')
    builder = builder.add_extension(secagg_keys.identity_extension(
        secagg_identity, node, key.public_key()), critical=False)
  return builder.sign(key, hashes.SHA256())


def _check_public_key(public_key, what: str) -> None:
  if isinstance(public_key, ec.EllipticCurvePublicKey):
    if public_key.curve.name not in ('secp256r1', 'secp384r1'):
      raise CertError(f'{what}: EC curve {public_key.curve.name} is not '
                      'P-256 or P-384')
    return
  if isinstance(public_key, rsa.RSAPublicKey):
    if public_key.key_size < 2048:
      raise CertError(f'{what}: RSA key of {public_key.key_size} bits; use '
                      'at least 2048')
    return
  raise CertError(f'{what}: unsupported key type {type(public_key).__name__}')


def sign_csr(ca: Issued, csr_pem: bytes, node: str, role: str,
             extra_sans: Sequence[str] = (), days: int = DEFAULT_NODE_DAYS,
             now: Optional[datetime.datetime] = None) -> x509.Certificate:
  """Signs a node's CSR: its key, with the name and role the signer gives.

  The CSR must be self-signed by the key it carries, and what it claims
  (CN, role) must equal `node` and `role`: an operator approving "edge-3 as
  edge-pod" cannot be tricked into signing another name or a higher role.
  Nothing else of the CSR is copied into the certificate.

  Raises:
    CertError: Unreadable, badly signed or mismatching CSR, weak key.
  """
  check_node_name(node)
  check_role(role)
  try:
    csr = x509.load_pem_x509_csr(csr_pem)
  except ValueError as e:
    raise CertError(f'not a PEM certificate signing request: {e}') from None
  if not csr.is_signature_valid:
    raise CertError('the CSR is not signed by the key it carries')
  _check_public_key(csr.public_key(), 'the CSR')
  names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
  claimed = names[0].value if names else None
  if claimed != node:
    raise CertError(f'the CSR is for {claimed!r}, not {node!r}; sign it under '
                    'the name it asks for, or ask the node for a new CSR')
  units = csr.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
  claimed_role = units[0].value if units else None
  if claimed_role != role:
    raise CertError(f'the CSR of {node} asks for role {claimed_role!r}, not '
                    f'{role!r}; check which node this is')
  try:
    identity = secagg_keys.parse_identity_extension(csr.extensions, node,
                                                    csr.public_key())
  except secagg_messages.Refused as e:
    raise CertError(f'the CSR of {node}: {e}; ask the node for a new CSR'
                    ) from None
  extension = None
  if identity is not None:
    extension = csr.extensions.get_extension_for_oid(
        secagg_keys.IDENTITY_EXTENSION_OID).value
  return issue_node_cert(ca, node, extra_sans, days, now, role,
                         public_key=csr.public_key(),
                         secagg_identity=extension).cert


def make_crl(ca: Issued, serials: Sequence[int], days: int = DEFAULT_CRL_DAYS,
             now: Optional[datetime.datetime] = None) -> x509.CertificateRevocationList:
  """A CRL of `serials`, valid for `days` (then re-sign it: `crl`)."""
  if days < 1:
    raise CertError(f'CRL validity of {days} days: use at least 1')
  now = now or _now()
  builder = (x509.CertificateRevocationListBuilder()
             .issuer_name(ca.cert.subject)
             .last_update(now - _CLOCK_SKEW)
             .next_update(now + datetime.timedelta(days=days)))
  for serial in sorted(set(serials)):
    builder = builder.add_revoked_certificate(
        x509.RevokedCertificateBuilder().serial_number(serial)
        .revocation_date(now - _CLOCK_SKEW).build())
  return builder.sign(ca.key, hashes.SHA256())


def revoked_serials(ca_dir: str) -> list[int]:
  """Serials in ca_dir's ca.crl (empty if there is none)."""
  path = os.path.join(ca_dir, CRL_FILE)
  if not os.path.exists(path):
    return []
  with open(path, 'rb') as f:
    crl = x509.load_pem_x509_crl(f.read())
  return [entry.serial_number for entry in crl]


def write_crl(ca_dir: str, add: Sequence[x509.Certificate] = (),
              days: int = DEFAULT_CRL_DAYS) -> str:
  """(Re-)signs ca_dir/ca.crl with its serials plus those of `add`."""
  ca = load_ca(ca_dir)
  for cert in add:
    if cert.issuer != ca.cert.subject:
      raise CertError(f'{cert.subject.rfc4514_string()} was not issued by '
                      f'the CA in {ca_dir}')
  serials = revoked_serials(ca_dir) + [cert.serial_number for cert in add]
  path = os.path.join(ca_dir, CRL_FILE)
  _write(path, make_crl(ca, serials, days).public_bytes(
      serialization.Encoding.PEM), 0o644)
  return path


def load_ca(directory: str) -> Issued:
  """The CA in `directory` (ca.crt + ca.key), to issue more nodes."""
  cert_path = os.path.join(directory, tls.CA_CERT_FILE)
  key_path = os.path.join(directory, CA_KEY_FILE)
  try:
    with open(cert_path, 'rb') as f:
      cert = x509.load_pem_x509_certificate(f.read())
    with open(key_path, 'rb') as f:
      key = serialization.load_pem_private_key(f.read(), password=None)
  except OSError as e:
    raise CertError(f'--reuse_ca: cannot read {e.filename}: {e.strerror}; '
                    'make a new CA without --reuse_ca') from None
  except (ValueError, TypeError) as e:
    raise CertError(f'--reuse_ca: {cert_path} / {key_path} is not a PEM '
                    f'certificate and unencrypted key: {e}') from None
  if not isinstance(key, ec.EllipticCurvePrivateKey):
    raise CertError(f'--reuse_ca: {key_path} is not an EC key')
  if (key.public_key().public_bytes(
      serialization.Encoding.DER,
      serialization.PublicFormat.SubjectPublicKeyInfo) !=
      cert.public_key().public_bytes(
          serialization.Encoding.DER,
          serialization.PublicFormat.SubjectPublicKeyInfo)):
    raise CertError(f'--reuse_ca: {key_path} is not the key of {cert_path}')
  return Issued(cert, key)


def _write(path: str, data: bytes, mode: int) -> None:
  # Written beside and renamed: a reader never sees half a key, and an
  # existing file's looser mode is not kept.
  tmp = f'{path}.tmp'
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
  try:
    os.fchmod(fd, mode)
    os.write(fd, data)
  finally:
    os.close(fd)
  os.replace(tmp, path)


def write_bundle(out_dir: str, nodes: Sequence[str],
                 extra_sans: Optional[Mapping[str, Sequence[str]]] = None,
                 overwrite: bool = False, reuse_ca: bool = False,
                 days: int = DEFAULT_NODE_DAYS,
                 ca_days: int = DEFAULT_CA_DAYS,
                 secagg_identities: Optional[Mapping[str, Any]] = None
                 ) -> list[str]:
  """Writes a CA (new, or the one there with reuse_ca) and node certs.

  Args:
    out_dir: Created if missing.
    nodes: Node names; one <node>.crt/.key each.
    extra_sans: {node: [DNS names or IPs]} besides the node name and
      LOCAL_SANS.
    overwrite: Replace files already in out_dir; without it a non-empty
      out_dir (or, with reuse_ca, an existing node file) is an error.
    reuse_ca: Sign with out_dir's ca.crt/ca.key instead of a new CA.
    days: Node certificate validity.
    ca_days: New CA validity.
    secagg_identities: {edge pod: its Ed25519 SecAgg identity key} to
      certify in those pods' certificates (the keys stay where they are).

  Returns:
    The paths written, CA first.

  Raises:
    CertError: Bad names, SANs or out_dir; nothing is written then.
  """
  extra_sans = dict(extra_sans or {})
  if not nodes:
    raise CertError('no nodes: name at least one, e.g. '
                    '--nodes=coordinator,edge-server-0,edge-0')
  roles = dict(parse_node(node) for node in nodes)
  nodes = [parse_node(node)[0] for node in nodes]
  duplicates = sorted({n for n in nodes if list(nodes).count(n) > 1})
  if duplicates:
    raise CertError(f'node {duplicates[0]!r} is listed twice in --nodes')
  for node, names in extra_sans.items():
    if node not in nodes:
      raise CertError(f'SANs given for node {node!r}, which is not in --nodes '
                      f'({",".join(nodes)}); add it there or fix the name')
    for name in names:
      parse_san(name)
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise CertError(f'--out_dir={out_dir} is a file, not a directory; choose '
                    'another path')
  existing = sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else []
  if reuse_ca:
    ca = load_ca(out_dir)
    clashes = [f for node in nodes
               for f in (f'{node}.crt', f'{node}.key') if f in existing]
    if clashes and not overwrite:
      raise CertError(f'--out_dir={out_dir} already has {", ".join(clashes)}; '
                      'pass --overwrite to re-issue those nodes')
  else:
    if existing and not overwrite:
      shown = ', '.join(existing[:5]) + (', ...' if len(existing) > 5 else '')
      raise CertError(
          f'--out_dir={out_dir} is not empty ({shown}); pass --overwrite to '
          'replace its CA and certificates, --reuse_ca to add nodes signed by '
          'its CA, or choose an empty directory')
    ca = make_ca(days=ca_days)
  secagg_identities = dict(secagg_identities or {})
  strangers = sorted(set(secagg_identities) - set(nodes))
  if strangers:
    raise CertError(f'SecAgg identities given for {strangers}, which are not '
                    'in --nodes')
  issued = {node: issue_node_cert(ca, node, extra_sans.get(node, ()), days,
                                 role=roles[node],
                                 secagg_identity=secagg_identities.get(node))
            for node in nodes}
  os.makedirs(out_dir, exist_ok=True)
  written = []
  if not reuse_ca:
    for name, data, mode in ((tls.CA_CERT_FILE, ca.cert_pem(), 0o644),
                             (CA_KEY_FILE, ca.key_pem(), 0o600)):
      written.append(os.path.join(out_dir, name))
      _write(written[-1], data, mode)
  for node, node_issued in issued.items():
    files = tls.TlsFiles.from_dir(out_dir, node, validate=False)
    _write(files.cert, node_issued.cert_pem(), 0o644)
    _write(files.key, node_issued.key_pem(), 0o600)
    written.extend([files.cert, files.key])
  return written


def _sans_of(cert: x509.Certificate) -> list[str]:
  return [str(name.value) for name in cert.extensions.get_extension_for_class(
      x509.SubjectAlternativeName).value
          if not isinstance(name, x509.UniformResourceIdentifier)]


def _read(path: str, what: str) -> bytes:
  try:
    with open(path, 'rb') as f:
      return f.read()
  except OSError as e:
    raise CertError(f'cannot read the {what} {path}: {e.strerror}') from None


def make_node_csr(directory: str, node: str, role: str,
                  secagg_key: Optional[str] = None) -> tuple[str, str]:
  """Makes <node>.key in `directory` if missing (0600), and <node>.csr.

  With `secagg_key` (an edge pod's SecAgg identity key file, made 0600 if
  missing) the CSR also asks to certify that identity.

  Returns:
    (key path, CSR path). An existing key is kept: a restarted node asks
    again for the same key, and its certificate stays valid.
  """
  check_node_name(node)
  check_role(role)
  os.makedirs(directory, mode=0o700, exist_ok=True)
  key_path = os.path.join(directory, f'{node}.key')
  if os.path.exists(key_path):
    try:
      key = serialization.load_pem_private_key(_read(key_path, 'key'), None)
    except (ValueError, TypeError) as e:
      raise CertError(f'{key_path} is not an unencrypted PEM key ({e}); move '
                      'it away to make a new one') from None
  else:
    key = new_key()
    _write(key_path, Issued(None, key).key_pem(), 0o600)
  identity = None
  if secagg_key:
    try:
      identity = secagg_keys.load_or_create_identity(secagg_key)
    except ValueError as e:
      raise CertError(str(e)) from None
  csr_path = os.path.join(directory, f'{node}.csr')
  _write(csr_path, make_csr(key, node, role, identity).public_bytes(
      serialization.Encoding.PEM), 0o644)
  return key_path, csr_path


def _require(value, flag: str, command: str):
  if not value:
    raise CertError(f'{command} needs --{flag}')
  return value


def _run(command: Optional[str]) -> list[str]:
  """Runs one CLI command; returns the paths it wrote."""
  if command is None:
    if not _OUT_DIR.value:
      raise CertError('--out_dir is required: the directory for ca.crt and '
                      'the node certificates')
    if not _NODES.value:
      raise CertError('--nodes is required, e.g. '
                      '--nodes=coordinator,edge-server-0,edge-0')
    nodes = [node.strip() for node in _NODES.value]
    sans = parse_san_flags(_SAN.value, [parse_node(n)[0] for n in nodes])
    return write_bundle(_OUT_DIR.value, nodes, sans,
                        overwrite=_OVERWRITE.value, reuse_ca=_REUSE_CA.value,
                        days=_DAYS.value, ca_days=_CA_DAYS.value)
  if command == 'csr':
    return list(make_node_csr(_require(FLAGS.dir, 'dir', 'csr'),
                              _require(FLAGS.name, 'name', 'csr'),
                              _require(FLAGS.role, 'role', 'csr'),
                              FLAGS.secagg_key))
  if command == 'sign':
    node = _require(FLAGS.name, 'name', 'sign')
    csr_path = _require(FLAGS.csr, 'csr', 'sign')
    ca = load_ca(_require(FLAGS.ca_dir, 'ca_dir', 'sign'))
    sans = parse_san_flags(_SAN.value, [node]).get(node, [])
    cert = sign_csr(ca, _read(csr_path, 'CSR'), node,
                    _require(FLAGS.role, 'role', 'sign'), sans, _DAYS.value)
    out = FLAGS.out or os.path.splitext(csr_path)[0] + '.crt'
    _write(out, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return [out]
  if command == 'revoke':
    paths = _require(FLAGS.cert, 'cert', 'revoke')
    revoked = []
    for path in paths:
      try:
        revoked.append(x509.load_pem_x509_certificate(_read(path,
                                                            'certificate')))
      except ValueError:
        raise CertError(f'{path} is not a PEM certificate') from None
    return [write_crl(_require(FLAGS.ca_dir, 'ca_dir', 'revoke'), revoked,
                      FLAGS.crl_days)]
  if command == 'crl':
    return [write_crl(_require(FLAGS.ca_dir, 'ca_dir', 'crl'), (),
                      FLAGS.crl_days)]
  raise CertError(f'unknown command {command!r}: use csr, sign, revoke, crl '
                  'or none (a whole bundle with --out_dir and --nodes)')


def main(argv: list[str]) -> int:
  if len(argv) > 2:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[2:])}')
  try:
    written = _run(argv[1] if len(argv) == 2 else None)
  except CertError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  except OSError as e:
    print(f'error: cannot write {e.filename or ""}: {e.strerror}',
          file=sys.stderr)
    return 2
  for path in written:
    if path.endswith('.crt'):
      with open(path, 'rb') as f:
        cert = x509.load_pem_x509_certificate(f.read())
      names = '' if cert.issuer == cert.subject else (
          ' for ' + ', '.join(_sans_of(cert)))
      print(f'{path}{names} (until {cert.not_valid_after_utc:%Y-%m-%d})')
    else:
      print(path)
  return 0


if __name__ == '__main__':
  define_command_flags()
  entry_point.run(main)
