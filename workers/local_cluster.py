"""A layered cluster on this machine: edge pods under edge servers.

    python -m workers.local_cluster --pods=10 --edge_servers=2 \
        --task=fashion_mnist --num_clients=20 --topology_out=topology.yaml
    python -m tff_pipeline.train --executor=remote --topology=topology.yaml \
        --num_clients=20

Takes the data flags of training (--task, --data_dir, --num_clients,
--partition, --partition_alpha, --seed, or --config: every flag that is not
its own), has `python -m tff_pipeline.prepare` make the shards
(workers.prepared_data), and
places each client's shard in exactly one pod's own directory (round-robin);
the held-out split goes to a coordinator directory named as `eval_data` in
the topology. As root, every pod and edge server runs in its own network
namespace with its own 10.x address; otherwise on localhost ports. Dead pods
and edge servers are restarted (as Kubernetes would). Ctrl-C or SIGTERM tears
everything down.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Optional

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import portpicker

from data_prep import entry_point
from data_prep import shards
from data_prep.errors import UserError
from workers import certs
from workers import health
from workers import netns
from workers import placement
from workers import prepared_data
from workers import secagg_pod
from workers import tls_terminator
from workers import topology as topology_lib
from workers import worker_process
from workers.secagg import keys as secagg_keys

_POD_PORT, _POD_HEALTH_PORT = 8000, 8001
_POD_EXECUTOR_PORT = 8002  # Behind the TLS terminator, on the pod's loopback.
_SERVER_PORT, _SERVER_HEALTH_PORT = 7000, 7001
_SERVER_METRICS_PORT = 7090


class _Node:
  """One pod or edge server process, restartable."""

  def __init__(self, name: str, argv: list[str], log_path: str,
               health_address: str, namespace: Optional[str] = None):
    self.name = name
    self.argv = argv
    self.log_path = log_path
    self.health_address = health_address
    # Health ports listen on loopback (TLS mode): probed from inside.
    self.namespace = namespace
    self.process: Optional[subprocess.Popen] = None
    self.restarts = 0
    self.metrics_address: Optional[str] = None  # Prometheus /metrics.

  def start(self) -> None:
    log = open(self.log_path, 'ab')
    self.process = subprocess.Popen(self.argv, stdout=log,
                                    stderr=subprocess.STDOUT,
                                    preexec_fn=worker_process.die_with_parent)
    log.close()

  def alive(self) -> bool:
    return self.process is not None and self.process.poll() is None

  def wait_ready(self, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      if not self.alive():
        raise UserError(f'{self.name} exited with status '
                        f'{self.process.returncode}; see {self.log_path}')
      try:
        probe = lambda: health.get_json(self.health_address, '/readyz', 2.0)
        status, _ = (netns.call_in(self.namespace, probe) if self.namespace
                     else probe())
        if status == 200:
          return
      except OSError:
        pass
      time.sleep(0.2)
    raise UserError(f'{self.name} not ready after {timeout:.0f}s; see '
                    f'{self.log_path}')

  def stop(self, grace: float = 10.0) -> None:
    worker_process.terminate(self.process, grace)


def check_sizes(num_pods: int, num_edge_servers: int) -> None:
  """Raises UserError unless every edge server can have a pod."""
  if num_pods < 1 or num_edge_servers < 1:
    raise UserError('--pods and --edge_servers must be at least 1')
  if num_edge_servers > num_pods:
    raise UserError(f'--edge_servers={num_edge_servers} is more than '
                    f'--pods={num_pods}: every edge server needs a pod')


class LocalCluster:
  """Prepares data, starts pods and edge servers, writes the topology."""

  def __init__(self, shard_dir: str, num_pods: int,
               num_edge_servers: int, cluster_dir: Optional[str] = None,
               use_netns: Optional[bool] = None, pod_threads: int = 1,
               use_tls: Optional[bool] = None, metrics: bool = False,
               pod_args: tuple[str, ...] = ()):
    check_sizes(num_pods, num_edge_servers)
    self.shard_dir = shard_dir  # data_prep's output for every client.
    self.num_pods = num_pods
    self.num_edge_servers = num_edge_servers
    self.cluster_dir = cluster_dir or tempfile.mkdtemp(prefix='tff-cluster-')
    self.use_netns = netns.available() if use_netns is None else use_netns
    if self.use_netns and not netns.available():
      raise UserError('network namespaces need root and the `ip` tool; run '
                      'as root or pass --netns=false')
    self.pod_threads = pod_threads
    self.metrics = metrics  # Edge servers serve Prometheus /metrics.
    self.pod_args = tuple(pod_args)  # Extra edge_pod flags (--secagg_*).
    # Mutual TLS on every channel, as a real deployment; needs nginx. Never
    # a silent fallback to plaintext.
    use_tls = True if use_tls is None else use_tls
    if use_tls:
      tls_terminator.find_nginx()  # Raises, saying how to install it.
    elif self.use_netns:
      raise UserError('--tls=false with network namespaces: pods serve their '
                      'executor on their own loopback only, which other '
                      'namespaces cannot reach; use TLS or --netns=false')
    self.use_tls = use_tls
    self.tls_dir: Optional[str] = None
    # All pods share this machine's cores: one computing pod per core (more
    # only time-share the cores, each running slower).
    self.cpu_slots = os.cpu_count() or 1
    self.topology_path = os.path.join(self.cluster_dir, 'topology.yaml')
    self.pods: list[_Node] = []
    self.edge_servers: list[_Node] = []
    self.topology: Optional[topology_lib.Topology] = None
    self._network: Optional[netns.Network] = None
    self._namespaces: dict[str, str] = {}
    self._stop = threading.Event()
    self._supervisor: Optional[threading.Thread] = None

  # Setup.

  def _place_data(self) -> tuple[dict[str, str], str]:
    # Not verified here: each pod verifies the shards it holds.
    manifest = shards.load_manifest(self.shard_dir)
    pod_names = [f'edge-{i}' for i in range(self.num_pods)]
    assigned = placement.assign_filled(manifest.client_ids(), pod_names,
                                       'lower --pods or raise --num_clients')
    pod_dirs = {}
    for pod, ids in assigned.items():
      pod_dirs[pod] = os.path.join(self.cluster_dir, 'pods', pod)
      placement.write_pod_dir(manifest, ids, pod_dirs[pod])
    eval_dir = os.path.join(self.cluster_dir, 'coordinator')
    placement.write_eval_dir(manifest, eval_dir)
    return pod_dirs, eval_dir

  def _address(self, index: int, subnet: int, port: int,
               health_port: int) -> tuple[Optional[str], str, str]:
    """(namespace, address, health address) of node `index`."""
    if self._network is None:
      return (None, f'127.0.0.1:{portpicker.pick_unused_port()}',
              f'127.0.0.1:{portpicker.pick_unused_port()}')
    namespace, ip = self._network.add_host(index, subnet,
                                           len(self._network.namespaces) + 2)
    return namespace, f'{ip}:{port}', f'{ip}:{health_port}'

  def _argv(self, namespace: Optional[str], module: str,
            args: list[str]) -> list[str]:
    argv = [sys.executable, '-m', module, *args]
    return netns.command(namespace, argv) if namespace else argv

  def start(self, ready_timeout: float = 180.0) -> 'LocalCluster':
    """Brings everything up; raises UserError naming what failed."""
    try:
      self._start(ready_timeout)
    except BaseException:
      self.stop()
      raise
    return self

  def _start(self, ready_timeout: float) -> None:
    pod_dirs, eval_dir = self._place_data()
    logs = os.path.join(self.cluster_dir, 'logs')
    os.makedirs(logs, exist_ok=True)
    if self.use_netns:
      stale = netns.remove_stale()
      if stale:
        logging.warning('removed namespaces of dead clusters: %s',
                        ', '.join(stale))
      tag = str(os.getpid())
      self._network = netns.Network(tag, netns.free_net()).create()
    server_names = [f'edge-server-{j}' for j in range(self.num_edge_servers)]
    if self.use_tls:
      self.tls_dir = os.path.join(self.cluster_dir, 'certs')
      # Each pod's SecAgg identity is made in its own directory (where the
      # pod finds it) and certified in its TLS certificate.
      identities = {
          pod: secagg_keys.load_or_create_identity(
              os.path.join(data_dir, secagg_pod.IDENTITY_FILE))
          for pod, data_dir in pod_dirs.items()}
      certs.write_bundle(self.tls_dir, ['coordinator', *server_names,
                                        *pod_dirs], overwrite=True,
                         secagg_identities=identities)
    pod_specs = []
    for i, (name, data_dir) in enumerate(pod_dirs.items()):
      namespace, address, health_address = self._address(
          i, 1, _POD_PORT, _POD_HEALTH_PORT)
      if namespace:
        self._namespaces[name] = namespace
      args = [f'--name={name}', f'--data_dir={data_dir}',
              f'--port={address.rsplit(":", 1)[1]}',
              f'--health_port={health_address.rsplit(":", 1)[1]}',
              f'--threads={self.pod_threads}', *self.pod_args]
      if self.use_tls:
        args += [f'--tls_dir={self.tls_dir}',
                 f'--run_dir={os.path.join(self.cluster_dir, "run", name)}']
        if namespace:
          args += [f'--executor_port={_POD_EXECUTOR_PORT}']
      else:
        args += ['--insecure']
      # In a namespace the health port is on the pod's own loopback.
      probe_at = f'127.0.0.1:{_POD_HEALTH_PORT}' if namespace else health_address
      self.pods.append(_Node(name, self._argv(namespace, 'workers.edge_pod',
                                              args),
                             os.path.join(logs, f'{name}.log'), probe_at,
                             namespace))
      pod_specs.append(topology_lib.Pod(name, address, health_address))
    servers = []
    for j, name in enumerate(server_names):
      namespace, address, health_address = self._address(
          self.num_pods + j, 2, _SERVER_PORT, _SERVER_HEALTH_PORT)
      if namespace:
        self._namespaces[name] = namespace
      # Contiguous groups: pods 0..4 under server 0, 5..9 under server 1.
      group = tuple(p for i, p in enumerate(pod_specs)
                    if i * self.num_edge_servers // self.num_pods == j)
      servers.append(topology_lib.EdgeServer(name, address, health_address,
                                             group))
      args = [f'--topology={self.topology_path}', f'--name={name}',
              f'--cpu_slots={self.cpu_slots}',
              f'--cpu_slots_dir={os.path.join(self.cluster_dir, "cpu-slots")}']
      if not self.use_tls:
        args += ['--insecure']
      metrics_address = None
      if self.metrics:
        port = (_SERVER_METRICS_PORT if namespace
                else portpicker.pick_unused_port())
        args += [f'--metrics_port={port}']
        metrics_address = f'{address.rsplit(":", 1)[0]}:{port}'

      probe_at = (f'127.0.0.1:{_SERVER_HEALTH_PORT}' if namespace
                  else health_address)
      self.edge_servers.append(
          _Node(name, self._argv(namespace, 'workers.edge_server', args),
                os.path.join(logs, f'{name}.log'), probe_at, namespace))
      self.edge_servers[-1].metrics_address = metrics_address
    self.topology = topology_lib.Topology(tuple(servers), eval_data=eval_dir,
                                          tls_dir=self.tls_dir)
    topology_lib.save(self.topology, self.topology_path)
    for node in self.pods + self.edge_servers:
      node.start()
    for node in self.pods + self.edge_servers:
      node.wait_ready(ready_timeout)
    self._supervisor = threading.Thread(target=self._supervise,
                                        name='supervisor', daemon=True)
    self._supervisor.start()

  def _supervise(self, poll: float = 1.0) -> None:
    """Restarts dead nodes, as a Deployment or StatefulSet would."""
    while not self._stop.wait(poll):
      for node in self.pods + self.edge_servers:
        if not node.alive() and not self._stop.is_set():
          node.restarts += 1
          logging.warning('%s exited (status %s); restarting', node.name,
                          node.process.returncode)
          node.start()

  def namespace_of(self, name: str) -> Optional[str]:
    """The network namespace a node runs in (None on localhost)."""
    return self._namespaces.get(name)

  def pod(self, name: str) -> _Node:
    for node in self.pods:
      if node.name == name:
        return node
    raise KeyError(name)

  def stop(self) -> None:
    self._stop.set()
    if self._supervisor is not None:
      self._supervisor.join()
    for node in self.edge_servers + self.pods:
      if node.alive():
        node.process.terminate()
    for node in self.edge_servers + self.pods:
      node.stop()
    if self._network is not None:
      self._network.destroy()
      self._network = None

  def __enter__(self) -> 'LocalCluster':
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()


def define_flags() -> None:
  flags.DEFINE_integer('pods', 10, 'Number of edge pods.')
  flags.DEFINE_integer('edge_servers', 2, 'Number of edge servers.')
  flags.DEFINE_string('topology_out', 'topology.yaml',
                      'Where to write the topology file.')
  flags.DEFINE_string('cluster_dir', None,
                      'Where pod data and logs go (default: a new temp dir).')
  flags.DEFINE_enum('netns', 'auto', ['auto', 'true', 'false'],
                    'One network namespace per node (needs root); auto: '
                    'when root.')
  flags.DEFINE_integer('pod_threads', 1, 'TF threads per pod executor.')
  flags.DEFINE_enum('tls', 'true', ['true', 'false'],
                    'Mutual TLS on every channel (certificates in '
                    '<cluster_dir>/certs, nginx in front of each pod '
                    'executor; ./setup.sh installs nginx). false: plaintext '
                    '(pods and edge servers get --insecure, and so must '
                    'the coordinator); only with --netns=false.')


def main(argv: list[str]) -> int:
  # argv[1:]: the flags that are not ours, i.e. the training data flags.
  flag_values = flags.FLAGS
  choice = {'auto': None, 'true': True, 'false': False}
  use_netns = choice[flag_values.netns]
  stop = threading.Event()
  signal.signal(signal.SIGTERM, lambda *_: stop.set())
  signal.signal(signal.SIGINT, lambda *_: stop.set())
  try:
    check_sizes(flag_values.pods, flag_values.edge_servers)
    shard_dir = prepared_data.prepare(argv[1:])['shard_dir']
    cluster = LocalCluster(shard_dir, flag_values.pods, flag_values.edge_servers,
                           flag_values.cluster_dir, use_netns,
                           flag_values.pod_threads,
                           choice[flag_values.tls]).start()
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  topology_lib.save(cluster.topology, flag_values.topology_out)
  where = 'network namespaces' if cluster.use_netns else 'localhost'
  if cluster.use_tls:
    where += f'; mutual TLS, certificates in {cluster.tls_dir}'
  else:
    where += '; PLAINTEXT: train with --insecure'
  print(f'{cluster.num_pods} edge pods under {cluster.num_edge_servers} edge '
        f'servers are up ({where}); topology: {flag_values.topology_out}; '
        f'logs: {cluster.cluster_dir}/logs. Ctrl-C stops them.', flush=True)
  while not stop.wait(0.5):  # Timed: an untimed wait can miss the signal.
    pass
  cluster.stop()
  print('cluster stopped', flush=True)
  return 0


if __name__ == '__main__':
  define_flags()
  entry_point.run(main, known_only=True)
