"""How cost grows with clients per round and with the population.

    python -m bench.scale [--populations=10000,100000] \
        [--per_round=100,1000] [--runtimes=local,pods] [--rounds=3] \
        [--model=2nn] [--pods=10] [--edge_servers=2]

Trains `bench.scale_task:SYNTHETIC` (28x28 synthetic images; every virtual
client a hard link to one of 1,000 real 20-image shards, written once per
population) for each population x clients-per-round, on the local runtime
and on `workers.local_cluster` pods (network namespaces and mutual TLS when
root and nginx allow, as a user gets them), each run its own
`tff_pipeline` process. Prints per run:

  start-up   process start to the start of round 1 (imports, manifest,
             shard checks, building the learning process, initial state);
             for pods also the cluster's start-up (placing the data,
             starting pods and edge servers until ready)
  s/round    mean wall time of rounds 2.. (round 1 traces)
  coord cpu  the coordinator process's CPU seconds per round (rounds 2..)
  peak RSS   of the whole process tree (this script's children: the
             trainer and its TFF worker, plus pods, edge servers and their
             executors), sampled every 0.25 s
  bytes      per round on the wire (pods: coordinator and edge-server tiers)
             against two bounds: a flat FedAvg's 2 x model x clients, and
             the tree's 2 x model x (pods used + edge servers)

then the growth of each from 100 to 1,000 clients per round and from
10,000 to 100,000 clients.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Optional

from absl import app
from absl import flags

if '--side' in sys.argv:
  # Before absl runs main (see tff_pipeline/train.py); only the child
  # trains: the parent, which samples memory, stays without TensorFlow.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top,unused-import

_SIDE = flags.DEFINE_bool('side', False, 'Internal: train once, write JSON.')
_JSON_OUT = flags.DEFINE_string('json_out', None, 'Internal: result file.')
_POPULATION = flags.DEFINE_integer('population', 0, 'Internal: clients.')
_PER_ROUND = flags.DEFINE_integer('clients_per_round', 0, 'Internal.')
_TOPOLOGY = flags.DEFINE_string('topology', '', 'Internal: pods topology.')

_POPULATIONS = flags.DEFINE_list('populations', ['10000', '100000'],
                                 'Virtual client populations.')
_PER_ROUNDS = flags.DEFINE_list('per_round', ['100', '1000'],
                                'Clients sampled per round.')
_RUNTIMES = flags.DEFINE_list('runtimes', ['local', 'pods'],
                              'local and/or pods.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Rounds per run (>= 2).')
_MODEL = flags.DEFINE_string('model', '2nn', '2nn or lr (or cnn).')
_PODS = flags.DEFINE_integer('pods', 10, 'Edge pods.')
_EDGE_SERVERS = flags.DEFINE_integer('edge_servers', 2, 'Edge servers.')

TASK = 'bench.scale_task:SYNTHETIC'
_SAMPLE_SECONDS = 0.25


def _data_args(population: int) -> list[str]:
  return [f'--task={TASK}', f'--num_clients={population}', '--partition=iid']


# Child: one training run.


def _since_process_start() -> float:
  """Seconds since this process started (from /proc, like `ps etime`)."""
  with open('/proc/self/stat', encoding='ascii') as f:
    start_ticks = int(f.read().rsplit(')', 1)[1].split()[19])
  return (time.clock_gettime(time.CLOCK_BOOTTIME) -
          start_ticks / os.sysconf('SC_CLK_TCK'))


def _cpu_seconds() -> float:
  import resource  # pylint: disable=g-import-not-at-top
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def _train_once() -> dict[str, Any]:
  """api.run with hooks; returns what the parent prints."""
  # pylint: disable=g-import-not-at-top
  from tff_pipeline import api
  from tff_pipeline import plan
  values = dict(task=TASK, num_clients=_POPULATION.value,
                clients_per_round=_PER_ROUND.value, partition='iid',
                model=_MODEL.value, rounds=_ROUNDS.value, eval_every=0,
                progress=False, output_dir=tempfile.mkdtemp(prefix='scale-'))
  if _TOPOLOGY.value:
    values.update(executor='remote', topology=_TOPOLOGY.value)
  config = plan.resolve_config({}, values)
  rounds: list[dict[str, Any]] = []
  last_cpu = [_cpu_seconds()]

  def on_round(row):
    now, cpu = _since_process_start(), _cpu_seconds()
    rounds.append({'start': now - row['round_seconds'] -
                            row.get('eval_seconds', 0.0),
                   'seconds': row['round_seconds'],
                   'cpu': cpu - last_cpu[0],
                   'network': row.get('network'),
                   'row_bytes': len(json.dumps(row))})
    last_cpu[0] = cpu

  result = api.run(config, on_round=on_round)
  start = time.monotonic()
  again = plan.setup(config)  # Manifest and shard checks (or describe).
  setup_seconds = time.monotonic() - start
  model_bytes = sum(int(w.numpy().nbytes) for w in
                    again.task.model_builder().trainable_weights)
  again.close()
  return {'rounds': rounds, 'setup_seconds': setup_seconds,
          'model_bytes': model_bytes,
          'accuracy': result.summary['final_eval']['accuracy']}


# Parent: process-tree memory, clusters, the table.


def _descendants(pid: int) -> list[int]:
  found, todo = [], [pid]
  while todo:
    parent = todo.pop()
    try:
      for task in os.listdir(f'/proc/{parent}/task'):
        with open(f'/proc/{parent}/task/{task}/children', encoding='ascii') as f:
          children = [int(p) for p in f.read().split()]
        found += children
        todo += children
    except OSError:
      continue
  return found


def _rss_mb(pid: int) -> float:
  try:
    with open(f'/proc/{pid}/status', encoding='ascii') as f:
      for line in f:
        if line.startswith('VmRSS:'):
          return int(line.split()[1]) / 1024.0
  except OSError:
    pass
  return 0.0


class TreeMemory:
  """Samples the summed RSS of this process's descendants."""

  def __init__(self):
    self._peak = 0.0
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()

  def _run(self):
    while not self._stop.wait(_SAMPLE_SECONDS):
      total = sum(_rss_mb(p) for p in set(_descendants(os.getpid())))
      self._peak = max(self._peak, total)

  def reset(self) -> None:
    self._peak = 0.0

  @property
  def peak_mb(self) -> float:
    return self._peak

  def stop(self) -> None:
    self._stop.set()
    self._thread.join()


