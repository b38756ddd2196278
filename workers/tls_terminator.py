"""Mutual TLS in front of a pod's executor service: nginx as a child process.

TFF's `worker_binary` speaks only insecure gRPC, so an edge pod binds it to
loopback and lets nginx take the pod's port:

    client --TLS (client cert from our CA)--> nginx :port
        /            -> grpc_pass  grpc://<grpc_upstream>   (the executor)
        /control/... -> proxy_pass http://<http_upstream>   (optional)

A caller without a certificate from our CA never reaches the upstreams: gRPC
callers get UNAUTHENTICATED, HTTP callers 403 (nginx's own 495/496 errors,
rewritten so each kind of client can read them). Nor does a caller whose
certificate is revoked (the CA's ca.crl, `ssl_crl`) or expired, or whose role
may not call this pod: the role is the subject's OU, which only our signer
writes (workers.certs), matched whole against `CN=<name>,OU=<role>,O=tff-edge`
(nginx 1.22 exposes no SAN variable); a wrong role gets PERMISSION_DENIED /
HTTP 403.

reload() re-reads certificates, key, CA and CRL (SIGHUP: new connections use
them, open ones finish on the old ones), so rotation fails no call.

nginx runs with `master_process off`: one process, which dies with us through
PR_SET_PDEATHSIG (worker_process.die_with_parent). With a master, the kernel
would kill only the master; its workers outlive it and keep the port. All
paths nginx writes (pid, temp files) are in run_dir and its log goes to
stderr, so it runs as non-root and on a read-only root filesystem.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Optional

import portpicker

from data_prep.errors import UserError
from workers import tls as tls_lib
from workers import worker_process

# Debian puts nginx in /usr/sbin, which a non-root PATH often lacks.
_NGINX_FALLBACKS = ('/usr/sbin/nginx', '/usr/local/sbin/nginx')
_UPSTREAM = re.compile(r'(\[[0-9a-fA-F:.]+\]|[-A-Za-z0-9.]+):\d{1,5}')
# Characters that would end or re-interpret a quoted nginx string.
_UNSAFE_PATH = re.compile(r'["\\$;{}\s]')
# Rounds can compute for many minutes before the executor answers.
_LONG_TIMEOUT = '3600s'
_STDERR_LINES = 40
# What a caller without a valid client certificate is told.
REJECTED = ('client certificate missing, expired, revoked or not signed by '
            'the cluster CA')
FORBIDDEN = 'the role of the caller may not call this pod'
_ROLE = re.compile(r'[a-z][-a-z]*')

_CONFIG = """\
# Written by workers.tls_terminator at every start; edits are lost.
daemon off;
master_process off;  # Dies with its parent; see workers/tls_terminator.py.
worker_processes 1;
pid "{pid_path}";  # Written once the port is bound.
error_log stderr warn;

events {{
  worker_connections 1024;
}}

