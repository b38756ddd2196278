import json
import socket
import subprocess
import sys
import threading
import time

from absl.testing import absltest

from workers import health


def _raw(port: int, data: bytes, timeout: float = 10.0) -> bytes:
  """Sends `data` as is and returns all the server sends back."""
  with socket.create_connection(('127.0.0.1', port), timeout=timeout) as s:
    s.sendall(data)
    reply = b''
    while True:
      try:
        chunk = s.recv(65536)
      except ConnectionResetError:
        break
      if not chunk:
        break
      reply += chunk
  return reply


def _status(reply: bytes) -> int:
  return int(reply.split(b' ', 2)[1]) if reply.startswith(b'HTTP/') else 0


def _post(port: int, length_header: str, body: bytes = b'') -> bytes:
  return _raw(port, b'POST /echo HTTP/1.1\r\nHost: x\r\n' +
              length_header.encode() + b'\r\n\r\n' + body)


class HealthServerTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.seen = []
    self.release = threading.Event()

    def echo(request):
      self.seen.append(request)
      return 200, {'echo': request}

    def slow():
      self.release.wait(30)
      return 200, {'slow': True}

    def compute(request):
      time.sleep(3)  # Longer than request_seconds: the route may take it.
      return 200, {'computed': request}

    self.server = health.HealthServer(
        0, {'/healthz': lambda: (200, {'ok': True}), '/slow': slow},
        host='127.0.0.1', post_routes={'/echo': echo, '/compute': compute},
        max_connections=2,
        request_seconds=2.0, socket_seconds=1.0).start()
    self.addCleanup(self.server.stop)
    self.addCleanup(self.release.set)
    self.port = self.server.port

  def test_get_and_post(self):
    self.assertEqual(health.get_json(f'127.0.0.1:{self.port}', '/healthz'),
                     (200, {'ok': True}))
    body = json.dumps({'a': 1}).encode()
    reply = _post(self.port, f'Content-Length: {len(body)}', body)
    self.assertEqual(_status(reply), 200, reply)
    self.assertEqual(self.seen, [{'a': 1}])

  def test_negative_length_is_refused_before_reading(self):
    # Before: int('-1') passed the "> 64 MiB" check and read to EOF.
    reply = _post(self.port, 'Content-Length: -1', b'x' * (1 << 20))
    self.assertEqual(_status(reply), 400, reply[:200])
    self.assertIn(b'non-negative decimal integer', reply)
    self.assertEqual(self.seen, [])

  def test_non_integer_and_conflicting_lengths_are_refused(self):
    for header in ('Content-Length: 1e3', 'Content-Length: +5',
                   'Content-Length: 0x10', 'Content-Length: 5 5',
                   'Content-Length: 2\r\nContent-Length: 3'):
      with self.subTest(header=header):
        reply = _post(self.port, header, b'{}')
        self.assertEqual(_status(reply), 400, reply[:200])
    self.assertEqual(self.seen, [])

  def test_huge_length_is_refused_without_reading_the_body(self):
    start = time.monotonic()
    reply = _post(self.port, f'Content-Length: {70 << 20}', b'{}')
    self.assertEqual(_status(reply), 413, reply[:200])
    self.assertLess(time.monotonic() - start, 5)
    reply = _post(self.port, 'Content-Length: ' + '9' * 30, b'{}')
    self.assertEqual(_status(reply), 400, reply[:200])

  def test_truncated_body_is_an_error_not_a_hang(self):
    start = time.monotonic()
    reply = _post(self.port, 'Content-Length: 100', b'{"a": 1}')
    self.assertIn(_status(reply), (0, 400), reply[:200])
    self.assertLess(time.monotonic() - start, 5)
    self.assertEqual(self.seen, [])

  def test_slow_loris_is_cut_off(self):
    # One header byte every 0.5 s: each read is within the socket timeout,
    # but the whole request takes too long.
    with socket.create_connection(('127.0.0.1', self.port), timeout=10) as s:
      start = time.monotonic()
      closed = False
      for byte in b'GET /healthz HTTP/1.1\r\nX-Slow: ' + b'a' * 100:
        try:
          s.sendall(bytes([byte]))
        except OSError:
          closed = True
          break
        time.sleep(0.5)
        if time.monotonic() - start > 8:
          break
      if not closed:
        s.settimeout(5)
        try:
          closed = s.recv(100) == b''
        except OSError:
          closed = True
    self.assertTrue(closed, 'slow client was never cut off')
    self.assertLess(time.monotonic() - start, 8)
    # Meanwhile and after, others are served.
    self.assertEqual(health.get_json(f'127.0.0.1:{self.port}', '/healthz')[0],
                     200)

  def test_a_route_may_compute_longer_than_the_request_deadline(self):
    reply = _raw(self.port, b'POST /compute HTTP/1.1\r\nHost: x\r\n'
                 b'Content-Length: 2\r\n\r\n{}')
    self.assertEqual(_status(reply), 200, reply)

  def test_connections_beyond_the_limit_get_503_not_a_thread(self):
    threads = [threading.Thread(target=_raw, args=(
        self.port, b'GET /slow HTTP/1.1\r\nHost: x\r\n\r\n'))
               for _ in range(2)]
    for thread in threads:
      thread.start()
    time.sleep(0.5)
    reply = _raw(self.port, b'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n')
    self.assertEqual(_status(reply), 503, reply)
    self.release.set()
    for thread in threads:
      thread.join()
    self.assertEqual(health.get_json(f'127.0.0.1:{self.port}', '/healthz')[0],
                     200)


if __name__ == '__main__':
  absltest.main()
