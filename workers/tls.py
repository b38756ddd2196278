"""Mutual TLS for the runtime's gRPC channels and HTTP control calls.

Every node holds the cluster CA (ca.crt) and its own <node>.crt/<node>.key,
made by `python -m workers.certs` (or by the node itself: `certs csr`, then
`certs sign` by the CA's holder). Both ends of every connection present a
certificate and accept only a peer whose certificate that CA signed, that
is not expired and not in the CA's revocation list (ca.crl, if present), and
whose role (spiffe://tff-edge/<role>/<name>) may call them (PeerPolicy).

Files are re-read when they change: a rotated certificate is used by the
next connection (grpc_channel re-creates its channel; servers made with
grpc_server_credentials fetch the new files for the next handshake). With
`tls=None` the same functions make plain (insecure) channels and requests;
callers get there only through an explicit --insecure (resolve()).
"""

from __future__ import annotations

import dataclasses
import datetime
import http.client
import json
import os
import ssl
import threading
import time
from typing import Any, Callable, Optional, Sequence

from absl import logging
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
import grpc

from data_prep.errors import UserError
from workers import worker_process

CA_CERT_FILE = 'ca.crt'
CRL_FILE = 'ca.crl'
ROLES = ('coordinator', 'edge-server', 'edge-pod', 'monitoring')
# Who may call whom: pods serve edge servers, edge servers the coordinator,
# and the coordinator serves nobody; every tier's /metrics (workers.metrics)
# serves only the monitoring role (Prometheus).
CALLERS = {'edge-pod': ('edge-server',), 'edge-server': ('coordinator',),
           'coordinator': (), 'metrics': ('monitoring',)}
_SPIFFE_PREFIX = 'spiffe://tff-edge/'
# How often a process looks at its certificate files for a rotation.
_RELOAD_CHECK_SECONDS = 1.0
_FIX_HINT = ('make certificates with `python -m workers.certs` and mount '
             'their directory')


class TlsError(UserError):
  """A certificate or key file is missing, unreadable or does not fit."""


def spiffe_id(role: str, name: str) -> str:
  return f'{_SPIFFE_PREFIX}{role}/{name}'


def identity(cert: x509.Certificate) -> tuple[str, str]:
  """(role, name) a certificate of ours carries.

  Raises:
    ValueError: No spiffe://tff-edge/ URI, or one that disagrees with the
      subject's OU and CN (a certificate our signer did not write).
  """
  try:
    sans = cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
  except x509.ExtensionNotFound:
    raise ValueError('certificate has no subject alternative names') from None
  uris = [u for u in sans.get_values_for_type(x509.UniformResourceIdentifier)
          if u.startswith(_SPIFFE_PREFIX)]
  if len(uris) != 1:
    raise ValueError(f'certificate has {len(uris)} {_SPIFFE_PREFIX} URIs, '
                     'not one (issued before roles? re-issue it)')
  role, _, name = uris[0][len(_SPIFFE_PREFIX):].partition('/')
  units = [a.value for a in cert.subject.get_attributes_for_oid(
      NameOID.ORGANIZATIONAL_UNIT_NAME)]
  names = [a.value for a in cert.subject.get_attributes_for_oid(
      NameOID.COMMON_NAME)]
  if role not in ROLES or units != [role] or names != [name]:
    raise ValueError(f'certificate role {uris[0]} disagrees with its '
                     f'subject {cert.subject.rfc4514_string()}')
  return role, name


def _read(path: str, role: str) -> bytes:
  try:
    with open(path, 'rb') as f:
      return f.read()
  except OSError as e:
    raise TlsError(f'cannot read the {role} file {path}: {e.strerror}; '
                   f'{_FIX_HINT}') from None


