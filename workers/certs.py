"""Makes the cluster's TLS certificates: one CA, one certificate per node.

    python -m workers.certs --out_dir=certs \
        --nodes=coordinator,edge-server-0,edge-0,edge-1 \
        --san=edge-0=10.0.0.5,edge-0.edge.default.svc

Writes ca.crt, ca.key and <node>.crt, <node>.key (keys 0600) in --out_dir:
the layout workers.tls.TlsFiles.from_dir reads. Every node certificate names
the node, localhost and 127.0.0.1 (plus its --san names and addresses) and is
good for both TLS server and client auth: an edge server accepts the
coordinator's calls and calls its pods with the same certificate. Keys are EC
P-256. ca.key is only needed to issue more nodes (--reuse_ca, e.g. for a pod
added later): keep it off the nodes.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
import re
import sys
from typing import Mapping, Optional, Sequence

from absl import app
from absl import flags
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.oid import NameOID

from data_prep import entry_point
from data_prep.errors import UserError
from workers import tls

CA_KEY_FILE = 'ca.key'
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


def _name(common_name: str) -> x509.Name:
  return x509.Name([
      x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
      x509.NameAttribute(NameOID.COMMON_NAME, common_name),
  ])


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
                    now: Optional[datetime.datetime] = None) -> Issued:
  """A certificate for `node`, for TLS server and client auth, signed by `ca`.

  Args:
    ca: The CA (from make_ca or load_ca).
    node: The node's name: its CN and first DNS SAN.
    extra_sans: More DNS names or IP addresses besides LOCAL_SANS.
    days: Validity; capped at the CA's own end of validity.
    now: Start of validity (tests).

  Returns:
    The node's certificate and new key.
  """
  check_node_name(node)
  if days < 1:
    raise CertError(f'certificate validity of {days} days: use at least 1')
  now = now or _now()
  sans: list[x509.GeneralName] = []
  for value in (node, *LOCAL_SANS, *extra_sans):
    san = parse_san(value)
    if san not in sans:
      sans.append(san)
  key = ec.generate_private_key(ec.SECP256R1())
  not_after = min(now + datetime.timedelta(days=days),
                  ca.cert.not_valid_after_utc)
  ca_ski = ca.cert.extensions.get_extension_for_class(
      x509.SubjectKeyIdentifier).value
  cert = (
      x509.CertificateBuilder()
      .subject_name(_name(node))
      .issuer_name(ca.cert.subject)
      .public_key(key.public_key())
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
      .add_extension(x509.SubjectKeyIdentifier.from_public_key(
          key.public_key()), critical=False)
      .add_extension(
          x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
              ca_ski), critical=False)
      .sign(ca.key, hashes.SHA256()))
  return Issued(cert, key)


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
                 ca_days: int = DEFAULT_CA_DAYS) -> list[str]:
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

  Returns:
    The paths written, CA first.

  Raises:
    CertError: Bad names, SANs or out_dir; nothing is written then.
  """
  extra_sans = dict(extra_sans or {})
  if not nodes:
    raise CertError('no nodes: name at least one, e.g. '
                    '--nodes=coordinator,edge-server-0,edge-0')
  for node in nodes:
    check_node_name(node)
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
  issued = {node: issue_node_cert(ca, node, extra_sans.get(node, ()), days)
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
      x509.SubjectAlternativeName).value]


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  try:
    if not _OUT_DIR.value:
      raise CertError('--out_dir is required: the directory for ca.crt and '
                      'the node certificates')
    if not _NODES.value:
      raise CertError('--nodes is required, e.g. '
                      '--nodes=coordinator,edge-server-0,edge-0')
    nodes = [node.strip() for node in _NODES.value]
    sans = parse_san_flags(_SAN.value, nodes)
    written = write_bundle(_OUT_DIR.value, nodes, sans,
                           overwrite=_OVERWRITE.value,
                           reuse_ca=_REUSE_CA.value, days=_DAYS.value,
                           ca_days=_CA_DAYS.value)
  except CertError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  except OSError as e:
    print(f'error: cannot write to --out_dir={_OUT_DIR.value}: {e}',
          file=sys.stderr)
    return 2
  for path in written:
    if path.endswith('.crt'):
      with open(path, 'rb') as f:
        cert = x509.load_pem_x509_certificate(f.read())
      names = '' if cert.issuer == cert.subject else (
          ' for ' + ', '.join(_sans_of(cert)))
      print(f'{path}{names} (until {cert.not_valid_after_utc:%Y-%m-%d})')
  return 0


if __name__ == '__main__':
  entry_point.run(main)
