"""Mutual TLS for the runtime's gRPC channels and HTTP control calls.

Every node holds the cluster CA (ca.crt) and its own <node>.crt/<node>.key,
made by `python -m workers.certs`. Both ends of every connection present a
certificate and accept only a peer whose certificate that CA signed. With
`tls=None` the same functions make plain (insecure) channels and requests, so
callers need one code path for both.
"""

from __future__ import annotations

import dataclasses
import datetime
import http.client
import json
import os
import ssl
from typing import Any, Optional, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
import grpc

from data_prep.errors import UserError
from workers import worker_process

CA_CERT_FILE = 'ca.crt'
_FIX_HINT = ('make certificates with `python -m workers.certs` and mount '
             'their directory')


class TlsError(UserError):
  """A certificate or key file is missing, unreadable or does not fit."""


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

  @classmethod
  def from_dir(cls, directory: str, node: str,
               validate: bool = True) -> 'TlsFiles':
    """`directory`/ca.crt, <node>.crt and <node>.key (workers.certs layout)."""
    files = cls(ca=os.path.join(directory, CA_CERT_FILE),
                cert=os.path.join(directory, f'{node}.crt'),
                key=os.path.join(directory, f'{node}.key'))
    return files.validate() if validate else files

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


def grpc_channel(address: str, tls: Optional[TlsFiles],
                 options: Sequence[tuple[str, Any]] = tuple(
                     worker_process.GRPC_CHANNEL_OPTIONS),
                 server_name: Optional[str] = None) -> grpc.Channel:
  """A channel to `address`: mutual TLS with `tls`, insecure without.

  Args:
    address: host:port.
    tls: Our certificate and the CA the server must chain to; None for an
      insecure channel.
    options: gRPC channel options (default: 2 GB messages).
    server_name: The name to verify in the server's certificate instead of
      `address`'s host, e.g. 'edge-0' when dialing a pod by IP.
  """
  options = list(options)
  if tls is None:
    return grpc.insecure_channel(address, options)
  ca, cert, key = tls.read()
  credentials = grpc.ssl_channel_credentials(
      root_certificates=ca, private_key=key, certificate_chain=cert)
  if server_name:
    options.append(('grpc.ssl_target_name_override', server_name))
  return grpc.secure_channel(address, credentials, options)


def grpc_server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
  """Server credentials that demand a client certificate from our CA."""
  ca, cert, key = tls.read()
  return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                     require_client_auth=True)


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