def _der(public_key) -> bytes:
  return public_key.public_bytes(
      serialization.Encoding.DER,
      serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclasses.dataclass(frozen=True)
class TlsFiles:
  """PEM paths: the CA that peers must chain to, our cert and its key."""
  ca: str
  cert: str
  key: str

  # The CA's revocation list; may not exist (yet): checked when it does.
  crl: Optional[str] = None

  @classmethod
  def from_dir(cls, directory: str, node: str, validate: bool = True,
               ca_dir: Optional[str] = None) -> 'TlsFiles':
    """<node>.crt, <node>.key in `directory`; ca.crt, ca.crl in `ca_dir`.

    `ca_dir` defaults to `directory`; on Kubernetes the CA's public files
    come from a ConfigMap, the node's own from its volume (workers.identity).
    ca.crl is used when present.
    """
    ca_dir = ca_dir or directory
    files = cls(ca=os.path.join(ca_dir, CA_CERT_FILE),
                cert=os.path.join(directory, f'{node}.crt'),
                key=os.path.join(directory, f'{node}.key'),
                crl=os.path.join(ca_dir, CRL_FILE))
    return files.validate() if validate else files

  def fingerprint(self) -> tuple:
    """Changes when any of the files is replaced or rewritten."""
    stamps = []
    for path in (self.ca, self.cert, self.key, self.crl):
      try:
        stat = os.stat(path) if path else None
      except OSError:
        stat = None
      stamps.append(None if stat is None else
                    (stat.st_ino, stat.st_mtime_ns, stat.st_size))
    return tuple(stamps)

  def identity(self) -> tuple[str, str]:
    """(role, name) of our own certificate."""
    cert = x509.load_pem_x509_certificates(_read(self.cert, 'certificate'))[0]
    try:
      return identity(cert)
    except ValueError as e:
      raise TlsError(f'{self.cert}: {e}') from None

  def read(self) -> tuple[bytes, bytes, bytes]:
    """(ca, cert, key) PEM bytes; TlsError names a file that cannot be read."""
    return (_read(self.ca, 'CA certificate'), _read(self.cert, 'certificate'),
            _read(self.key, 'private key'))

  def validate(self, now: Optional[datetime.datetime] = None) -> 'TlsFiles':
    """Checks the files parse, the key is the cert's, the CA signed the cert.

    Catches at start what would otherwise be an opaque handshake failure on
    the first call (a key from another node, a cert from an old CA, ...).

    Returns:
      self.

    Raises:
      TlsError: Names the file and what is wrong with it.
    """
    ca_pem, cert_pem, key_pem = self.read()
    try:
      cas = x509.load_pem_x509_certificates(ca_pem)
    except ValueError:
      raise TlsError(f'the CA file {self.ca} holds no PEM certificate; '
                     f'{_FIX_HINT}') from None
    try:
      cert = x509.load_pem_x509_certificates(cert_pem)[0]  # Leaf first.
    except ValueError:
      raise TlsError(f'the certificate file {self.cert} holds no PEM '
                     f'certificate; {_FIX_HINT}') from None
    try:
      key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
      raise TlsError(f'the key file {self.key} is not an unencrypted PEM '
                     f'private key ({e}); {_FIX_HINT}') from None
    if _der(key.public_key()) != _der(cert.public_key()):
      raise TlsError(f'the key file {self.key} is not the key of '
                     f'{self.cert}; use the .key written with that .crt')
    if not any(_issued_by(cert, ca) for ca in cas):
      raise TlsError(f'{self.cert} is not signed by the CA in {self.ca}; use '
                     'files from one `python -m workers.certs` output')
    now = now or datetime.datetime.now(datetime.timezone.utc)
    for path, certificate in [(self.cert, cert)] + [(self.ca, c) for c in cas]:
      if not (certificate.not_valid_before_utc <= now <=
              certificate.not_valid_after_utc):
        raise TlsError(
            f'{path} is valid only from {certificate.not_valid_before_utc} '
            f'to {certificate.not_valid_after_utc} (now {now:%Y-%m-%d %H:%M} '
            'UTC); issue new certificates with `python -m workers.certs`')
    return self


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
  try:
    cert.verify_directly_issued_by(ca)
    return True
  except (InvalidSignature, ValueError, TypeError):
    # Bad signature, issuer name mismatch or another key type: not it.
    return False


# Keepalive on channels that cross the network: a peer that stops answering
# (SIGSTOP, a dead host, a cut link) loses its connection within ~30 s. That
# does not bound the call (gRPC retries it on a new connection, which may
# hang in the TLS handshake: 100-600 s measured); workers/liveness.py does.
# Our gRPC servers allow these pings (SERVER_OPTIONS); nginx answers pings
# itself.
KEEPALIVE_OPTIONS = (
    ('grpc.keepalive_time_ms', 20_000),
    ('grpc.keepalive_timeout_ms', 10_000),
    ('grpc.keepalive_permit_without_calls', 0),
    ('grpc.http2.max_pings_without_data', 0),
)
# A call refused with UNAVAILABLE before a server read it is sent again, up
# to twice: e.g. one that raced a terminator's graceful restart (reload())
# for its idle connection. gRPC retries only calls it has buffered whole.
_RETRY_SERVICE_CONFIG = json.dumps({'methodConfig': [{
    'name': [{}],
    'retryPolicy': {'maxAttempts': 3, 'initialBackoff': '0.2s',
                    'maxBackoff': '1s', 'backoffMultiplier': 2,
                    'retryableStatusCodes': ['UNAVAILABLE']}}]})
RETRY_OPTIONS = (
    ('grpc.enable_retries', 1),
    ('grpc.service_config', _RETRY_SERVICE_CONFIG),
    ('grpc.per_rpc_retry_buffer_size', 64 << 20),
    ('grpc.retry_buffer_size', 256 << 20),
)
NETWORK_CHANNEL_OPTIONS = (*worker_process.GRPC_CHANNEL_OPTIONS,
                           *KEEPALIVE_OPTIONS, *RETRY_OPTIONS)
SERVER_OPTIONS = (
    *worker_process.GRPC_CHANNEL_OPTIONS,
    ('grpc.http2.min_recv_ping_interval_without_data_ms', 10_000),
    ('grpc.http2.max_ping_strikes', 0),
    ('grpc.keepalive_time_ms', 20_000),
    ('grpc.keepalive_timeout_ms', 10_000),
)


def resolve(tls_dir: Optional[str], node: str, insecure: bool,
            who: str, ca_dir: Optional[str] = None) -> Optional['TlsFiles']:
  """The TLS files of `node` in `tls_dir`; None only if `insecure`.

  Raises:
    TlsError: No tls_dir and no --insecure (plaintext is never silent), or
      both, or bad files.
  """
  if tls_dir and insecure:
    raise TlsError(f'{who}: --insecure and a TLS directory ({tls_dir}) '
                   'contradict each other; drop one')
  if tls_dir:
    return TlsFiles.from_dir(tls_dir, node, ca_dir=ca_dir)
  if insecure:
    return None
  raise TlsError(f'{who}: no TLS directory (--tls_dir or the topology\'s '
                 'tls_dir), so every channel would be plaintext; give one '
                 '(python -m workers.certs makes certificates) or pass '
                 '--insecure explicitly')


def grpc_channel(address: str, tls: Optional[TlsFiles],
                 options: Sequence[tuple[str, Any]] = NETWORK_CHANNEL_OPTIONS,
                 server_name: Optional[str] = None) -> grpc.Channel:
  """A channel to `address`: mutual TLS with `tls`, insecure without.

  With `tls`, the channel follows rotations: when a file of `tls` changes,
  the next call goes over a new channel with the new files (calls already
  running finish on the old one).

  Args:
    address: host:port.
    tls: Our certificate and the CA the server must chain to; None for an
      insecure channel.
    options: gRPC channel options (default: message caps and keepalive).
    server_name: The name to verify in the server's certificate instead of
      `address`'s host, e.g. 'edge-0' when dialing a pod by IP.
  """
  options = list(options)
  if tls is None:
    return grpc.insecure_channel(address, options)
  if server_name:
    options.append(('grpc.ssl_target_name_override', server_name))

  def make() -> grpc.Channel:
    ca, cert, key = tls.read()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert)
    return grpc.secure_channel(address, credentials, options)

  return ReloadingChannel(make, tls.fingerprint)


