"""Writes a topology from counts and address patterns (no hand-written list).

    python -m workers.topology_gen --pods=10 --edge_servers=2 \
        --pod_address='edge-{i}.edge:8000' --pod_health='edge-{i}.edge:8001' \
        --server_address='edge-server-{j}.edge-server:7000' \
        --server_health='edge-server-{j}.edge-server:7001' \
        --eval_data=/eval --tls_dir=/tls --out=/work/topology.yaml

Pod i is named --pod_name with {i} replaced (default edge-{i}), edge server j
--server_name with {j} (default edge-server-{j}); the address patterns take
the same {i} / {j}. Pods are grouped under edge servers in contiguous blocks,
as workers.local_cluster groups them: pod i goes to edge server
i * edge_servers // pods (10 pods, 2 servers: 0-4 and 5-9). The result is
checked by workers.topology (so errors read the same) and written atomically.

On Kubernetes an initContainer of the edge servers and of the coordinator
runs this with --pods and --edge_servers taken from the StatefulSets'
replicas (k8s/README.md): scaling the edge tier changes one number and every
process's topology follows.

--wait_ready_seconds=S (coordinator): after writing, call Describe on every
edge server until each answers, every pod under it serves its manifest and
no client is on two pods (as during the rolling restart after a scale
change), or fail after S seconds naming what is not ready. Uses grpc and
the TLS files only (no TensorFlow), so it is cheap to run before training
starts.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Optional, Sequence

from absl import app
from absl import flags
import grpc

from data_prep import entry_point
from data_prep.errors import UserError
from workers import tls as tls_lib
from workers import topology as topology_lib
from workers import wire

# workers.edge_server.SERVICE; not imported from there, which loads TFF.
_DESCRIBE = '/tff_edge.EdgeServer/Describe'


def define_flags() -> None:
  """The CLI's flags (defined only when run as a program: tests import this
  module next to others that define --pods)."""
  flags.DEFINE_integer('pods', None, 'Number of edge pods.')
  flags.DEFINE_integer('edge_servers', None, 'Number of edge servers.')
  flags.DEFINE_string('pod_name', 'edge-{i}',
                      'Name of pod i ({i} is replaced).')
  flags.DEFINE_string(
      'pod_address', 'edge-{i}.edge:8000',
      'host:port of pod i: its executor service (TLS terminator with mTLS).')
  flags.DEFINE_string('pod_health', 'edge-{i}.edge:8001',
                      "host:port of pod i's HTTP health port.")
  flags.DEFINE_string('server_name', 'edge-server-{j}',
                      'Name of edge server j ({j} is replaced).')
  flags.DEFINE_string('server_address', 'edge-server-{j}.edge-server:7000',
                      "host:port of edge server j's gRPC service.")
  flags.DEFINE_string('server_health', 'edge-server-{j}.edge-server:7001',
                      "host:port of edge server j's HTTP health port.")
  flags.DEFINE_string(
      'eval_data', '', "The coordinator's held-out shard dir (topology "
      'eval_data); empty: none.')
  flags.DEFINE_string(
      'tls_dir', '', "Topology tls_dir (each process's certificates); empty: "
      'none.')
  flags.DEFINE_string('out', None, 'Where to write the topology YAML.')
  flags.DEFINE_float(
      'wait_ready_seconds', 0.0, 'After writing: wait until every edge server '
      'and every pod answers and no client is on two pods (0: do not wait).')
  flags.DEFINE_bool(
      'insecure', False, 'With --wait_ready_seconds and no --tls_dir: call '
      'the edge servers in plaintext (refused without it).')
  flags.DEFINE_string(
      'wait_tls_node', 'coordinator', 'With --wait_ready_seconds and '
      '--tls_dir: whose certificate to call the edge servers with.')


def _fill(pattern: str, key: str, value: int, what: str) -> str:
  try:
    return pattern.replace('{' + key + '}', str(value))
  except (TypeError, AttributeError):
    raise UserError(f'{what} must be a string, got {pattern!r}') from None


def generate(pods: int, edge_servers: int, *,
             pod_name: str = 'edge-{i}',
             pod_address: str = 'edge-{i}.edge:8000',
             pod_health: str = 'edge-{i}.edge:8001',
             server_name: str = 'edge-server-{j}',
             server_address: str = 'edge-server-{j}.edge-server:7000',
             server_health: str = 'edge-server-{j}.edge-server:7001',
             eval_data: Optional[str] = None,
             tls_dir: Optional[str] = None) -> topology_lib.Topology:
  """The topology of `pods` pods under `edge_servers` edge servers.

  Raises:
    UserError: Counts out of range, a pattern without its {i} / {j} (every
      pod would get the same name or address), or an entry that
      workers.topology rejects.
  """
  if pods is None or pods < 1:
    raise UserError(f'--pods must be at least 1, got {pods}')
  if edge_servers is None or edge_servers < 1:
    raise UserError(f'--edge_servers must be at least 1, got {edge_servers}')
  if edge_servers > pods:
    raise UserError(f'--edge_servers={edge_servers} is more than '
                    f'--pods={pods}: every edge server needs a pod')
  for flag, pattern, key, count in (
      ('pod_name', pod_name, 'i', pods),
      ('pod_address', pod_address, 'i', pods),
      ('pod_health', pod_health, 'i', pods),
      ('server_name', server_name, 'j', edge_servers),
      ('server_address', server_address, 'j', edge_servers),
      ('server_health', server_health, 'j', edge_servers)):
    if count > 1 and '{' + key + '}' not in pattern:
      raise UserError(f'--{flag}={pattern!r} has no {{{key}}}: all '
                      f'{count} would be the same')
  pod_entries = [{'name': _fill(pod_name, 'i', i, '--pod_name'),
                  'address': _fill(pod_address, 'i', i, '--pod_address'),
                  'health': _fill(pod_health, 'i', i, '--pod_health')}
                 for i in range(pods)]
  servers = []
  for j in range(edge_servers):
    servers.append({
        'name': _fill(server_name, 'j', j, '--server_name'),
        'address': _fill(server_address, 'j', j, '--server_address'),
        'health': _fill(server_health, 'j', j, '--server_health'),
        # Contiguous blocks, as workers.local_cluster groups pods.
        'pods': [p for i, p in enumerate(pod_entries)
                 if i * edge_servers // pods == j]})
  raw = {'edge_servers': servers}
  if eval_data:
    raw['eval_data'] = eval_data
  if tls_dir:
    raw['tls_dir'] = tls_dir
  return topology_lib.parse(raw, f'generated ({pods} pods, {edge_servers} '
                            'edge servers)')


def _describe(server: topology_lib.EdgeServer,
              tls: Optional[tls_lib.TlsFiles], timeout: float
              ) -> tuple[list[str], dict[str, list[str]]]:
  """(what of `server` and its pods does not answer, {pod: its client ids})."""
  channel = tls_lib.grpc_channel(server.address, tls, server_name=server.name)
  try:
    reply = channel.unary_unary(_DESCRIBE)(wire.pack({}), timeout=timeout)
    header, _ = wire.unpack(reply)
  except grpc.RpcError as e:
    return [f'edge server {server.name} at {server.address}: '
            f'{e.code().name}: {e.details()}'], {}
  except wire.WireError as e:
    return [f'edge server {server.name} at {server.address}: {e}'], {}
  finally:
    channel.close()
  answered = {pod.get('name'): pod for pod in header.get('pods', [])}
  problems = []
  clients = {}
  for pod in server.pods:
    entry = answered.get(pod.name)
    if entry is None:
      problems.append(f'pod {pod.name}: not known to {server.name} (its '
                      'topology differs from this one)')
    elif 'error' in entry:
      problems.append(f'pod {pod.name}: {entry["error"]}')
    else:
      clients[pod.name] = [c.get('client_id') for c in
                           (entry.get('manifest') or {}).get('clients', [])]
  return problems, clients


def _not_ready(topology: topology_lib.Topology,
               tls: Optional[tls_lib.TlsFiles], timeout: float) -> list[str]:
  """What does not answer yet, or holds clients twice (empty: all ready)."""
  problems = []
  holder: dict[str, str] = {}
  for server in topology.edge_servers:
    server_problems, clients = _describe(server, tls, timeout)
    problems += server_problems
    for pod, ids in clients.items():
      for client in ids:
        if client in holder:
          # E.g. the edge tier was scaled and some pods still hold the old
          # assignment: the coordinator would refuse to start.
          problems.append(f'client {client} is on both {holder[client]} and '
                          f'{pod} (pods still re-placing their data?)')
        holder[client] = pod
  return problems


def wait_ready(topology: topology_lib.Topology,
               tls: Optional[tls_lib.TlsFiles], timeout: float,
               poll: float = 2.0, log=None) -> None:
  """Returns once every edge server and pod answers and no client is on two
  pods; UserError naming what is not ready after `timeout` seconds."""
  deadline = time.monotonic() + timeout
  last: list[str] = []
  while True:
    last = _not_ready(topology, tls, min(10.0, max(timeout, 1)))
    if not last:
      return
    if time.monotonic() >= deadline:
      raise UserError(f'cluster not ready after {timeout:.0f}s: '
                      + '; '.join(last))
    if log is not None:
      log(f'waiting ({len(last)} not ready): {last[0]}')
    time.sleep(poll)


def main(argv: Sequence[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  args = flags.FLAGS
  try:
    if not args.out:
      raise UserError('--out is required: where to write the topology YAML')
    topology = generate(
        args.pods, args.edge_servers, pod_name=args.pod_name,
        pod_address=args.pod_address, pod_health=args.pod_health,
        server_name=args.server_name, server_address=args.server_address,
        server_health=args.server_health, eval_data=args.eval_data or None,
        tls_dir=args.tls_dir or None)
    directory = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(directory, exist_ok=True)
    topology_lib.save(topology, args.out)
    print(f'topology_gen: {len(topology.pods)} pods under '
          f'{len(topology.edge_servers)} edge servers -> {args.out}',
          flush=True)
    if args.wait_ready_seconds > 0:
      tls = tls_lib.resolve(args.tls_dir, args.wait_tls_node, args.insecure,
                            'topology_gen --wait_ready_seconds')
      wait_ready(topology, tls, args.wait_ready_seconds,
                 log=lambda m: print(f'topology_gen: {m}', flush=True))
      print('topology_gen: every edge server and pod answers', flush=True)
  except UserError as e:
    print(f'error: topology_gen: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  define_flags()
  entry_point.run(main)
