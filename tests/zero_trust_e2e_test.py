"""No plaintext listener is reachable from outside its own namespace.

During a local training run and during training on a local cluster (in
network namespaces as root, and on localhost as a user without them), every
listening socket of every process the project started is found from /proc
(workers.listeners over the whole process tree) and attacked from where an
outsider would be: another network namespace attached to the cluster's
bridge (root) or this host's own non-loopback address. Each must be
loopback-only (and then unreachable from there) or refuse every caller
without a client certificate of the cluster CA (tests/probe.py).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top
from absl import flags
from absl.testing import absltest

from tests import probe
from tests import testutil
from tff_pipeline import api
from tff_pipeline import plan
from tff_pipeline.core import config as config_lib
from workers import local_runtime as runtime
from workers import listeners
from workers import local_cluster
from workers import netns
from workers import tls

_DATA = dict(num_clients=4, partition='iid', seed=5, model='2nn',
             clients_per_round=2, eval_every=0, progress=False)


def _config(output_dir: str, **overrides) -> config_lib.TrainConfig:
  return plan.resolve_config({}, dict(_DATA, rounds=2, output_dir=output_dir,
                                     **overrides))


def _namespace_of(pid: int) -> str:
  """The name of `pid`'s network namespace ('' for this process's)."""
  try:
    inode = os.stat(f'/proc/{pid}/ns/net').st_ino
  except OSError:
    return '?'
  if inode == os.stat('/proc/self/ns/net').st_ino:
    return ''
  for name in os.listdir('/var/run/netns') if os.path.isdir(
      '/var/run/netns') else []:
    if os.stat(f'/var/run/netns/{name}').st_ino == inode:
      return name
  return '?'


def _addresses_in(namespace: str) -> list[str]:
  if not namespace:
    return probe.host_addresses()
  return netns.call_in(namespace, probe.host_addresses)


@contextlib.contextmanager
def _attacker(bridge: str, address: str):
  """A namespace on the cluster's bridge at `address`: a host on its LAN."""
  name = f'tffatk{os.getpid()}'
  outer, inner = f'va{os.getpid() % 100000}o', f'va{os.getpid() % 100000}i'
  commands = [
      ['ip', 'netns', 'add', name],
      ['ip', 'link', 'add', outer, 'type', 'veth', 'peer', 'name', inner],
      ['ip', 'link', 'set', inner, 'netns', name],
      ['ip', 'link', 'set', outer, 'master', bridge],
      ['ip', 'link', 'set', outer, 'up'],
      ['ip', '-n', name, 'addr', 'add', f'{address}/16', 'dev', inner],
      ['ip', '-n', name, 'link', 'set', inner, 'up'],
      ['ip', '-n', name, 'link', 'set', 'lo', 'up']]
  try:
    for command in commands:
      subprocess.run(command, check=True, capture_output=True)
    yield name
  finally:
    subprocess.run(['ip', 'netns', 'delete', name], check=False,
                   capture_output=True)
    subprocess.run(['ip', 'link', 'delete', outer], check=False,
                   capture_output=True)


class _Audit:
  """Collects every listener of a process tree, several times over a run."""

  def __init__(self, root_pid: int):
    self.root_pid = root_pid
    self.found: dict[tuple, listeners.Listener] = {}

  def sweep(self) -> None:
    for listener in listeners.of_tree(self.root_pid):
      key = (_namespace_of(listener.pid), listener.protocol,
             str(listener.address), listener.port)
      self.found.setdefault(key, listener)


class ZeroTrustTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    flags.FLAGS.mark_as_parsed()
    cls.root = tempfile.mkdtemp(prefix='zero-trust-e2e-')

  def _check(self, audit: _Audit, ca_pem: bytes,
             attack_from: str = '') -> set[str]:
    """Attacks every listener found; returns those reachable at all."""
    self.assertNotEmpty(audit.found)
    report, reachable = [], set()
    for (namespace, protocol, address, port), listener in sorted(
        audit.found.items()):
      if not listener.loopback:
        targets = ([address] if not listener.wildcard
                   else _addresses_in(namespace))
      else:
        # Bound to loopback: try the node's own other addresses.
        targets = _addresses_in(namespace)
      self.assertNotEmpty(targets, f'{listener}: no address to attack')
      for target in targets:
        # Every node's certificate names localhost: the TLS attempts get
        # past server verification and meet the server's own refusal.
        attack = lambda t=target, p=port: probe.attack(t, p, ca_pem,
                                                      server_name='localhost')
        verdict = (netns.call_in(attack_from, attack) if attack_from
                   else attack())
        line = (f'{namespace or "host"} {listener} via {target}: '
                f'{"reachable" if verdict.reachable else "unreachable"} '
                f'{"; ".join(verdict.findings) or "refused"}')
        report.append(line)
        if verdict.reachable:
          reachable.add(f'{namespace} {protocol} {address}:{port}')
        self.assertTrue(verdict.safe, line)
        if listener.loopback:
          self.assertFalse(verdict.reachable, line)
    print('\n'.join(report), file=sys.stderr)
    return reachable

  def test_local_training_run_listens_on_loopback_only(self):
    out = os.path.join(self.root, 'local')
    process = subprocess.Popen(
        [sys.executable, '-m', 'tff_pipeline.train', '--progress=false',
         '--num_clients=4', '--partition=iid', '--model=2nn',
         '--clients_per_round=2', '--rounds=4', '--eval_every=0',
         f'--output_dir={out}'], cwd=testutil.REPO_ROOT,
        env=dict(os.environ, PYTHONPATH=testutil.REPO_ROOT),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    self.addCleanup(lambda: process.poll() is None and process.kill())
    audit = _Audit(process.pid)
    deadline = time.monotonic() + 600
    while process.poll() is None and time.monotonic() < deadline:
      audit.sweep()
      time.sleep(0.2)
    output = process.stdout.read()
    self.assertEqual(process.returncode, 0, output)
    self.assertTrue(any(l.port for l in audit.found.values()),
                    'never saw the worker listen')
    for listener in audit.found.values():
      self.assertTrue(listener.loopback, f'{listener}\n{output}')
    if not probe.host_addresses():
      self.skipTest('no non-loopback address on this host to attack from')
    # The run is over; attack what it listened on, from the host's address
    # (a worker of a new run may take the same port: still loopback).
    self._check(audit, b'')

  def _cluster_run(self, use_netns: bool):
    name = 'netns' if use_netns else 'localhost'
    cluster = local_cluster.LocalCluster(
        plan.load_task(_config(os.path.join(self.root, f'unused-{name}')))
        .manifest.shard_dir, 2, 1,
        cluster_dir=os.path.join(self.root, f'cluster-{name}'),
        use_netns=use_netns).start()
    self.addCleanup(cluster.stop)
    self.assertTrue(cluster.use_tls)
    runtime.use_local_runtime(1)
    audit = _Audit(os.getpid())  # Pods, edge servers, nginx, executors, us.
    rows = []
    api.run(
        _config(os.path.join(self.root, f'remote-{name}'), executor='remote',
                topology=cluster.topology_path),
        on_round=lambda row: (rows.append(row), audit.sweep()))
    audit.sweep()
    self.assertLen(rows, 2)
    self.assertEqual([f for r in rows for f in r['failures']], [])
    with open(tls.TlsFiles.from_dir(cluster.tls_dir, 'coordinator').ca,
              'rb') as f:
      ca_pem = f.read()
    return cluster, audit, ca_pem

  def test_local_cluster_in_namespaces_is_reachable_only_through_mtls(self):
    if not netns.available():
      self.skipTest('network namespaces need root and the ip tool; the '
                    'localhost variant of this test runs without them')
    cluster, audit, ca_pem = self._cluster_run(use_netns=True)
    bridge = cluster._network.bridge  # pylint: disable=protected-access
    attacker_ip = f'10.{cluster._network.net}.3.250'  # pylint: disable=protected-access
    with _attacker(bridge, attacker_ip) as attacker:
      reachable = self._check(audit, ca_pem, attack_from=attacker)
    # What is reachable at all from the LAN: each pod's and edge server's
    # TLS port (refusing callers without a certificate), nothing else.
    self.assertLen(reachable, 2 + 1, reachable)

  def test_local_cluster_on_localhost_is_reachable_only_through_mtls(self):
    cluster, audit, ca_pem = self._cluster_run(use_netns=False)
    del cluster
    if not probe.host_addresses():
      self.skipTest('no non-loopback address on this host to attack from')
    reachable = self._check(audit, ca_pem)
    self.assertLen(reachable, 2 + 1, reachable)


if __name__ == '__main__':
  absltest.main()
