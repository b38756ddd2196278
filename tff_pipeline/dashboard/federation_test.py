"""Tests for tff_pipeline.dashboard.federation against real HTTP(S) servers.

The nodes here are the real health endpoint (workers.health) plus real TLS
servers that demand a client certificate of the cluster CA (Python's ssl
with certificates from workers.certs), standing where a pod's nginx
terminator and an edge server's gRPC port stand.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import ssl
import threading

from absl.testing import absltest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
import portpicker
import yaml

from tff_pipeline.dashboard import federation
from tff_pipeline.dashboard import runs as runs_lib
from workers import certs
from workers import health


def _server_context(cert_dir: str, node: str) -> ssl.SSLContext:
  context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
  context.load_cert_chain(os.path.join(cert_dir, f'{node}.crt'),
                          os.path.join(cert_dir, f'{node}.key'))
  context.load_verify_locations(os.path.join(cert_dir, 'ca.crt'))
  context.verify_mode = ssl.CERT_REQUIRED  # Mutual TLS, as nginx does.
  return context


class _MtlsManifest:
  """HTTPS /control/manifest that only callers with a CA cert get."""

  def __init__(self, cert_dir: str, node: str, clients: int):

    class Handler(http.server.BaseHTTPRequestHandler):

      def do_GET(self):  # pylint: disable=invalid-name
        body = json.dumps({'pod': node, 'manifest': {
            'clients': [{'client_id': f'c{i}'} for i in range(clients)]}})
        self.send_response(200 if self.path == '/control/manifest' else 404)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

      def log_message(self, *args):
        del args

    self.server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    self.server.socket = _server_context(cert_dir, node).wrap_socket(
        self.server.socket, server_side=True)
    self.address = f'127.0.0.1:{self.server.server_address[1]}'
    threading.Thread(target=self.server.serve_forever, daemon=True).start()

  def stop(self):
    self.server.shutdown()
    self.server.server_close()


class _MtlsListener:
  """Completes mutual-TLS handshakes and hangs up (an edge server's port)."""

  def __init__(self, cert_dir: str, node: str):
    self._context = _server_context(cert_dir, node)
    self._context.set_alpn_protocols(['h2'])
    self._sock = socket.create_server(('127.0.0.1', 0))
    self.address = f'127.0.0.1:{self._sock.getsockname()[1]}'
    threading.Thread(target=self._serve, daemon=True).start()

  def _serve(self):
    while True:
      try:
        conn, _ = self._sock.accept()
      except OSError:
        return
      try:
        with self._context.wrap_socket(conn, server_side=True):
          pass
      except (OSError, ssl.SSLError):
        conn.close()

  def stop(self):
    self._sock.close()


def _der_sha256(cert_path: str) -> str:
  """The fingerprint computed from the file on disk, not by the code."""
  with open(cert_path, 'rb') as f:
    cert = x509.load_pem_x509_certificate(f.read())
  return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


class FederationTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path
    self.cert_dir = os.path.join(self.dir, 'certs')
    certs.write_bundle(self.cert_dir, ['coordinator', 'es-0', 'edge-0',
                                       'edge-1'])

  def _pod_health(self, name: str, clients: int, alive: bool = True):
    server = health.HealthServer(0, {
        '/healthz': lambda: (200, {'pod': name, 'executor_alive': alive,
                                   'restarts': 0 if alive else 2}),
        '/readyz': lambda: ((200 if alive else 503),
                            {'pod': name, 'ready': alive,
                             'clients': clients})}, host='127.0.0.1').start()
    self.addCleanup(server.stop)
    return f'127.0.0.1:{server.port}'

  def _topology(self, pods, server_health, server_address, tls=True) -> str:
    path = os.path.join(self.dir, 'topology.yaml')
    raw = {'edge_servers': [{'name': 'es-0', 'address': server_address,
                             'health': server_health, 'pods': pods}]}
    if tls:
      raw['tls_dir'] = self.cert_dir
    with open(path, 'w', encoding='utf-8') as f:
      yaml.safe_dump(raw, f)
    return path

  def test_up_down_and_tls_identities(self):
    pod0 = _MtlsManifest(self.cert_dir, 'edge-0', 4)
    self.addCleanup(pod0.stop)
    grpc_port = _MtlsListener(self.cert_dir, 'es-0')
    self.addCleanup(grpc_port.stop)
    server_health = health.HealthServer(
        0, {'/healthz': lambda: (200, {'edge_server': 'es-0'})},
        host='127.0.0.1').start()
    self.addCleanup(server_health.stop)
    dead = f'127.0.0.1:{portpicker.pick_unused_port()}'  # Nobody listens.
    path = self._topology(
        [{'name': 'edge-0', 'address': pod0.address,
          'health': self._pod_health('edge-0', 4)},
         {'name': 'edge-1', 'address': dead, 'health': dead}],
        f'127.0.0.1:{server_health.port}', grpc_port.address)
    snapshot = federation.Federation(path, timeout=2.0).snapshot()
    self.assertIsNone(snapshot['problem'])
    self.assertIsNone(snapshot['tls_problem'])
    self.assertTrue(snapshot['tls'])
    (server,) = snapshot['edge_servers']
    self.assertEqual(server['state'], 'up', server['problems'])
    self.assertEqual(server['identity']['subject'], 'es-0')
    self.assertEqual(server['identity']['sha256'],
                     _der_sha256(os.path.join(self.cert_dir, 'es-0.crt')))
    up, down = server['pods']
    self.assertEqual(up['state'], 'up', up['problems'])
    self.assertEqual(up['clients'], 4)
    self.assertEqual(up['identity']['subject'], 'edge-0')
    self.assertEqual(up['identity']['issuer'], 'tff-edge cluster CA')
    self.assertIn('127.0.0.1', up['identity']['sans'])
    self.assertEqual(up['identity']['sha256'],
                     _der_sha256(os.path.join(self.cert_dir, 'edge-0.crt')))
    self.assertEqual(down['state'], 'down')
    self.assertIn('connection refused', down['problems'][0])
    self.assertEqual(server['clients'], 4)  # Only what answered.
    self.assertEqual(snapshot['coordinator_identity']['subject'],
                     'coordinator')

  def test_a_pod_with_another_cas_certificate_is_degraded(self):
    other = os.path.join(self.dir, 'other')
    certs.write_bundle(other, ['edge-0'])
    impostor = _MtlsManifest(other, 'edge-0', 1)
    self.addCleanup(impostor.stop)
    path = self._topology(
        [{'name': 'edge-0', 'address': impostor.address,
          'health': self._pod_health('edge-0', 1)}],
        self._pod_health('es-0', 0), impostor.address)
    (server,) = federation.Federation(path).snapshot()['edge_servers']
    pod = server['pods'][0]
    self.assertEqual(pod['state'], 'degraded')
    self.assertIsNone(pod['identity'])
    self.assertIn('certificate not accepted', ' '.join(pod['problems']))

  def test_a_restarting_executor_is_degraded_without_tls(self):
    health_address = self._pod_health('edge-0', 3, alive=False)
    path = self._topology([{'name': 'edge-0', 'address': health_address,
                            'health': health_address}],
                          self._pod_health('es-0', 0), health_address,
                          tls=False)
    snapshot = federation.Federation(path).snapshot()
    self.assertFalse(snapshot['tls'])
    pod = snapshot['edge_servers'][0]['pods'][0]
    self.assertEqual(pod['state'], 'degraded')
    self.assertEqual(pod['restarts'], 2)
    self.assertIn('executor is not running', ' '.join(pod['problems']))

  def test_missing_or_bad_topology_is_reported(self):
    snapshot = federation.Federation(None).snapshot()
    self.assertIn('no --topology', snapshot['problem'])
    snapshot = federation.Federation('/nonexistent.yaml').snapshot()
    self.assertIn('no such file', snapshot['problem'])
    bad = os.path.join(self.dir, 'bad.yaml')
    with open(bad, 'w', encoding='utf-8') as f:
      f.write('edge_servers: 3\n')
    self.assertIn('edge_servers', federation.Federation(bad).snapshot()['problem'])

  def test_missing_own_certificate_is_reported_in_place(self):
    dead = f'127.0.0.1:{portpicker.pick_unused_port()}'
    path = self._topology([{'name': 'edge-0', 'address': dead,
                            'health': dead}], dead, dead)
    snapshot = federation.Federation(path, tls_name='dashboard').snapshot()
    self.assertIn("as 'dashboard'", snapshot['tls_problem'])
    self.assertIn('dashboard.crt', snapshot['tls_problem'])
    self.assertEqual(snapshot['edge_servers'][0]['state'], 'down')


class AnnotateTest(absltest.TestCase):

  def _snapshot(self):
    def node(name, role, state='up'):
      return {'name': name, 'role': role, 'state': state, 'problems': [],
              'clients': 3, 'identity': None}
    server = node('es-0', 'edge_server')
    server['pods'] = [node('edge-0', 'pod'), node('edge-1', 'pod', 'down')]
    return {'edge_servers': [server], 'coordinator_identity': None}

  def _run(self, rows, state='live'):
    return runs_lib.Run(name='r', path='/r', config={'rounds': 9},
                        summary=None, rows=rows, problems=[], state=state,
                        updated=0.0, version='v')

  def test_seconds_and_failures_per_node(self):
    rows = [
        {'round': 1, 'round_seconds': 5.0, 'clients': ['a', 'b', 'c'],
         'pod_seconds': {'edge-0': 2.0, 'edge-1': 3.0}, 'failures': []},
        {'round': 2, 'round_seconds': 4.0, 'clients': ['a', 'b'],
         'pod_seconds': {'edge-0': 1.5},
         'failures': [{'pod': 'edge-1', 'edge_server': 'es-0',
                       'kind': 'unavailable', 'error': 'refused'}]},
        {'round': 3, 'round_seconds': 4.5, 'clients': ['c'],
         'pod_seconds': {'edge-0': 1.25},
         'failures': [{'pod': 'edge-1', 'edge_server': 'es-0',
                       'kind': 'timeout', 'error': 'slow'},
                      {'edge_server': 'es-0', 'kind': 'unavailable',
                       'error': 'x'}]},
    ]
    out = federation.annotate(self._snapshot(), self._run(rows))
    server = out['edge_servers'][0]
    pod0, pod1 = server['pods']
    self.assertEqual((pod0['last_seconds'], pod0['last_seconds_round']),
                     (1.25, 3))
    self.assertEqual((pod1['last_seconds'], pod1['last_seconds_round']),
                     (3.0, 1))
    self.assertEqual(pod0['failures'], 0)
    self.assertEqual(pod1['failures'], 2)
    self.assertEqual(pod1['failures_last_round'], 1)
    self.assertEqual(pod1['last_failure'], {'round': 3, 'kind': 'timeout',
                                            'error': 'slow'})
    self.assertEqual(server['failures'], 1)  # Its own, not its pods'.
    self.assertEqual(server['last_seconds'], 1.25)  # Only edge-0 ran in 3.
    coordinator = out['coordinator']
    self.assertEqual(coordinator['state'], 'up')
    self.assertEqual((coordinator['round'], coordinator['rounds']), (3, 9))
    self.assertEqual(coordinator['sampled'], 1)
    self.assertEqual(coordinator['failures'], 3)
    self.assertEqual(coordinator['clients'], 3)  # Sum of what servers report.

  def test_a_stopped_run_marks_the_coordinator_down(self):
    out = federation.annotate(self._snapshot(), self._run([], 'stopped'))
    self.assertEqual(out['coordinator']['state'], 'down')
    self.assertIn('stopped before finishing',
                  out['coordinator']['problems'][0])
    out = federation.annotate(self._snapshot(), None)
    self.assertEqual(out['coordinator']['state'], 'idle')


class PickRunTest(absltest.TestCase):

  def test_prefers_remote_runs_on_this_topology(self):
    root = self.create_tempdir().full_path
    for name, config in (
        ('local', {'executor': 'local'}),
        ('other', {'executor': 'remote', 'topology': '/x/other.yaml'}),
        ('mine', {'executor': 'remote', 'topology': '/x/../x/mine.yaml'})):
      os.makedirs(os.path.join(root, name))
      with open(os.path.join(root, name, 'config.json'), 'w',
                encoding='utf-8') as f:
        json.dump(config, f)
    now = 2e9
    for i, name in enumerate(('mine', 'other', 'local')):  # local: newest
      os.utime(os.path.join(root, name, 'config.json'), (now + i, now + i))
    folder = runs_lib.RunsFolder(root)
    self.assertEqual(federation.pick_run(folder, '/x/mine.yaml').name, 'mine')
    self.assertEqual(federation.pick_run(folder, '/y.yaml').name, 'other')
    self.assertEqual(federation.pick_run(folder, None, 'local').name, 'local')
    self.assertIsNone(federation.pick_run(folder, None, 'nope'))


if __name__ == '__main__':
  absltest.main()