def _run_child(population: int, per_round: int,
               topology: str = '') -> dict[str, Any]:
  fd, out = tempfile.mkstemp(suffix='.json')
  os.close(fd)
  args = [sys.executable, '-m', 'bench.scale', '--side', f'--json_out={out}',
          f'--population={population}', f'--clients_per_round={per_round}',
          f'--rounds={_ROUNDS.value}', f'--model={_MODEL.value}']
  if topology:
    args.append(f'--topology={topology}')
  subprocess.run(args, check=True)
  with open(out, encoding='utf-8') as f:
    return json.load(f)


def _prepare(population: int) -> None:
  """Writes the population's shards (not timed as start-up)."""
  subprocess.run([sys.executable, '-m', 'tff_pipeline.prepare',
                  *_data_args(population)], check=True,
                 stdout=subprocess.DEVNULL)


class _Cluster:
  """`python -m workers.local_cluster` over a population, as a user runs it."""

  def __init__(self, population: int):
    self.dir = tempfile.mkdtemp(prefix='scale-cluster-')
    self.topology = os.path.join(self.dir, 'topology.yaml')
    start = time.monotonic()
    self._process = subprocess.Popen(
        [sys.executable, '-m', 'workers.local_cluster',
         f'--pods={_PODS.value}', f'--edge_servers={_EDGE_SERVERS.value}',
         f'--topology_out={self.topology}',
         f'--cluster_dir={os.path.join(self.dir, "cluster")}',
         *_data_args(population)],
        stdout=subprocess.PIPE, text=True)
    for line in self._process.stdout:
      if 'are up' in line:
        break
    else:
      raise RuntimeError('workers.local_cluster did not come up')
    self.start_seconds = time.monotonic() - start

  def stop(self) -> None:
    self._process.send_signal(signal.SIGTERM)
    self._process.wait(timeout=120)


