"""The dashboard's command line (absl flags); `python -m tff_pipeline.dashboard`.

    python -m tff_pipeline.dashboard --runs=runs [--topology=topology.yaml] \
        [--port=8080] [--host=127.0.0.1]

Listens on loopback by default. `--host` with any other address exposes
it, and then it requires a token (--token_file, $TFF_DASHBOARD_TOKEN, or one
made up at start and printed in the URL) unless HTTPS with client
certificates is on (--https_cert, --https_key, --https_client_ca).
"""

from __future__ import annotations

import ipaddress
import logging as std_logging
import os
import secrets
import signal
import socket
import ssl
import sys
import threading
from typing import Optional

from absl import flags
from werkzeug import serving

from tff_pipeline.dashboard import app as app_lib
from data_prep.errors import UserError

TOKEN_ENV = 'TFF_DASHBOARD_TOKEN'

_RUNS = flags.DEFINE_string(
    'runs', 'runs', 'Folder of training runs (each an --output_dir of '
    'tff_pipeline.train), or one run folder.')
_TOPOLOGY = flags.DEFINE_string(
    'topology', '', 'Topology YAML of the cluster (workers/topology.py), for '
    'the federation page.')
_PORT = flags.DEFINE_integer('port', 8080, 'Port to listen on.')
_HOST = flags.DEFINE_string(
    'host', '127.0.0.1', 'Address to listen on. Anything but loopback needs '
    'a token or HTTPS client certificates (see --token_file).')
_TLS_DIR = flags.DEFINE_string(
    'tls_dir', '', "Certificates for checking the nodes over mutual TLS "
    "(default: the topology's tls_dir).")
_TLS_NAME = flags.DEFINE_string(
    'tls_name', 'coordinator', 'Which <name>.crt/.key of the TLS dir the '
    'dashboard presents to the nodes (make one with `python -m workers.certs '
    '--out_dir=<tls dir> --reuse_ca --nodes=dashboard`).')
_TOKEN_FILE = flags.DEFINE_string(
    'token_file', '', f'File holding the access token (else ${TOKEN_ENV}; '
    'else, when not on loopback, a new one printed at start).')
_HTTPS_CERT = flags.DEFINE_string('https_cert', '',
                                  'Serve HTTPS with this certificate (PEM).')
_HTTPS_KEY = flags.DEFINE_string('https_key', '', 'Its private key (PEM).')
_HTTPS_CLIENT_CA = flags.DEFINE_string(
    'https_client_ca', '', 'With --https_cert: require browser client '
    'certificates signed by this CA (then no token is needed).')
_POLL_SECONDS = flags.DEFINE_float('poll_seconds', 2.0,
                                   'How often the pages ask for news.')


def is_loopback(host: str) -> bool:
  if host == 'localhost':
    return True
  try:
    return ipaddress.ip_address(host.strip('[]')).is_loopback
  except ValueError:
    return False


def resolve_token(host: str, token_file: str, environ: dict[str, str],
                  client_certs: bool) -> tuple[Optional[str], bool]:
  """(token or None, whether it was made up here)."""
  if token_file:
    try:
      with open(token_file, encoding='utf-8') as f:
        token = f.read().strip()
    except OSError as e:
      raise UserError(f'--token_file={token_file}: {e.strerror}; write the '
                      'token into that file') from None
    if len(token) < 16:
      raise UserError(f'--token_file={token_file} holds {len(token)} '
                      'characters; use a token of at least 16 (e.g. `python3 '
                      '-c "import secrets; print(secrets.token_urlsafe())"`)')
    return token, False
  if environ.get(TOKEN_ENV):
    return environ[TOKEN_ENV], False
  if is_loopback(host) or client_certs:
    return None, False
  return secrets.token_urlsafe(24), True


def https_context(cert: str, key: str, client_ca: str
                  ) -> Optional[ssl.SSLContext]:
  """The server's TLS context (None: plain HTTP)."""
  if not (cert or key or client_ca):
    return None
  if not (cert and key):
    raise UserError('HTTPS needs both --https_cert and --https_key')
  context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
  context.minimum_version = ssl.TLSVersion.TLSv1_2
  try:
    context.load_cert_chain(cert, key)
    if client_ca:
      context.load_verify_locations(cafile=client_ca)
      context.verify_mode = ssl.CERT_REQUIRED
  except (OSError, ssl.SSLError) as e:
    raise UserError(f'--https_cert={cert} / --https_key={key} / '
                    f'--https_client_ca={client_ca}: {e}; pass readable PEM '
                    'files') from None
  return context


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    print(f'error: unexpected arguments: {" ".join(argv[1:])}',
          file=sys.stderr)
    return 2
  std_logging.getLogger('werkzeug').setLevel(std_logging.WARNING)
  host, port = _HOST.value, _PORT.value
  try:
    context = https_context(_HTTPS_CERT.value, _HTTPS_KEY.value,
                            _HTTPS_CLIENT_CA.value)
    token, made_up = resolve_token(host, _TOKEN_FILE.value, dict(os.environ),
                                   bool(_HTTPS_CLIENT_CA.value))
    app = app_lib.create_app(
        _RUNS.value, _TOPOLOGY.value or None, tls_dir=_TLS_DIR.value,
        tls_name=_TLS_NAME.value, token=token,
        loopback_only=is_loopback(host), poll_seconds=_POLL_SECONDS.value)
    # Bound here: werkzeug would print its own message and exit 1.
    try:
      listener = socket.create_server(
          (host.strip('[]'), port),
          family=socket.AF_INET6 if ':' in host else socket.AF_INET)
    except OSError as e:
      raise UserError(f'cannot listen on {host}:{port}: {e.strerror}; '
                      'choose another --port or --host') from None
    server = serving.make_server(host, port, app, threaded=True,
                                 ssl_context=context, fd=listener.fileno())
    listener.close()  # The server holds its own duplicate.
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  stop = threading.Event()  # Before the URL is out: a SIGTERM may follow.
  signal.signal(signal.SIGTERM, lambda *_: stop.set())
  signal.signal(signal.SIGINT, lambda *_: stop.set())
  scheme = 'https' if context else 'http'
  shown = f'[{host}]' if ':' in host else host
  url = f'{scheme}://{shown}:{server.port}/'
  if made_up:
    url += f'?token={token}'
  print(f'dashboard on {url} (runs: {os.path.abspath(_RUNS.value)}'
        + (f'; topology: {_TOPOLOGY.value}' if _TOPOLOGY.value else '')
        + ('; token required' if token else '')
        + ('; client certificates required' if _HTTPS_CLIENT_CA.value else '')
        + '). Ctrl-C stops it.', file=sys.stderr, flush=True)
  thread = threading.Thread(target=server.serve_forever, name='http',
                            daemon=True)
  thread.start()
  while not stop.wait(0.5):  # Timed: an untimed wait can miss the signal.
    pass
  server.shutdown()
  server.server_close()
  return 0