http {{
  access_log off;  # Every gRPC call would be a line.

  # Callers whose certificate carries an admitted role (see module doc).
  map $ssl_client_s_dn $tff_caller_allowed {{
    default 0;
{allowed_roles}  }}
  client_body_temp_path "{run_dir}/client_body";
  proxy_temp_path "{run_dir}/proxy";
  fastcgi_temp_path "{run_dir}/fastcgi";
  uwsgi_temp_path "{run_dir}/uwsgi";
  scgi_temp_path "{run_dir}/scgi";

  upstream executor {{
    server {grpc_upstream};
    keepalive 16;  # Reuses loopback connections between calls.
    keepalive_timeout {long_timeout};
  }}
{control_upstream}
  server {{
    # reuseport: reload() runs the next nginx beside this one.
    listen {listen} ssl http2 reuseport;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_certificate "{cert}";
    ssl_certificate_key "{key}";
    ssl_client_certificate "{ca}";
    ssl_verify_client on;
{crl}
    # 495: bad, expired or revoked client certificate, 496: none. Raised
    # before any location; a certified caller of the wrong role gets 403.
    error_page 495 496 = @client_cert_rejected;
    error_page 403 = @caller_forbidden;
    if ($tff_caller_allowed = 0) {{
      return 403;
    }}

    # Messages can be hundreds of MB (the same cap as every gRPC channel:
    # worker_process.GRPC_MAX_MESSAGE_MB) and rounds take minutes; channels
    # stay open between rounds.
    client_max_body_size {max_body_mb}m;
    client_body_buffer_size 1m;
    client_body_timeout {long_timeout};
    send_timeout {long_timeout};
    keepalive_timeout {long_timeout};
    keepalive_requests 1000000;

    location / {{
      grpc_pass grpc://executor;
      grpc_read_timeout {long_timeout};
      grpc_send_timeout {long_timeout};
      grpc_socket_keepalive on;
      # Holds the response headers and trailers: long error messages fit.
      grpc_buffer_size 1m;
      error_page 502 504 = @executor_unavailable;
    }}
{control_location}
    location @client_cert_rejected {{
      if ($content_type ~ "^application/grpc") {{
        add_header grpc-status 16 always;  # UNAUTHENTICATED
        add_header grpc-message "{rejected}" always;
        return 204;
      }}
      default_type application/json;
      return 403 '{rejected_json}';
    }}

    location @caller_forbidden {{
      if ($content_type ~ "^application/grpc") {{
        add_header grpc-status 7 always;  # PERMISSION_DENIED
        add_header grpc-message "{forbidden}" always;
        return 204;
      }}
      default_type application/json;
      return 403 '{forbidden_json}';
    }}

    location @executor_unavailable {{
      add_header grpc-status 14 always;  # UNAVAILABLE
      add_header grpc-message "{executor_down}" always;
      return 204;
    }}
  }}
}}
"""

_CONTROL_UPSTREAM = """
  upstream control {{
    server {http_upstream};
    keepalive 4;
  }}
"""

_CONTROL_LOCATION = """
    location /control/ {{
      proxy_pass http://control;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      # Lets the control endpoint see which node called.
      proxy_set_header X-Client-Subject $ssl_client_s_dn;
      proxy_request_buffering off;
      proxy_buffering off;
      error_page 502 504 = @control_unavailable;
    }}

    location @control_unavailable {{
      default_type application/json;
      return 502 '{control_down_json}';
    }}
