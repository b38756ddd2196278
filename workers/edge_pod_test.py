import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

from absl.testing import absltest
import numpy as np
import portpicker
from prometheus_client import parser as prom_parser

from data_prep import shards
from tests import testutil
from workers import certs
from workers import executor_client
from workers import health
from workers import secagg_masks
from workers import tls

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _shard_dir() -> str:
  per_client = {f'c{i}': {'x': np.full((3, 2), i, np.int64),
                          'y': np.arange(3, dtype=np.int64)} for i in range(3)}
  return shards.write_shards(
      os.path.join(tempfile.mkdtemp(), 'pod'), 'toy',
      {'x': {'kind': 'int64', 'shape': [2]}, 'y': {'kind': 'int64', 'shape': []}},
      per_client.items(), eval_examples=None, num_classes=3,
      partition={'method': 'natural'}, source={}, label_key='y').shard_dir


def _run_to_exit(data_dir: str) -> subprocess.CompletedProcess:
  """Runs a pod expected to refuse `data_dir` at start."""
  env = dict(os.environ, PYTHONPATH=_REPO, TF_CPP_MIN_LOG_LEVEL='3')
  return subprocess.run(
      [sys.executable, '-m', 'workers.edge_pod', f'--data_dir={data_dir}',
       f'--port={portpicker.pick_unused_port()}',
       f'--health_port={portpicker.pick_unused_port()}'],
      cwd=_REPO, env=env, capture_output=True, text=True, timeout=120)


