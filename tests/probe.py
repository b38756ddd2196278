"""Attacks on a listening socket, for the tests that check every listener.

A listener passes if it is unreachable from where the probe runs, or if
everything a caller without a client certificate of our CA tries is refused
before it reaches the service behind: plaintext HTTP, plaintext gRPC (h2c),
and TLS without a client certificate (plain HTTP over it, and gRPC).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import ssl
import subprocess
from typing import Optional

import grpc

# Statuses that mean "refused for want of a client certificate": nginx's own
# 400 (no certificate sent / plain HTTP to an HTTPS port), 495/496, and the
# 403 our terminator rewrites them to.
_REFUSED_STATUSES = (400, 403, 495, 496)


@dataclasses.dataclass
class Verdict:
  """What a caller without a client certificate achieved."""
  reachable: bool
  findings: list[str] = dataclasses.field(default_factory=list)

  @property
  def safe(self) -> bool:
    return not self.findings


def host_addresses() -> list[str]:
  """This network namespace's non-loopback IPv4 addresses."""
  try:
    output = subprocess.run(['ip', '-o', '-4', 'addr', 'show'],
                            capture_output=True, text=True,
                            check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    return []
  found = []
  for line in output.splitlines():
    words = line.split()
    address = words[words.index('inet') + 1].split('/')[0]
    if not ipaddress.ip_address(address).is_loopback:
      found.append(address)
  return found


def connect(host: str, port: int, timeout: float = 3.0) -> str:
  """'open', or why not ('ConnectionRefusedError', 'timeout', ...)."""
  try:
    with socket.create_connection((host, port), timeout=timeout):
      return 'open'
  except socket.timeout:
    return 'timeout'
  except OSError as e:
    return type(e).__name__


def _status_line(data: bytes) -> Optional[int]:
  if data.startswith(b'HTTP/'):
    try:
      return int(data.split(b' ', 2)[1])
    except (IndexError, ValueError):
      return None
  return None


def _plain_http(host: str, port: int, timeout: float) -> Optional[int]:
  """The HTTP status a plaintext GET gets (None: no HTTP answer)."""
  try:
    with socket.create_connection((host, port), timeout=timeout) as s:
      s.sendall(b'GET /healthz HTTP/1.1\r\nHost: probe\r\n'
                b'Connection: close\r\n\r\n')
      return _status_line(s.recv(4096))
  except OSError:
    return None


def _tls_http_without_cert(host: str, port: int,
                           timeout: float) -> tuple[bool, Optional[int]]:
  """(handshake done, HTTP status) for TLS with no client certificate."""
  context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
  context.check_hostname = False
  context.verify_mode = ssl.CERT_NONE  # We attack; we do not verify.
  try:
    with socket.create_connection((host, port), timeout=timeout) as raw:
      with context.wrap_socket(raw) as s:
        s.sendall(b'GET /control/manifest HTTP/1.1\r\nHost: probe\r\n'
                  b'Connection: close\r\n\r\n')
        data = b''
        while len(data) < 4096:
          chunk = s.recv(4096)
          if not chunk:
            break
          data += chunk
        return True, _status_line(data)
  except (OSError, ssl.SSLError):
    return False, None


def _grpc_code(channel: grpc.Channel, timeout: float) -> grpc.StatusCode:
  call = channel.unary_unary('/tff_edge.EdgeServer/Describe')
  try:
    call(b'', timeout=timeout)
    return grpc.StatusCode.OK
  except grpc.RpcError as e:
    return e.code()
  finally:
    channel.close()


def attack(host: str, port: int, ca_pem: Optional[bytes] = None,
           server_name: Optional[str] = None,
           timeout: float = 5.0) -> Verdict:
  """Tries every way in without a client certificate.

  Args:
    host: Address to dial (a non-loopback address of the node).
    port: The listening port.
    ca_pem: Our CA, so that the TLS gRPC attempt gets past server
      verification and is refused (or not) by the server itself.
    server_name: The name in the server's certificate.
    timeout: Seconds per attempt.

  Returns:
    The verdict; `findings` lists every attempt that got through.
  """
  if connect(host, port, timeout) != 'open':
    return Verdict(reachable=False)
  verdict = Verdict(reachable=True)
  status = _plain_http(host, port, timeout)
  if status is not None and status not in _REFUSED_STATUSES:
    verdict.findings.append(f'plaintext HTTP answered {status}')
  target = f'{host}:{port}'
  code = _grpc_code(grpc.insecure_channel(target), timeout)
  if code != grpc.StatusCode.UNAVAILABLE:
    # UNIMPLEMENTED, INVALID_ARGUMENT, ...: a gRPC server read our call.
    verdict.findings.append(f'plaintext gRPC reached a server ({code.name})')
  handshake, status = _tls_http_without_cert(host, port, timeout)
  if handshake and status is not None and status not in _REFUSED_STATUSES:
    verdict.findings.append(f'TLS without a client certificate: HTTP {status}')
  if ca_pem is not None:
    options = ([('grpc.ssl_target_name_override', server_name)]
               if server_name else [])
    code = _grpc_code(grpc.secure_channel(
        target, grpc.ssl_channel_credentials(root_certificates=ca_pem),
        options), timeout)
    if code not in (grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.UNAUTHENTICATED):
      verdict.findings.append(
          f'gRPC over TLS without a client certificate: {code.name}')
  return verdict
