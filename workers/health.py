"""A tiny HTTP endpoint for liveness, readiness, status and control calls.

Hostile input is bounded: a request must arrive whole within
REQUEST_SECONDS (a slow-loris client is cut off), a POST body must have a
Content-Length of decimal digits no larger than MAX_POST_BYTES (negative,
signed, non-numeric or repeated lengths are refused before anything is
read), and at most MAX_CONNECTIONS requests are served at once (more are
answered 503 and closed, not queued on new threads).

Pods whose health port listens on loopback only are probed by
`python -m workers.health_probe` (k8s/base).
"""

from __future__ import annotations

import http.server
import json
import re
import socket
import threading
import urllib.error
import urllib.request
from typing import Any, Callable, Optional

# path -> () -> (HTTP status, JSON-able body)
Route = Callable[[], tuple[int, Any]]
# path -> (parsed JSON request body) -> (HTTP status, JSON-able body)
PostRoute = Callable[[Any], tuple[int, Any]]
MAX_POST_BYTES = 64 << 20
MAX_CONNECTIONS = 16
# Whole request (headers and body): a control call's body is at most a few
# MB, sent over loopback or from nginx, which has buffered it already.
REQUEST_SECONDS = 30.0
# Each read or write; a stalled peer is dropped this soon.
SOCKET_SECONDS = 10.0
_DIGITS = re.compile(r'[0-9]{1,20}')


class _BoundedServer(http.server.ThreadingHTTPServer):
  """One thread per request, at most `limit` at once; the rest get 503."""

  daemon_threads = True
  request_queue_size = 64

  def __init__(self, address, handler, limit: int):
    self._slots = threading.BoundedSemaphore(limit)
    super().__init__(address, handler)

  def process_request(self, request, client_address):
    if not self._slots.acquire(blocking=False):
      try:
        request.settimeout(1.0)
        request.sendall(b'HTTP/1.1 503 Service Unavailable\r\n'
                        b'Content-Length: 0\r\nConnection: close\r\n\r\n')
      except OSError:
        pass
      self.shutdown_request(request)
      return
    try:
      super().process_request(request, client_address)
    except BaseException:
      self._slots.release()
      raise

  def process_request_thread(self, request, client_address):
    try:
      super().process_request_thread(request, client_address)
    finally:
      self._slots.release()


def _cut(request: socket.socket) -> None:
  try:
    request.shutdown(socket.SHUT_RDWR)
  except OSError:
    pass


def content_length(header_values: list[str]) -> int:
  """The body length a request declares; ValueError says what is wrong."""
  if not header_values:
    return 0
  if len(set(v.strip() for v in header_values)) != 1:
    raise ValueError('conflicting Content-Length headers')
  value = header_values[0].strip()
  if not _DIGITS.fullmatch(value):
    raise ValueError(f'Content-Length {value[:40]!r} is not a non-negative '
                     'decimal integer')
  return int(value)


class HealthServer:
  """Serves GET (and POST) routes as JSON on `port`, in daemon threads."""

  def __init__(self, port: int, routes: dict[str, Route], host: str = '',
               post_routes: Optional[dict[str, PostRoute]] = None,
               max_connections: int = MAX_CONNECTIONS,
               request_seconds: float = REQUEST_SECONDS,
               socket_seconds: float = SOCKET_SECONDS):
    routes = dict(routes)
    post_routes = dict(post_routes or {})

    class Handler(http.server.BaseHTTPRequestHandler):
      timeout = socket_seconds  # Of every read and write.
      protocol_version = 'HTTP/1.0'  # One request per connection.

      def setup(self):
        super().setup()
        # Cuts off a request not received whole within request_seconds,
        # even if each byte comes within the socket timeout (slow loris).
        # Stopped once it is read: a route may compute for longer.
        self._deadline = threading.Timer(request_seconds, _cut,
                                         args=(self.request,))
        self._deadline.daemon = True
        self._deadline.start()

      def finish(self):
        self._deadline.cancel()
        super().finish()

      def do_GET(self):  # pylint: disable=invalid-name
        self._deadline.cancel()
        route = routes.get(self.path.split('?', 1)[0])
        if route is None:
          status, body = 404, {'error': f'no route {self.path[:200]}',
                               'routes': sorted(routes)}
        else:
          try:
            status, body = route()
          except Exception as e:  # pylint: disable=broad-except
            status, body = 500, {'error': str(e)}
        self._reply(status, body)

      def do_POST(self):  # pylint: disable=invalid-name
        route = post_routes.get(self.path.split('?', 1)[0])
        if route is None:
          self._reply(404, {'error': f'no POST route {self.path[:200]}'})
          return
        try:
          length = content_length(self.headers.get_all('Content-Length', []))
        except ValueError as e:
          self._reply(400, {'error': str(e)})
          return
        if length > MAX_POST_BYTES:
          self._reply(413, {'error': f'body of {length} bytes is over the '
                                     f'limit of {MAX_POST_BYTES}'})
          return
        try:
          data = self.rfile.read(length)
          if len(data) != length:
            raise ValueError(f'body ended after {len(data)} of {length} '
                             'bytes')
          request = json.loads(data or b'null')
        except (ValueError, OSError) as e:
          self._reply(400, {'error': str(e)})
          return
        self._deadline.cancel()
        try:
          status, body = route(request)
        except ValueError as e:
          status, body = 400, {'error': str(e)}
        except Exception as e:  # pylint: disable=broad-except
          status, body = 500, {'error': str(e)}
        self._reply(status, body)

      def _reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode('utf-8')
        try:
          self.send_response(status)
          self.send_header('Content-Type', 'application/json')
          self.send_header('Content-Length', str(len(data)))
          self.end_headers()
          self.wfile.write(data)
        except OSError:
          pass  # The caller left.

      def log_message(self, *args):  # Probes every few seconds: keep quiet.
        del args

    self._server = _BoundedServer((host, port), Handler, max_connections)
    self.port = self._server.server_address[1]
    self.host = host
    self._thread = threading.Thread(target=self._server.serve_forever,
                                    name='health', daemon=True)

  def start(self) -> 'HealthServer':
    self._thread.start()
    return self

  def stop(self) -> None:
    self._server.shutdown()
    self._server.server_close()


def get_json(address: str, path: str, timeout: float = 5.0) -> tuple[int, Any]:
  """GETs http://address/path; returns (status, parsed body)."""
  try:
    with urllib.request.urlopen(f'http://{address}{path}',
                                timeout=timeout) as response:
      return response.status, json.loads(response.read())
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read() or b'null')