class EdgePodTest(absltest.TestCase):

  def _start(self, data_dir: str, *extra: str):
    port, health_port = (portpicker.pick_unused_port(),
                         portpicker.pick_unused_port())
    self.port = port
    env = dict(os.environ, PYTHONPATH=_REPO, TF_CPP_MIN_LOG_LEVEL='3')
    process = subprocess.Popen(
        [sys.executable, '-m', 'workers.edge_pod', f'--port={port}',
         f'--health_port={health_port}', f'--data_dir={data_dir}',
         '--name=edge-7', *extra], cwd=_REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    self.addCleanup(lambda: process.poll() is None and process.kill())
    address = f'127.0.0.1:{health_port}'
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
      self.assertIsNone(process.poll(), 'pod exited early')
      try:
        if health.get_json(address, '/readyz', 1.0)[0] == 200:
          return process, address
      except OSError:
        pass
      time.sleep(0.2)
    self.fail('pod never became ready')

  def test_serves_manifest_and_stops_cleanly_on_sigterm(self):
    process, address = self._start(_shard_dir())
    status, body = health.get_json(address, '/manifest')
    self.assertEqual(status, 200)
    self.assertEqual(body['pod'], 'edge-7')
    self.assertEqual([c['client_id'] for c in body['manifest']['clients']],
                     ['c0', 'c1', 'c2'])
    self.assertEqual(health.get_json(address, '/healthz')[0], 200)
    executor = testutil.child_pids(process.pid)
    self.assertLen(executor, 1)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    self.assertEqual(process.returncode, 0, output)
    self.assertIn('stopped', output)
    self.assertFalse(testutil.pid_alive(executor[0]))

  def test_publishes_public_keys_and_writes_masks_for_its_clients(self):
    data_dir = _shard_dir()
    _, address = self._start(data_dir)
    _, body = health.get_json(address, '/control/manifest')
    public_keys = body['public_keys']
    self.assertEqual(sorted(public_keys), ['c0', 'c1', 'c2'])
    peer = secagg_masks.PodKeys(secagg_masks.new_secret(), ['z9'])
    request = {'tag': 'r1-a1', 'clients': ['c0', 'c2'],
               'public_keys': {**public_keys, **peer.public_keys},
               'layout': [[10, 2**36]]}
    status, reply = tls.http_post_json(address, '/control/secagg/masks',
                                     request)
    self.assertEqual(status, 200, reply)
    for client in ('c0', 'c2'):
      path = secagg_masks.mask_path(data_dir, 'r1-a1', client)
      self.assertEqual(os.path.getsize(path), 80)
    self.assertFalse(os.path.exists(
        secagg_masks.mask_path(data_dir, 'r1-a1', 'c1')))
    status, reply = tls.http_post_json(address, '/control/secagg/masks',
                                     dict(request, clients=['z9']))
    self.assertEqual(status, 409)
    self.assertIn('does not hold', reply['error'])
    # The secret stays on the pod's disk, private to it.
    key_file = os.path.join(data_dir, 'secagg.key')
    self.assertEqual(os.stat(key_file).st_mode & 0o777, 0o600)

  def test_mutual_tls_mode_serves_only_verified_callers(self):
    cert_dir = os.path.join(tempfile.mkdtemp(), 'certs')
    certs.write_bundle(cert_dir, ['edge-7', 'edge-server-0'])
    stranger_dir = os.path.join(tempfile.mkdtemp(), 'certs')
    certs.write_bundle(stranger_dir, ['edge-server-0'])
    process, address = self._start(_shard_dir(), f'--tls_dir={cert_dir}')
    # The plain port has probes only: no manifest, no control calls.
    self.assertEqual(health.get_json(address, '/healthz')[0], 200)
    self.assertEqual(health.get_json(address, '/manifest')[0], 404)
    self.assertEqual(tls.http_post_json(address, '/control/secagg/masks',
                                      {})[0], 404)
    target = f'127.0.0.1:{self.port}'
    caller = tls.TlsFiles.from_dir(cert_dir, 'edge-server-0')
    status, body = tls.http_get_json(target, '/control/manifest', caller,
                                     server_name='edge-7')
    self.assertEqual(status, 200, body)
    self.assertLen(body['public_keys'], 3)
    stranger = tls.TlsFiles.from_dir(stranger_dir, 'edge-server-0')
    # Another CA's certificate: nginx refuses it (and we refuse its server).
    stranger_trusting_us = tls.TlsFiles(ca=caller.ca, cert=stranger.cert,
                                        key=stranger.key)
    status, _ = tls.http_get_json(target, '/control/manifest',
                                  stranger_trusting_us, server_name='edge-7')
    self.assertEqual(status, 403)
    # gRPC to the executor: with our certificate only.
    good = executor_client.ExecutorClient(
        target, tls.grpc_channel(target, caller, server_name='edge-7'))
    self.assertIsNotNone(good._executor(0, executor_client._Deadline(30)))  # pylint: disable=protected-access
    bad = executor_client.ExecutorClient(
        target, tls.grpc_channel(target, stranger_trusting_us,
                                 server_name='edge-7'))
    with self.assertRaises(Exception) as raised:
      bad._executor(0, executor_client._Deadline(30))  # pylint: disable=protected-access
    self.assertIn('UNAUTHENTICATED', str(raised.exception))
    plain = executor_client.ExecutorClient(target)
    with self.assertRaises(Exception):
      plain._executor(0, executor_client._Deadline(10))  # pylint: disable=protected-access
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    self.assertEqual(process.returncode, 0, output)

  def test_killed_pod_leaves_no_orphan_executor(self):
    process, _ = self._start(_shard_dir())
    executor = testutil.child_pids(process.pid)
    self.assertLen(executor, 1)
    process.kill()
    process.wait()
    deadline = time.monotonic() + 10
    while testutil.pid_alive(executor[0]) and time.monotonic() < deadline:
      time.sleep(0.1)
    self.assertFalse(testutil.pid_alive(executor[0]), 'executor outlived its pod')

  def test_dead_executor_is_restarted(self):
    process, address = self._start(_shard_dir())
    first = testutil.child_pids(process.pid)[0]
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
      status, body = health.get_json(address, '/readyz')
      children = testutil.child_pids(process.pid)
      if status == 200 and children and children[0] != first:
        break
      time.sleep(0.2)
    else:
      self.fail('executor was not restarted')
    self.assertEqual(health.get_json(address, '/healthz')[1]['restarts'], 1)

  def test_metrics_port_serves_up_clients_calls_and_restarts(self):
    metrics_port = portpicker.pick_unused_port()
    process, address = self._start(_shard_dir(),
                                   f'--metrics_port={metrics_port}')

    def scrape() -> dict:
      with urllib.request.urlopen(
          f'http://127.0.0.1:{metrics_port}/metrics', timeout=10) as r:
        text = r.read().decode('utf-8')
      return {(s.name, tuple(sorted(s.labels.items()))): s.value
              for f in prom_parser.text_string_to_metric_families(text)
              for s in f.samples}

    self.assertEqual(health.get_json(address, '/control/manifest')[0], 200)
    status, _ = tls.http_post_json(address, '/control/secagg/masks',
                                   {'tag': 't', 'clients': ['z9'],
                                    'public_keys': {}, 'layout': []})
    self.assertEqual(status, 409)
    got = scrape()
    self.assertEqual(got[('tff_edge_up', (('node', 'edge-7'),
                                          ('role', 'pod')))], 1)
    self.assertEqual(got[('tff_edge_clients', ())], 3)
    self.assertEqual(got[('tff_edge_calls_total', (('kind', 'manifest'),
                                                   ('peer', '')))], 1)
    self.assertEqual(got[('tff_edge_call_errors_total',
                          (('error', 'http_409'), ('kind', 'secagg_masks'),
                           ('peer', '')))], 1)
    os.kill(testutil.child_pids(process.pid)[0], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while scrape()[('tff_edge_executor_restarts_total', ())] < 1:
      self.assertLess(time.monotonic(), deadline, 'no restart counted')
      time.sleep(0.2)

  def test_corrupt_shard_is_refused_at_start_naming_the_file(self):
    data_dir = _shard_dir()
    with open(os.path.join(data_dir, 'clients', 'c1.tfrecord'), 'r+b') as f:
      f.write(b'\xff\xff')
    result = _run_to_exit(data_dir)
    self.assertEqual(result.returncode, 2)
    self.assertIn('c1.tfrecord', result.stderr)
    self.assertIn('error: edge pod', result.stderr)


  def test_large_pods_verify_each_shard_when_it_is_first_sampled(self):
    data_dir = _shard_dir()
    with open(os.path.join(data_dir, 'clients', 'c1.tfrecord'), 'r+b') as f:
      f.write(b'\xff\xff')
    # More clients than --verify_at_start_max: it starts without hashing.
    _, address = self._start(data_dir, '--verify_at_start_max=2')
    verify = lambda clients: tls.http_post_json(address, '/control/verify',
                                                {'clients': clients})
    self.assertEqual(verify(['c0', 'c2']), (200, {'verified': 2}))
    self.assertEqual(verify(['c0']), (200, {'verified': 0}))
    status, body = verify(['c0', 'c1'])
    self.assertEqual(status, 409)
    self.assertIn('c1.tfrecord is corrupt', body['error'])
    status, body = verify(['c9'])
    self.assertEqual(status, 409)
    self.assertIn(executor_client.NOT_HELD_MARKER, body['error'])

  def _with_held_out(self, client_ids):
    data_dir = _shard_dir()
    shards.write_shards(
        os.path.join(data_dir, shards.HELD_OUT_DIR), 'toy',
        {'x': {'kind': 'int64', 'shape': [2]},
         'y': {'kind': 'int64', 'shape': []}},
        ((c, {'x': np.zeros((1, 2), np.int64), 'y': np.zeros(1, np.int64)})
         for c in client_ids), eval_examples=None, num_classes=None,
        partition={}, source={}, label_key=None)
    return data_dir

  def test_reports_which_clients_it_holds_held_out_data_of(self):
    _, address = self._start(self._with_held_out(['c0', 'c2']))
    status, body = health.get_json(address, '/manifest')
    self.assertEqual(status, 200)
    self.assertEqual(body['held_out_clients'], ['c0', 'c2'])
    _, address = self._start(_shard_dir())
    self.assertEqual(health.get_json(address, '/manifest')[1]
                     ['held_out_clients'], [])

  def test_held_out_data_of_a_client_it_does_not_hold_is_refused(self):
    data_dir = self._with_held_out(['c1', 'c9'])
    result = _run_to_exit(data_dir)
    self.assertEqual(result.returncode, 2, result.stderr)
    self.assertIn('clients this pod does not hold (c9)', result.stderr)
    self.assertIn('held_out', result.stderr)


if __name__ == '__main__':
  absltest.main()
