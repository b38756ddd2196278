"""Seconds per round on 10 pods: plain, secagg, secagg_dp, distributed_dp.

    python -m bench.ddp_cluster [--pods=10] [--edge_servers=2] [--rounds=3] \
        [--repeats=2] [--model=2nn] [--num_clients=100] \
        [--clients_per_round=20]

One `workers.local_cluster` (network namespaces when root, mutual TLS when
nginx is installed), then `python -m tff_pipeline.train --executor=remote`
for each aggregator, interleaved (plain, secagg, secagg_dp, distributed_dp,
then again) so that the machine's load drifts alike over all of them.
Every run: Fashion-MNIST, --num_clients clients (IID) on the pods,
--clients_per_round sampled per round (Poisson for the DP aggregators,
uniform otherwise), noise multiplier 1. Round 1 (tracing, graph set-up) is
left out; the figure is the mean of the other rounds over the repeats.
Secure rounds make real pairwise masks on the pods.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top
from absl import app
from absl import flags
from absl import logging
import tensorflow as tf  # pylint: disable=unused-import

from tff_pipeline import plan
from workers import local_cluster

_PODS = flags.DEFINE_integer('pods', 10, 'Edge pods.')
_EDGE_SERVERS = flags.DEFINE_integer('edge_servers', 2, 'Edge servers.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Rounds per run (>= 2).')
_REPEATS = flags.DEFINE_integer('repeats', 2, 'Runs per aggregator.')
_MODEL = flags.DEFINE_string('model', '2nn', 'cnn, 2nn or lr.')
_NUM_CLIENTS = flags.DEFINE_integer('num_clients', 100, 'Clients.')
_PER_ROUND = flags.DEFINE_integer('clients_per_round', 20,
                                  'Clients (expected) per round.')
_AGGREGATORS = flags.DEFINE_list(
    'aggregators', ['mean', 'secagg', 'secagg_dp', 'distributed_dp'],
    'Aggregators to time (mean: plain FedAvg sums).')
_NETNS = flags.DEFINE_enum('netns', 'auto', ['auto', 'true', 'false'],
                           'Pods in network namespaces (auto: when root).')


def _data_args() -> list[str]:
  return [f'--num_clients={_NUM_CLIENTS.value}', '--partition=iid',
          f'--model={_MODEL.value}']


def _train(aggregator: str, topology: str) -> list[dict]:
  out = tempfile.mkdtemp(prefix='bench-ddp-cluster-')
  subprocess.run([
      sys.executable, '-m', 'tff_pipeline.train', *_data_args(),
      f'--aggregator={aggregator}', f'--rounds={_ROUNDS.value}',
      f'--clients_per_round={_PER_ROUND.value}', '--noise_multiplier=1.0',
      '--eval_every=0', '--progress=false', '--executor=remote',
      f'--topology={topology}', f'--output_dir={out}/run'], check=True)
  with open(os.path.join(out, 'run', 'metrics.jsonl'), encoding='utf-8') as f:
    return [json.loads(line) for line in f]


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if _ROUNDS.value < 2:
    raise app.UsageError('--rounds must be >= 2 (round 1 includes tracing)')
  config = plan.resolve_config({}, dict(
      num_clients=_NUM_CLIENTS.value, partition='iid', model=_MODEL.value,
      output_dir=tempfile.mkdtemp()))
  shard_dir = plan.load_task(config).manifest.shard_dir
  use_netns = {'auto': None, 'true': True, 'false': False}[_NETNS.value]
  seconds: dict[str, list[float]] = {a: [] for a in _AGGREGATORS.value}
  first: dict[str, list[float]] = {a: [] for a in _AGGREGATORS.value}
  sizes: dict[str, list[int]] = {a: [] for a in _AGGREGATORS.value}
  with local_cluster.LocalCluster(shard_dir, _PODS.value, _EDGE_SERVERS.value,
                                  use_netns=use_netns) as cluster:
    for repeat in range(_REPEATS.value):
      for aggregator in _AGGREGATORS.value:
        rows = _train(aggregator, cluster.topology_path)
        failures = sum(len(r.get('failures') or ()) for r in rows)
        if failures:
          print(f'warning: {aggregator} repeat {repeat}: {failures} pod '
                'failures', file=sys.stderr)
        first[aggregator].append(rows[0]['round_seconds'])
        seconds[aggregator] += [r['round_seconds'] for r in rows[1:]]
        sizes[aggregator] += [r.get('clients_count', len(r.get('clients', ())))
                              for r in rows[1:]]
        print(f'{aggregator} repeat {repeat}: ' + ', '.join(
            f'{r["round_seconds"]:.1f}' for r in rows), flush=True)
    where = 'network namespaces' if cluster.use_netns else 'localhost'
    tls = ', mutual TLS' if cluster.use_tls else ''
  print(f'\nfashion_mnist {_MODEL.value}, {_NUM_CLIENTS.value} clients on '
        f'{_PODS.value} pods under {_EDGE_SERVERS.value} edge servers '
        f'({where}{tls}), {_PER_ROUND.value} (expected) per round, '
        f'{_ROUNDS.value} rounds x {_REPEATS.value}, round 1 apart\n')
  base = statistics.mean(seconds[_AGGREGATORS.value[0]])
  print(f'| aggregator | s/round (mean) | min-max | vs {_AGGREGATORS.value[0]}'
        ' | clients/round (mean) | round 1 (s) |')
  print('|---|---|---|---|---|---|')
  for aggregator in _AGGREGATORS.value:
    values = seconds[aggregator]
    print(f'| {aggregator} | {statistics.mean(values):.2f} | '
          f'{min(values):.2f}-{max(values):.2f} | '
          f'{statistics.mean(values) / base:.2f}x | '
          f'{statistics.mean(sizes[aggregator]):.1f} | '
          f'{statistics.mean(first[aggregator]):.1f} |')
  return 0


if __name__ == '__main__':
  app.run(main)