class _MultiCallable:
  """Resolves the owner's current channel at each call."""

  def __init__(self, owner: 'ReloadingChannel', kind: str, method: str,
               kwargs: dict[str, Any]):
    self._owner = owner
    self._kind = kind
    self._method = method
    self._kwargs = kwargs

  def _bound(self):
    return getattr(self._owner.current(), self._kind)(self._method,
                                                      **self._kwargs)

  def __call__(self, *args, **kwargs):
    return self._bound()(*args, **kwargs)

  def with_call(self, *args, **kwargs):
    return self._bound().with_call(*args, **kwargs)

  def future(self, *args, **kwargs):
    return self._bound().future(*args, **kwargs)


class ReloadingChannel(grpc.Channel):
  """A grpc.Channel that is re-made when its credential files change."""

  def __init__(self, make: Callable[[], grpc.Channel],
               fingerprint: Callable[[], tuple]):
    self._make = make
    self._fingerprint = fingerprint
    self._lock = threading.Lock()
    self._stamp = fingerprint()
    self._channel = make()
    self._checked = time.monotonic()
    self._old: list[grpc.Channel] = []
    self.reloads = 0

  def current(self) -> grpc.Channel:
    now = time.monotonic()
    if now - self._checked < _RELOAD_CHECK_SECONDS:
      return self._channel
    with self._lock:
      self._checked = now
      stamp = self._fingerprint()
      if stamp != self._stamp:
        try:
          channel = self._make()
        except (TlsError, ValueError) as e:
          # Half-written files: keep the working channel, retry later.
          logging.warning('TLS files changed but do not load yet (%s); '
                          'keeping the current channel', e)
          return self._channel
        # The old channel may carry running calls: closed with this one.
        self._old.append(self._channel)
        self._channel, self._stamp = channel, stamp
        self.reloads += 1
      return self._channel

  def unary_unary(self, method, *args, **kwargs):
    kwargs.update(zip(('request_serializer', 'response_deserializer'), args))
    return _MultiCallable(self, 'unary_unary', method, kwargs)

  def unary_stream(self, method, *args, **kwargs):
    kwargs.update(zip(('request_serializer', 'response_deserializer'), args))
    return _MultiCallable(self, 'unary_stream', method, kwargs)

  def stream_unary(self, method, *args, **kwargs):
    kwargs.update(zip(('request_serializer', 'response_deserializer'), args))
    return _MultiCallable(self, 'stream_unary', method, kwargs)

  def stream_stream(self, method, *args, **kwargs):
    kwargs.update(zip(('request_serializer', 'response_deserializer'), args))
    return _MultiCallable(self, 'stream_stream', method, kwargs)

  def subscribe(self, callback, try_to_connect=False):
    self.current().subscribe(callback, try_to_connect)

  def unsubscribe(self, callback):
    self._channel.unsubscribe(callback)

  def close(self):
    with self._lock:
      for channel in (*self._old, self._channel):
        channel.close()
      self._old.clear()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
    return False


