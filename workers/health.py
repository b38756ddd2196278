"""A tiny HTTP endpoint for liveness, readiness, status and control calls."""

from __future__ import annotations

import http.server
import json
import threading
import urllib.error
import urllib.request
from typing import Any, Callable, Optional

# path -> () -> (HTTP status, JSON-able body)
Route = Callable[[], tuple[int, Any]]
# path -> (parsed JSON request body) -> (HTTP status, JSON-able body)
PostRoute = Callable[[Any], tuple[int, Any]]
_MAX_POST_BYTES = 64 << 20


class HealthServer:
  """Serves GET (and POST) routes as JSON on `port`, in a daemon thread."""

  def __init__(self, port: int, routes: dict[str, Route], host: str = '',
               post_routes: Optional[dict[str, PostRoute]] = None):
    routes = dict(routes)
    post_routes = dict(post_routes or {})

    class Handler(http.server.BaseHTTPRequestHandler):

      def do_GET(self):  # pylint: disable=invalid-name
        route = routes.get(self.path.split('?', 1)[0])
        if route is None:
          status, body = 404, {'error': f'no route {self.path}',
                               'routes': sorted(routes)}
        else:
          try:
            status, body = route()
          except Exception as e:  # pylint: disable=broad-except
            status, body = 500, {'error': str(e)}
        self._reply(status, body)

      def do_POST(self):  # pylint: disable=invalid-name
        route = post_routes.get(self.path.split('?', 1)[0])
        length = int(self.headers.get('Content-Length') or 0)
        if route is None:
          status, body = 404, {'error': f'no POST route {self.path}'}
        elif length > _MAX_POST_BYTES:
          status, body = 413, {'error': f'body over {_MAX_POST_BYTES} bytes'}
        else:
          try:
            request = json.loads(self.rfile.read(length) or b'null')
            status, body = route(request)
          except ValueError as e:
            status, body = 400, {'error': str(e)}
          except Exception as e:  # pylint: disable=broad-except
            status, body = 500, {'error': str(e)}
        self._reply(status, body)

      def _reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode('utf-8')
        self.send_response(status)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)

      def log_message(self, *args):  # Probes every few seconds: keep quiet.
        del args

    self._server = http.server.ThreadingHTTPServer((host, port), Handler)
    self._server.daemon_threads = True
    self.port = self._server.server_address[1]
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