"""


class TerminatorError(UserError):
  """nginx is missing, its config is bad or it did not come up."""


def find_nginx() -> str:
  """The nginx binary, or TerminatorError saying how to install it."""
  for candidate in (shutil.which('nginx'), *_NGINX_FALLBACKS):
    if candidate and os.access(candidate, os.X_OK):
      return candidate
  raise TerminatorError(
      'nginx is not installed (no nginx on PATH or in /usr/sbin); run '
      './setup.sh, which installs the Debian package nginx')


def _check_upstream(flag: str, address: str) -> str:
  if not _UPSTREAM.fullmatch(address):
    raise TerminatorError(f'{flag} {address!r} is not host:port')
  return address


def _check_path(role: str, path: str) -> str:
  path = os.path.abspath(path)
  if _UNSAFE_PATH.search(path):
    raise TerminatorError(
        f'the {role} path {path!r} has a quote, backslash, $, ;, brace or '
        'space, which nginx would misread; move it')
  return path


class NginxTerminator:
  """nginx on `listen_host:listen_port`: mutual TLS, then the upstreams."""

  def __init__(self, listen_port: int, tls: tls_lib.TlsFiles,
               grpc_upstream: str, http_upstream: Optional[str],
               run_dir: str, listen_host: str = '0.0.0.0',
               allowed_roles: tuple[str, ...] = tls_lib.CALLERS['edge-pod']):
    """Describes the terminator; start() runs it.

    Args:
      listen_port: The TLS port (0: pick a free one).
      tls: Our certificate and key and the CA that clients must chain to.
      grpc_upstream: host:port of the insecure gRPC server (loopback).
      http_upstream: host:port of a plain HTTP server for /control/, or None.
      run_dir: Directory for nginx.conf, the pid file and temp files.
      listen_host: Address to listen on.
      allowed_roles: Roles whose certificates may call (workers.certs).
    """
    for role in allowed_roles:
      if not _ROLE.fullmatch(role):
        raise TerminatorError(f'role {role!r} is not a role name')
    self._allowed_roles = tuple(allowed_roles)
    self.port = listen_port or portpicker.pick_unused_port()
    self.host = listen_host
    self._tls = tls
    self._grpc_upstream = _check_upstream('grpc_upstream', grpc_upstream)
    self._http_upstream = (None if http_upstream is None else
                           _check_upstream('http_upstream', http_upstream))
    self._run_dir = _check_path('run_dir', run_dir)
    self._process: Optional[subprocess.Popen] = None
    self._stderr: collections.deque[str] = collections.deque(
        maxlen=_STDERR_LINES)
    self._readers: list[threading.Thread] = []
    self._draining: list[subprocess.Popen] = []  # Old ones, after reload().
    self._generation = 0
    self.reloads = 0

  @property
  def config_path(self) -> str:
    return os.path.join(self._run_dir, 'nginx.conf')

  @property
  def target(self) -> str:
    """host:port to dial on this machine."""
    return f'{self._connect_host()}:{self.port}'

  @property
  def pid(self) -> Optional[int]:
    return self._process.pid if self._process else None

  def _connect_host(self) -> str:
    if self.host in ('0.0.0.0', ''):
      return '127.0.0.1'
    if self.host == '::':
      return '[::1]'
    return f'[{self.host}]' if ':' in self.host else self.host

  def config(self) -> str:
    """The nginx.conf text."""
    listen = str(self.port)  # All addresses.
    if self.host:
      host = f'[{self.host}]' if ':' in self.host else self.host
      listen = f'{host}:{self.port}'
    control_upstream = control_location = ''
    if self._http_upstream:
      control_upstream = _CONTROL_UPSTREAM.format(
          http_upstream=self._http_upstream)
      control_location = _CONTROL_LOCATION.format(
          control_down_json=json.dumps({'error': (
              f'TLS terminator: no control endpoint answers at '
              f'{self._http_upstream}')}))
    allowed = ''.join(
        f'    "~^CN=[a-z0-9]([-a-z0-9]{{0,61}}[a-z0-9])?,OU={role},O=tff-edge$" 1;\n'
        for role in self._allowed_roles)
    crl = ''
    if self._tls.crl and os.path.exists(self._tls.crl):
      crl = f'    ssl_crl "{_check_path("CRL", self._tls.crl)}";\n'
    return _CONFIG.format(
        allowed_roles=allowed, crl=crl, pid_path=self._pid_path,
        max_body_mb=worker_process.GRPC_MAX_MESSAGE_MB,
        forbidden=f'TLS terminator: {FORBIDDEN}',
        forbidden_json=json.dumps({'error': FORBIDDEN}),
        run_dir=self._run_dir, listen=listen,
        grpc_upstream=self._grpc_upstream, long_timeout=_LONG_TIMEOUT,
        ca=_check_path('CA', self._tls.ca),
        cert=_check_path('certificate', self._tls.cert),
        key=_check_path('key', self._tls.key),
        control_upstream=control_upstream, control_location=control_location,
        rejected=f'TLS terminator: {REJECTED}',
        rejected_json=json.dumps({'error': REJECTED}),
        executor_down=('TLS terminator: no executor service answers at '
                       f'{self._grpc_upstream}'))

  def start(self, timeout: float = 10.0) -> 'NginxTerminator':
    """Starts nginx and waits until the port accepts connections.

    Call it from the main thread: nginx is killed when the thread that
    started it exits (see worker_process.die_with_parent).

    Raises:
      TerminatorError: nginx is missing, exited (its stderr is in the
        message: port in use, bad certificate, ...) or did not listen in time.
      tls_lib.TlsError: The certificate files are missing or do not fit.
    """
    if self.alive():
      raise TerminatorError(f'nginx for port {self.port} is already running '
                            f'(pid {self.pid}); stop() it first')
    self._tls.validate()  # Names the bad file; nginx would only say "emerg".
    self._stderr.clear()
    self._process = self._launch(timeout)
    return self

  def _launch(self, timeout: float) -> subprocess.Popen:
    """Writes the config, runs one nginx on it, waits until it listens."""
    nginx = find_nginx()
    os.makedirs(self._run_dir, exist_ok=True)
    self._generation += 1
    with open(self.config_path + '.tmp', 'w', encoding='utf-8') as f:
      f.write(self.config())
    os.replace(self.config_path + '.tmp', self.config_path)
    with contextlib.suppress(FileNotFoundError):
      os.remove(self._pid_path)
    # -e: before reading the config, log to stderr, not /var/log/nginx.
    process = subprocess.Popen(
        [nginx, '-e', 'stderr', '-p', self._run_dir, '-c', self.config_path],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, preexec_fn=worker_process.die_with_parent)
    reader = threading.Thread(target=self._forward_stderr,
                              args=(process.stderr,), name='nginx-stderr',
                              daemon=True)
    reader.start()
    self._readers.append(reader)
    deadline = time.monotonic() + timeout
    while not self._ready(process):
      if process.poll() is not None:
        reader.join(timeout=1)
        raise TerminatorError(
            f'nginx for port {self.port} exited with status '
            f'{process.returncode}: {self._stderr_text()} '
            f'(config: {self.config_path})')
      if time.monotonic() > deadline:
        worker_process.terminate(process, 1.0)
        raise TerminatorError(
            f'nginx not listening on port {self.port} after {timeout:.0f}s: '
            f'{self._stderr_text()}')
      time.sleep(0.05)
    return process

  def _forward_stderr(self, pipe) -> None:
    # Kept for start()'s error message and passed on to our stderr (pod log).
    for line in iter(pipe.readline, b''):
      text = line.decode('utf-8', 'replace').rstrip()
      self._stderr.append(text)
      print(f'[nginx :{self.port}] {text}', file=sys.stderr, flush=True)
    pipe.close()

  def _stderr_text(self) -> str:
    return ' | '.join(self._stderr) or '(no output)'

  @property
  def _pid_path(self) -> str:
    # One per generation: the next nginx's file tells it is listening
    # while the previous one still runs (reload()).
    return os.path.join(self._run_dir, f'nginx.{self._generation}.pid')

  def _ready(self, process: subprocess.Popen) -> bool:
    # nginx writes its pid file only after binding the port: a port that
    # accepts before that is someone else's, and nginx is about to fail.
    try:
      with open(self._pid_path, encoding='utf-8') as f:
        if f.read().strip() != str(process.pid):
          return False
    except FileNotFoundError:
      return False
    try:
      with socket.create_connection(
          (self._connect_host().strip('[]'), self.port), timeout=0.2):
        return True
    except OSError:
      return False

  def reload(self, timeout: float = 10.0) -> None:
    """Re-reads the TLS files and config without failing a call.

    A second nginx starts on the same port (both listen with SO_REUSEPORT)
    with the new files; once it listens, the old one is told to finish
    gracefully (SIGQUIT): it stops accepting, sends GOAWAY on idle HTTP/2
    connections (gRPC clients reconnect, to the new one) and exits when its
    running calls are done. nginx's own SIGHUP reload does not work with
    `master_process off` (it ran out of connections here). Call it from the
    main thread, like start().

    Raises:
      TerminatorError: nginx is not running, or the new one did not start
        (the old one keeps serving).
      tls_lib.TlsError: The new files do not fit together, or the CRL is
        bad or expired (checked before anything changes).
    """
    if not self.alive():
      raise TerminatorError(f'nginx for port {self.port} is not running')
    self._tls.validate()
    tls_lib.load_crl(self._tls)  # An expired CRL would refuse everyone.
    old = self._process
    self._process = self._launch(timeout)
    old.send_signal(signal.SIGQUIT)
    self._draining = [p for p in self._draining if p.poll() is None] + [old]
    self.reloads += 1

  def alive(self) -> bool:
    return self._process is not None and self._process.poll() is None

  def stop(self, grace: float = 5.0) -> None:
    """SIGTERM (fast shutdown: open calls fail), SIGKILL after `grace`."""
    for process in [*self._draining, self._process]:
      worker_process.terminate(process, grace)
    self._draining = []
    for reader in self._readers:
      reader.join(timeout=1)
    self._readers = []

  def __enter__(self) -> 'NginxTerminator':
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()