def load_crl(tls: TlsFiles, now: Optional[datetime.datetime] = None
             ) -> Optional[x509.CertificateRevocationList]:
  """The CA's CRL if there is one; TlsError if it is bad or expired.

  An expired or foreign CRL fails closed (as nginx does: it then refuses
  every client), so that a CRL nobody re-signs cannot silently stop
  revoking.
  """
  if not tls.crl or not os.path.exists(tls.crl):
    return None
  try:
    crl = x509.load_pem_x509_crl(_read(tls.crl, 'CRL'))
  except ValueError:
    raise TlsError(f'{tls.crl} is not a PEM CRL; re-sign it with '
                   '`python -m workers.certs crl`') from None
  cas = x509.load_pem_x509_certificates(_read(tls.ca, 'CA certificate'))
  if not any(crl.issuer == ca.subject and
             crl.is_signature_valid(ca.public_key()) for ca in cas):
    raise TlsError(f'{tls.crl} is not signed by the CA in {tls.ca}')
  now = now or datetime.datetime.now(datetime.timezone.utc)
  if crl.next_update_utc is not None and crl.next_update_utc < now:
    raise TlsError(f'{tls.crl} expired at {crl.next_update_utc}; re-sign it '
                   'with `python -m workers.certs crl --ca_dir=...`')
  return crl


class PeerPolicy:
  """Which callers a server admits: roles, and not revoked.

  The TLS layer has already checked the chain and the dates; this checks
  what it cannot: the caller's role, and the CA's CRL (gRPC's Python API
  takes no CRL). The CRL is re-read when its file changes.
  """

  def __init__(self, tls: TlsFiles, roles: Sequence[str]):
    self._tls = tls
    self.roles = tuple(roles)
    self._lock = threading.Lock()
    self._stamp = None
    self._revoked: frozenset[int] = frozenset()
    self._crl_error: Optional[str] = None
    self._crl_next_update: Optional[datetime.datetime] = None

  def _revocations(self) -> frozenset[int]:
    with self._lock:
      stamp = self._tls.fingerprint()
      now = datetime.datetime.now(datetime.timezone.utc)
      expired = (self._crl_next_update is not None and
                 self._crl_next_update < now)
      if stamp != self._stamp or expired:
        self._stamp = stamp
        try:
          crl = load_crl(self._tls, now)
          self._revoked = frozenset(
              entry.serial_number for entry in crl) if crl else frozenset()
          self._crl_next_update = crl.next_update_utc if crl else None
          self._crl_error = None
        except TlsError as e:
          self._crl_error = str(e)
      if self._crl_error:
        raise PermissionError(f'revocation list unusable: {self._crl_error}')
      return self._revoked

  def check_pem(self, pem: bytes) -> tuple[str, str]:
    """(role, name) of the caller's certificate, or PermissionError."""
    try:
      cert = x509.load_pem_x509_certificate(pem)
      role, name = identity(cert)
    except ValueError as e:
      raise PermissionError(f'caller certificate: {e}') from None
    if cert.serial_number in self._revocations():
      raise PermissionError(f'the certificate of {role} {name} (serial '
                            f'{cert.serial_number:x}) is revoked')
    if role not in self.roles:
      raise PermissionError(
          f'{role} {name} may not call this service (only: '
          f'{", ".join(self.roles) or "nobody"})')
    return role, name

  def check_context(self, context: grpc.ServicerContext) -> tuple[str, str]:
    """check_pem on the certificate of a gRPC call's peer."""
    pems = context.auth_context().get('x509_pem_cert') or []
    if not pems:
      raise PermissionError('no client certificate')
    return self.check_pem(pems[0])