def _measure(runtime: str, population: int, per_round: int,
             memory: TreeMemory, cluster: Optional[_Cluster]) -> dict:
  memory.reset()
  result = _run_child(population, per_round,
                      cluster.topology if cluster else '')
  later = result['rounds'][1:]
  row = {
      'runtime': runtime, 'population': population, 'per_round': per_round,
      'startup': result['rounds'][0]['start'],
      'setup': result['setup_seconds'],
      'cluster_startup': cluster.start_seconds if cluster else None,
      's_round': sum(r['seconds'] for r in later) / len(later),
      'cpu_round': sum(r['cpu'] for r in later) / len(later),
      'peak_mb': memory.peak_mb,
      'row_bytes': max(r['row_bytes'] for r in result['rounds']),
      'accuracy': result['accuracy'],
      'model_bytes': result['model_bytes'],
  }
  network = later[-1]['network']
  if network:
    row['bytes'] = sum(v for k, v in network.items() if k.endswith('_bytes_sent')
                       or k.endswith('_bytes_received'))
    pods_used = min(_PODS.value, per_round)
    servers_used = min(_EDGE_SERVERS.value, pods_used)
    row['flat_bound'] = 2 * result['model_bytes'] * per_round
    row['tree_bound'] = 2 * result['model_bytes'] * (pods_used + servers_used)
  return row


def _print(rows: list[dict]) -> None:
  print(f'{"runtime":7s} {"clients":>8s} {"/round":>6s} {"start-up s":>10s} '
        f'{"setup s":>7s} {"s/round":>7s} {"coord cpu":>9s} {"peak RSS":>8s} '
        f'{"row B":>6s}  bytes/round (flat bound, tree bound)')
  for r in rows:
    cluster = (f' (+ cluster {r["cluster_startup"]:.0f})'
               if r['cluster_startup'] is not None else '')
    network = (f'{r["bytes"] / 1e6:.1f} MB ({r["flat_bound"] / 1e6:.0f} MB, '
               f'{r["tree_bound"] / 1e6:.1f} MB)' if 'bytes' in r else 'n/a')
    print(f'{r["runtime"]:7s} {r["population"]:8d} {r["per_round"]:6d} '
          f'{r["startup"]:10.1f} {r["setup"]:7.2f} {r["s_round"]:7.2f} '
          f'{r["cpu_round"]:9.2f} {r["peak_mb"]:6.0f}MB {r["row_bytes"]:6d}  '
          f'{network}{cluster}')
  print('growth (ratio of the larger to the smaller run):')
  keys = ('startup', 'setup', 's_round', 'cpu_round', 'peak_mb')
  by = {(r['runtime'], r['population'], r['per_round']): r for r in rows}
  for (runtime, population, per_round), r in sorted(by.items()):
    for other_key, what in (((runtime, population, per_round * 10),
                             f'{per_round}->{per_round * 10} per round at '
                             f'{population}'),
                            ((runtime, population * 10, per_round),
                             f'{population}->{population * 10} clients at '
                             f'{per_round}/round')):
      other = by.get(other_key)
      if other is None:
        continue
      ratios = ' '.join(f'{k} x{other[k] / r[k]:.2f}' if r[k] else f'{k} -'
                        for k in keys)
      print(f'  {runtime:5s} {what}: {ratios}')


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if _SIDE.value:
    result = _train_once()
    with open(_JSON_OUT.value, 'w', encoding='utf-8') as f:
      json.dump(result, f)
    return 0
  if _ROUNDS.value < 2:
    raise app.UsageError('--rounds must be >= 2 (round 1 traces)')
  populations = [int(p) for p in _POPULATIONS.value]
  per_rounds = [int(k) for k in _PER_ROUNDS.value]
  memory = TreeMemory()
  rows = []
  try:
    for population in populations:
      start = time.monotonic()
      _prepare(population)
      print(f'population {population}: shards ready in '
            f'{time.monotonic() - start:.0f}s', flush=True)
      for runtime in _RUNTIMES.value:
        cluster = _Cluster(population) if runtime == 'pods' else None
        try:
          for per_round in per_rounds:
            rows.append(_measure(runtime, population, per_round, memory,
                                 cluster))
            print(json.dumps(rows[-1]), flush=True)
        finally:
          if cluster is not None:
            cluster.stop()
  finally:
    memory.stop()
  print(f'workload: {TASK} model {_MODEL.value}, {_ROUNDS.value} rounds per '
        f'run (round 1 apart), {_PODS.value} pods under {_EDGE_SERVERS.value} '
        f'edge servers for "pods"; {os.cpu_count()} cores')
  _print(rows)
  return 0


if __name__ == '__main__':
  app.run(main)
