import os
import signal
import subprocess
import sys
import tempfile
import time

from absl.testing import absltest

from tests import testutil
from workers import netns

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class LocalClusterTest(absltest.TestCase):

  def test_sigterm_tears_everything_down(self):
    out = tempfile.mkdtemp()
    env = dict(os.environ, PYTHONPATH=_REPO, TF_CPP_MIN_LOG_LEVEL='3')
    process = subprocess.Popen(
        [sys.executable, '-m', 'workers.local_cluster', '--pods=2',
         '--edge_servers=1', '--num_clients=4', '--clients_per_round=2',
         '--partition=iid',
         f'--cluster_dir={out}/cluster',
         f'--topology_out={out}/topology.yaml'],
        cwd=_REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    self.addCleanup(lambda: process.poll() is None and process.kill())
    lines = []
    deadline = time.monotonic() + 300
    for line in process.stdout:
      lines.append(line)
      if 'are up' in line or time.monotonic() > deadline:
        break
    self.assertIn('are up', lines[-1], ''.join(lines))
    self.assertTrue(os.path.exists(f'{out}/topology.yaml'))
    nodes = testutil.descendant_pids(process.pid)
    self.assertGreaterEqual(len(nodes), 6)  # 2 pods, 1 edge server, executors.
    namespaces = [l for l in subprocess.run(
        ['ip', 'netns', 'list'], capture_output=True, text=True).stdout
                  .splitlines() if f'tff{process.pid}n' in l]
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    self.assertEqual(process.returncode, 0, output)
    self.assertIn('cluster stopped', output)
    time.sleep(1)
    self.assertEqual([p for p in nodes if testutil.pid_alive(p)], [])
    if namespaces:  # Ran in network namespaces: they are gone too.
      left = subprocess.run(['ip', 'netns', 'list'], capture_output=True,
                            text=True).stdout
      self.assertNotIn(f'tff{process.pid}n', left)

  def test_bad_sizes_are_refused(self):
    env = dict(os.environ, PYTHONPATH=_REPO, TF_CPP_MIN_LOG_LEVEL='3')
    result = subprocess.run(
        [sys.executable, '-m', 'workers.local_cluster', '--pods=2',
         '--edge_servers=3', '--num_clients=4', '--clients_per_round=2'],
        cwd=_REPO, env=env,
        capture_output=True, text=True, timeout=120)
    self.assertEqual(result.returncode, 2)
    self.assertIn('--edge_servers=3 is more than --pods=2', result.stderr)


class StaleNamespacesTest(absltest.TestCase):

  @absltest.skipUnless(netns.available(), 'needs root and the ip tool')
  def test_leftovers_of_a_dead_cluster_are_removed(self):
    dead = 4194300  # Above any pid this kernel hands out.
    subprocess.run(['ip', 'netns', 'add', f'tff{dead}n0'], check=True)
    subprocess.run(['ip', 'link', 'add', f'tb{dead}', 'type', 'bridge'],
                   check=True)
    removed = netns.remove_stale()
    self.assertIn(f'tff{dead}n0', removed)
    self.assertIn(f'tb{dead}', removed)
    self.assertNotIn(f'tff{dead}n0', subprocess.run(
        ['ip', 'netns', 'list'], capture_output=True, text=True).stdout)


if __name__ == '__main__':
  absltest.main()