def grpc_server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
  """Server credentials that demand a client certificate from our CA.

  gRPC asks for the files again before each new handshake; they are
  re-read when they changed, so a rotated certificate or CA bundle takes
  effect for new connections without a restart.
  """
  state = {'stamp': tls.fingerprint()}

  def configuration() -> grpc.ServerCertificateConfiguration:
    ca, cert, key = tls.read()
    return grpc.ssl_server_certificate_configuration([(key, cert)],
                                                     root_certificates=ca)

  def fetch() -> Optional[grpc.ServerCertificateConfiguration]:
    stamp = tls.fingerprint()
    if stamp == state['stamp']:
      return None  # Unchanged: keep the current configuration.
    try:
      tls.validate()
      new = configuration()
    except TlsError as e:
      logging.warning('TLS files changed but do not validate yet (%s); '
                      'keeping the current ones', e)
      return None
    state['stamp'] = stamp
    logging.info('TLS files changed: new handshakes use %s', tls.cert)
    return new

  return grpc.dynamic_ssl_server_credentials(
      configuration(), fetch, require_client_authentication=True)


def client_ssl_context(tls: TlsFiles) -> ssl.SSLContext:
  """An HTTPS client context: TLS 1.2+, our cert, trusts only our CA."""
  context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # Verifies host + chain.
  context.minimum_version = ssl.TLSVersion.TLSv1_2
  tls.read()  # A missing file fails here, named, not as a bare ssl error.
  try:
    context.load_verify_locations(cafile=tls.ca)
    context.load_cert_chain(tls.cert, tls.key)
  except ssl.SSLError as e:
    raise TlsError(f'{tls.cert} / {tls.key} / {tls.ca} do not load as PEM '
                   f'certificate, key and CA ({e.reason}); {_FIX_HINT}'
                   ) from None
  return context


class _HttpsConnection(http.client.HTTPSConnection):
  """Verifies the server as `server_name`, whatever host it dials."""

  def __init__(self, address: str, timeout: float, context: ssl.SSLContext,
               server_name: Optional[str]):
    super().__init__(address, timeout=timeout, context=context)
    self._tls_context = context
    self._server_name = server_name or self.host

  def connect(self) -> None:
    http.client.HTTPConnection.connect(self)
    self.sock = self._tls_context.wrap_socket(
        self.sock, server_hostname=self._server_name)


def _request(method: str, address: str, path: str, body: Any,
             tls: Optional[TlsFiles], timeout: float,
             server_name: Optional[str]) -> tuple[int, Any]:
  if tls is None:
    connection = http.client.HTTPConnection(address, timeout=timeout)
  else:
    connection = _HttpsConnection(address, timeout, client_ssl_context(tls),
                                  server_name)
  headers = {'Accept': 'application/json'}
  data = None
  if method == 'POST':
    data = json.dumps(body).encode('utf-8')
    headers['Content-Type'] = 'application/json'
  try:
    connection.request(method, path, body=data, headers=headers)
    response = connection.getresponse()
    raw = response.read()
  finally:
    connection.close()
  try:
    return response.status, json.loads(raw or b'null')
  except ValueError:
    # Proxies answer errors in HTML (e.g. a 502 from the terminator).
    return response.status, raw.decode('utf-8', 'replace')


def http_get_json(address: str, path: str, tls: Optional[TlsFiles] = None,
                  timeout: float = 5.0,
                  server_name: Optional[str] = None) -> tuple[int, Any]:
  """GETs https://address/path (http:// without tls).

  Returns:
    (HTTP status, parsed JSON body); a body that is not JSON comes back as
    text. Every status is returned, not raised.

  Raises:
    OSError: Unreachable, or the server's certificate did not verify
      (ssl.SSLCertVerificationError).
    TlsError: Our own files are missing or bad.
  """
  return _request('GET', address, path, None, tls, timeout, server_name)


def http_post_json(address: str, path: str, body: Any,
                   tls: Optional[TlsFiles] = None, timeout: float = 5.0,
                   server_name: Optional[str] = None) -> tuple[int, Any]:
  """POSTs `body` as JSON to https://address/path; as http_get_json."""
  return _request('POST', address, path, body, tls, timeout, server_name)
