"""An edge server and a pod as processes, attacked and faulted.

Roles: only the coordinator's certificate may call an edge server, only an
edge server's may call a pod; revoked and expired certificates are refused;
a rotated certificate is served without a restart; a killed merge executor is
restarted and /healthz says so meanwhile.
"""

import datetime
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top
from absl.testing import absltest
from cryptography import x509
import grpc
import numpy as np
import portpicker

from data_prep import shards
from tests import testutil
from workers import certs
from workers import coordinator
from workers import health
from workers import liveness
from workers import tls
from workers import topology as topology_lib
from workers import wire

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DESCRIBE = '/tff_edge.EdgeServer/Describe'


def _shard_dir() -> str:
  per_client = {f'c{i}': {'x': np.full((3, 2), i, np.int64),
                          'y': np.arange(3, dtype=np.int64)} for i in range(2)}
  return shards.write_shards(
      os.path.join(tempfile.mkdtemp(), 'pod'), 'toy',
      {'x': {'kind': 'int64', 'shape': [2]}, 'y': {'kind': 'int64', 'shape': []}},
      per_client.items(), eval_examples=None, num_classes=3,
      partition={'method': 'natural'}, source={}, label_key='y').shard_dir


def _wait(address: str, path: str, process, timeout: float = 180) -> None:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if process.poll() is not None:
      raise AssertionError(f'{path} server exited: {process.stdout.read()}')
    try:
      status = health.get_json(address, path, 1.0)[0]
    except OSError:
      status = None
    if status == 200:
      break
    time.sleep(0.2)
  else:
    raise AssertionError(f'{address}{path} never answered 200')


def _served_serial(port: int, ca: str) -> int:
  context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
  context.load_verify_locations(ca)
  context.check_hostname = False
  with socket.create_connection(('127.0.0.1', port), timeout=5) as raw:
    with context.wrap_socket(raw) as conn:
      return x509.load_der_x509_certificate(
          conn.getpeercert(True)).serial_number


class EdgeServerTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp(prefix='edge-server-test-')
    cls.certs = os.path.join(cls.root, 'certs')
    certs.write_bundle(cls.certs, ['coordinator', 'edge-server-0',
                                   'edge-server-1', 'edge-0', 'edge-1'])
    env = dict(os.environ, PYTHONPATH=_REPO, TF_CPP_MIN_LOG_LEVEL='3')
    cls.pod_port, cls.pod_health = (portpicker.pick_unused_port(),
                                    portpicker.pick_unused_port())
    cls.pod = subprocess.Popen(
        [sys.executable, '-m', 'workers.edge_pod', '--name=edge-0',
         f'--data_dir={_shard_dir()}', f'--port={cls.pod_port}',
         f'--health_port={cls.pod_health}', f'--tls_dir={cls.certs}',
         f'--run_dir={cls.root}/run-edge-0'], cwd=_REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    cls.port, cls.health_port = (portpicker.pick_unused_port(),
                                 portpicker.pick_unused_port())
    topology = topology_lib.parse({'tls_dir': cls.certs, 'edge_servers': [{
        'name': 'edge-server-0', 'address': f'127.0.0.1:{cls.port}',
        'health': f'127.0.0.1:{cls.health_port}',
        'pods': [{'name': 'edge-0', 'address': f'127.0.0.1:{cls.pod_port}',
                  'health': f'127.0.0.1:{cls.pod_health}'}]}]}, 'test')
    path = os.path.join(cls.root, 'topology.yaml')
    topology_lib.save(topology, path)
    cls.spec = topology.edge_servers[0]
    cls.server = subprocess.Popen(
        [sys.executable, '-m', 'workers.edge_server', f'--topology={path}',
         '--name=edge-server-0'], cwd=_REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    _wait(f'127.0.0.1:{cls.pod_health}', '/readyz', cls.pod)
    _wait(f'127.0.0.1:{cls.health_port}', '/readyz', cls.server)

  @classmethod
  def tearDownClass(cls):
    for process in (cls.server, cls.pod):
      process.send_signal(signal.SIGTERM)
      try:
        process.communicate(timeout=30)
      except subprocess.TimeoutExpired:
        process.kill()
    super().tearDownClass()

  def _files(self, node: str, directory=None) -> tls.TlsFiles:
    return tls.TlsFiles.from_dir(directory or self.certs, node)

  def _describe(self, caller: tls.TlsFiles):
    channel = tls.grpc_channel(f'127.0.0.1:{self.port}', caller,
                               server_name='edge-server-0')
    try:
      return wire.unpack(channel.unary_unary(_DESCRIBE)(wire.pack({}),
                                                        timeout=30))[0]
    finally:
      channel.close()

  def _refusal(self, caller: tls.TlsFiles) -> grpc.StatusCode:
    with self.assertRaises(grpc.RpcError) as raised:
      self._describe(caller)
    return raised.exception.code()

  def test_only_the_coordinator_may_call_an_edge_server(self):
    header = self._describe(self._files('coordinator'))
    self.assertEqual([p['name'] for p in header['pods']], ['edge-0'])
    self.assertNotIn('error', header['pods'][0])  # It reached its pod.
    # A pod's certificate, another edge server's.
    for caller in ('edge-0', 'edge-server-1'):
      with self.subTest(caller=caller):
        self.assertEqual(self._refusal(self._files(caller)),
                         grpc.StatusCode.PERMISSION_DENIED)

  def test_pings_answer_the_coordinator_and_a_frozen_server_is_dropped(self):
    client = coordinator.EdgeServerClient(
        self.spec, self._files('coordinator'), liveness_timeout=3.0)
    self.addCleanup(client.close)
    client.ping(30.0)  # Answered: no error.
    pod = coordinator.EdgeServerClient(self.spec, self._files('edge-0'))
    self.addCleanup(pod.close)
    with self.assertRaises(grpc.RpcError) as refused:
      pod.ping(30.0)
    self.assertEqual(refused.exception.code(),
                     grpc.StatusCode.PERMISSION_DENIED)
    os.kill(self.server.pid, signal.SIGSTOP)  # Alive, answers nothing.
    try:
      with self.assertRaisesRegex(liveness.Unresponsive,
                                  'Describe on edge server edge-server-0'):
        client.call('Describe', {}, timeout=600)
    finally:
      os.kill(self.server.pid, signal.SIGCONT)
    # Thawed: served again (no pings here: it has a backlog to clear).
    thawed = coordinator.EdgeServerClient(
        self.spec, self._files('coordinator'), liveness_timeout=0)
    self.addCleanup(thawed.close)
    header, _, _, _ = thawed.call('Describe', {}, timeout=120)
    self.assertEqual([p['name'] for p in header['pods']], ['edge-0'])

  def test_only_edge_servers_may_call_a_pod(self):
    target = f'127.0.0.1:{self.pod_port}'
    for caller, status in (('edge-server-1', 200), ('edge-1', 403),
                           ('coordinator', 403)):
      with self.subTest(caller=caller):
        got, _ = tls.http_get_json(target, '/control/manifest',
                                   self._files(caller), server_name='edge-0')
        self.assertEqual(got, status)

  def test_revoked_and_expired_coordinator_certificates_are_refused(self):
    # A second CA directory sharing the CA: revoke a fresh coordinator cert
    # by writing the CRL where the edge server reads it (its tls_dir).
    ca = certs.load_ca(self.certs)
    spare = tempfile.mkdtemp()
    for name, issued in (
        ('coordinator', certs.issue_node_cert(ca, 'coordinator')),
        ('expired', certs.issue_node_cert(
            ca, 'coordinator', days=1,
            now=datetime.datetime.now(datetime.timezone.utc) -
            datetime.timedelta(days=3)))):
      with open(os.path.join(spare, f'{name}.crt'), 'wb') as f:
        f.write(issued.cert_pem())
      with open(os.path.join(spare, f'{name}.key'), 'wb') as f:
        f.write(issued.key_pem())
    with open(os.path.join(spare, 'ca.crt'), 'wb') as f:
      f.write(ca.cert_pem())
    fresh = self._files('coordinator', spare)
    expired = tls.TlsFiles.from_dir(spare, 'expired', validate=False)
    self.assertEqual(self._refusal(expired), grpc.StatusCode.UNAVAILABLE)
    self.assertNotEmpty(self._describe(fresh)['pods'])
    with open(fresh.cert, 'rb') as f:
      certs.write_crl(self.certs, [x509.load_pem_x509_certificate(f.read())])
    self.addCleanup(os.remove, os.path.join(self.certs, certs.CRL_FILE))
    self.assertEqual(self._refusal(fresh), grpc.StatusCode.PERMISSION_DENIED)
    # The coordinator's own certificate is still good.
    self.assertNotEmpty(self._describe(self._files('coordinator'))['pods'])

  def test_rotated_certificate_is_served_without_a_restart(self):
    files = self._files('edge-server-0')
    before = _served_serial(self.port, files.ca)
    renewed = certs.issue_node_cert(certs.load_ca(self.certs),
                                    'edge-server-0')
    for path, data in ((files.key, renewed.key_pem()),
                       (files.cert, renewed.cert_pem())):
      with open(path + '.new', 'wb') as f:
        f.write(data)
    os.replace(files.key + '.new', files.key)
    os.replace(files.cert + '.new', files.cert)
    self.assertEqual(_served_serial(self.port, files.ca),
                     renewed.cert.serial_number)
    self.assertNotEqual(before, renewed.cert.serial_number)
    self.assertNotEmpty(self._describe(self._files('coordinator'))['pods'])

  def test_killed_merger_is_restarted_and_healthz_reflects_it(self):
    address = f'127.0.0.1:{self.health_port}'
    merger = [pid for pid in testutil.child_pids(self.server.pid)
              if 'worker_binary' in open(f'/proc/{pid}/cmdline').read()]
    self.assertLen(merger, 1)
    os.kill(merger[0], signal.SIGKILL)
    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
      status, body = health.get_json(address, '/healthz')
      seen.append(status)
      if status == 200 and body['merger_restarts'] >= 1:
        break
      time.sleep(0.01)
    else:
      self.fail(f'merger not restarted: {body}')
    self.assertTrue(body['merger_alive'])
    # Between the kill and the restart (the supervisor looks every 0.5 s).
    self.assertIn(503, seen)
    self.assertNotEmpty(self._describe(self._files('coordinator'))['pods'])


if __name__ == '__main__':
  absltest.main()
