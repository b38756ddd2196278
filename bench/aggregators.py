"""Cost of secure and private aggregation on the layered runtime.

    python -m bench.aggregators [--pods=10] [--edge_servers=2] [--rounds=4] \
        [--num_clients=10] [--model=cnn] \
        [--aggregators=mean,secagg,dp_adaptive,secagg_dp] [--repeats=1] \
        [--clip=1.0] [--noise_multiplier=1.0] [--json_out=PATH]

Same workload, same machine, one run, one `workers.local_cluster` (network
namespaces when root): `tff_pipeline.train --executor=remote` once per
aggregator, back to back, every client training every round (by default 10
clients x all 60k Fashion-MNIST images, as bench.distributed_vs_local). With
--repeats=N the list of aggregators is run N times in the given order (mean,
secagg, ..., mean, secagg, ...), which spreads slow drift of the machine over
all of them. Prints seconds per round of each (round 1, which includes
tracing and graph setup, apart), the ratio to plain `mean` against the
targets (secagg <= 1.25x, DP <= 1.05x; secagg_dp is shown against both),
bytes per round at the coordinator and edge-server tiers, what one pod
uploads per round over its float32 update (target for secagg: <= 1.5x;
SecAgg+ sends one masked sum per pod, packed at b bits per element, b =
--secagg_bits + ceil(log2(clients + 1))), and the final epsilon of the DP
runs.

`mean` is TFF's weighted FedAvg and `secagg` the same weighted mean under
SecAgg+; the DP aggregators are unweighted means of clipped updates. The
timing comparison is fair: the clients do the same training on the same
data, only how their updates are combined differs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any, Optional

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top
from absl import app
from absl import flags
from absl import logging
import tensorflow as tf  # Before absl runs main; see tff_pipeline/train.py.

from tff_pipeline import plan
from tff_pipeline.aggregation import registry
from tff_pipeline.core import config as config_lib
from workers import local_cluster

_PODS = flags.DEFINE_integer('pods', 10, 'Edge pods.')
_EDGE_SERVERS = flags.DEFINE_integer('edge_servers', 2, 'Edge servers.')
_ROUNDS = flags.DEFINE_integer('rounds', 4, 'Rounds per run (>= 2).')
_NUM_CLIENTS = flags.DEFINE_integer('num_clients', 10,
                                    'Clients; all train every round.')
_MODEL = flags.DEFINE_string('model', 'cnn', 'cnn, 2nn or lr.')
_AGGREGATORS = flags.DEFINE_list(
    'aggregators', ['mean', 'secagg', 'dp_adaptive', 'secagg_dp'],
    'Aggregators to time, in run order; must include mean (the baseline).')
_REPEATS = flags.DEFINE_integer(
    'repeats', 1, 'Passes over --aggregators (interleaved, in order).')
_CLIP = flags.DEFINE_float(
    'clip', 1.0, 'L2 clip of client updates (initial clip for dp_adaptive).')
_NOISE_MULTIPLIER = flags.DEFINE_float(
    'noise_multiplier', 1.0, 'DP noise stddev / clip.')
_NETNS = flags.DEFINE_enum('netns', 'auto', ['auto', 'true', 'false'],
                           'Pods in network namespaces (auto: when root).')
_JSON_OUT = flags.DEFINE_string('json_out', '',
                                'If set: write the measured numbers here.')

# Seconds per round relative to `mean` each aggregator should stay within.
_TARGETS: dict[str, tuple[float, ...]] = {
    'secagg': (1.25,),
    'dp_fixed': (1.05,),
    'dp_adaptive': (1.05,),
    'secagg_dp': (1.05, 1.25),
}


def _train_args(aggregator: str) -> list[str]:
  n = _NUM_CLIENTS.value
  return [f'--num_clients={n}', f'--clients_per_round={n}', '--partition=iid',
          f'--model={_MODEL.value}', f'--rounds={_ROUNDS.value}',
          '--eval_every=0', '--progress=false', f'--aggregator={aggregator}',
          f'--clip={_CLIP.value}',
          f'--noise_multiplier={_NOISE_MULTIPLIER.value}']


def _config(output_dir: str) -> config_lib.TrainConfig:
  n = _NUM_CLIENTS.value
  return plan.resolve_config({}, dict(
      num_clients=n, clients_per_round=n, partition='iid', model=_MODEL.value,
      rounds=_ROUNDS.value, eval_every=0, progress=False,
      output_dir=output_dir))


def _train(aggregator: str, out: str, extra: list[str]) -> list[dict]:
  subprocess.run([sys.executable, '-m', 'tff_pipeline.train',
                  *_train_args(aggregator), f'--output_dir={out}', *extra],
                 check=True)
  with open(os.path.join(out, 'metrics.jsonl'), encoding='utf-8') as f:
    return [json.loads(line) for line in f]


def _steady_rows(rows: list[dict]) -> list[dict]:
  return rows[1:] or rows


def _steady(rows: list[dict]) -> float:
  later = _steady_rows(rows)
  return sum(r['round_seconds'] for r in later) / len(later)


_NETWORK_KEYS = ('coordinator_bytes_sent', 'coordinator_bytes_received',
                 'edge_server_bytes_sent', 'edge_server_bytes_received')


def _bytes_per_round(runs: list[list[dict]]) -> dict[str, float]:
  """Mean bytes per round of each tier and direction, round 1 apart.

  Round 1 also ships the computations to the edge servers and pods.
  """
  later = [r for rows in runs for r in _steady_rows(rows)]
  return {k: sum(r['network'][k] for r in later) / len(later)
          for k in _NETWORK_KEYS}


def _epsilon_text(privacy: Optional[dict[str, Any]]) -> str:
  if not privacy:
    return '-'
  epsilon = privacy['epsilon']
  epsilon = f'{epsilon:.2f}' if isinstance(epsilon, float) else str(epsilon)
  return f'{epsilon} (delta {privacy["delta"]:g})'


def _measure(aggregator: str, runs: list[list[dict]]) -> dict[str, Any]:
  """Per-aggregator numbers over its runs (one per pass)."""
  per_pass = [_steady(rows) for rows in runs]
  network = _bytes_per_round(runs)
  return {
      'aggregator': aggregator,
      'seconds_per_round': sum(per_pass) / len(per_pass),
      'seconds_per_round_per_pass': per_pass,
      'round1_seconds': [rows[0]['round_seconds'] for rows in runs],
      'network_per_round': network,
      'coordinator_bytes_per_round': (network['coordinator_bytes_sent'] +
                                      network['coordinator_bytes_received']),
      'edge_server_bytes_per_round': (network['edge_server_bytes_sent'] +
                                      network['edge_server_bytes_received']),
      # Updates on their way up: pods -> edge servers -> coordinator.
      'upload_bytes_per_round': (network['coordinator_bytes_received'] +
                                 network['edge_server_bytes_received']),
      'privacy': runs[-1][-1].get('privacy'),
      'failures': sum(len(r.get('failures', [])) for rows in runs
                      for r in rows),
  }


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if _ROUNDS.value < 2:
    raise app.UsageError('--rounds must be >= 2 (round 1 includes tracing)')
  if _REPEATS.value < 1:
    raise app.UsageError('--repeats must be >= 1')
  aggregators = list(dict.fromkeys(_AGGREGATORS.value))
  unknown = [a for a in aggregators if a not in registry.AGGREGATORS]
  if unknown:
    raise app.UsageError(f'--aggregators: unknown {unknown}; choose from '
                         f'{", ".join(registry.AGGREGATORS)}')
  if 'mean' not in aggregators:
    raise app.UsageError('--aggregators must include mean (the baseline)')

  # Runs and cluster (data, logs) in one folder: removed after a good run,
  # kept for the logs otherwise.
  root = tempfile.mkdtemp(prefix='bench-aggregators-')
  config = _config(os.path.join(root, 'config'))
  task = plan.load_task(config)
  model_bytes = sum(w.numpy().nbytes
                    for w in task.model_builder().trainable_weights)
  use_netns = {'auto': None, 'true': True, 'false': False}[_NETNS.value]
  runs: dict[str, list[list[dict]]] = {a: [] for a in aggregators}
  try:
    with local_cluster.LocalCluster(
        plan.load_task(config).manifest.shard_dir, _PODS.value,
        _EDGE_SERVERS.value,
        cluster_dir=os.path.join(root, 'cluster'),
        use_netns=use_netns) as cluster:
      extra = ['--executor=remote', f'--topology={cluster.topology_path}']
      for repeat in range(_REPEATS.value):
        for aggregator in aggregators:
          print(f'pass {repeat + 1}/{_REPEATS.value}: {aggregator}',
                file=sys.stderr)
          out = os.path.join(root, f'{repeat}-{aggregator}')
          runs[aggregator].append(_train(aggregator, out, extra))
  except BaseException:
    print(f'runs and cluster logs kept in {root}', file=sys.stderr)
    raise
  shutil.rmtree(root, ignore_errors=True)

  results = {a: _measure(a, runs[a]) for a in aggregators}
  plain = results['mean']
  participants = _NUM_CLIENTS.value
  print(f'workload: fashion_mnist {_MODEL.value} ({model_bytes / 1e6:.2f} MB '
        f'of weights), {participants} clients x '
        f'{runs["mean"][-1][-1]["train"]["num_examples"]} examples/round, '
        f'{_ROUNDS.value} rounds per run (round 1 apart)')
  use_tls = getattr(cluster, 'use_tls', False)
  print(f'cluster: {_PODS.value} edge pods under {_EDGE_SERVERS.value} edge '
        f'servers ({"network namespaces" if cluster.use_netns else "localhost"}'
        f', {"mutual TLS" if use_tls else "plaintext gRPC"}); clip '
        f'{_CLIP.value:g}, noise multiplier {_NOISE_MULTIPLIER.value:g}')
  print(f'run order: {", ".join(aggregators)}'
        + (f' (x{_REPEATS.value} passes, interleaved)'
           if _REPEATS.value > 1 else ''))
  print(f'{"aggregator":<12} {"s/round":>8} {"round 1":>8} {"ratio":>6}  '
        f'{"coord MB/rd":>11} {"edge MB/rd":>10} {"bytes x":>7} '
        f'{"upload x":>8} {"pod up/fp32":>11}  '
        f'{"target":<30} epsilon')
  for aggregator in aggregators:
    r = results[aggregator]
    ratio = r['seconds_per_round'] / plain['seconds_per_round']
    r['ratio_to_mean'] = ratio
    plain_bytes = (plain['coordinator_bytes_per_round'] +
                   plain['edge_server_bytes_per_round'])
    all_bytes = (r['coordinator_bytes_per_round'] +
                 r['edge_server_bytes_per_round'])
    r['bytes_ratio_to_mean'] = all_bytes / plain_bytes
    r['upload_ratio_to_mean'] = (r['upload_bytes_per_round'] /
                                 plain['upload_bytes_per_round'])
    # Every pod holds a client and takes part in every round here.
    r['pod_upload_bytes'] = (r['network_per_round']
                             ['edge_server_bytes_received'] / _PODS.value)
    r['pod_upload_over_fp32'] = r['pod_upload_bytes'] / model_bytes
    r['targets'] = [{'max_ratio': t, 'met': ratio <= t}
                    for t in _TARGETS.get(aggregator, ())]
    target = ', '.join(f'<= {t["max_ratio"]:.2f}x '
                       f'{"met" if t["met"] else "MISSED"}'
                       for t in r['targets']) or '(baseline)'
    round1 = sum(r['round1_seconds']) / len(r['round1_seconds'])
    print(f'{aggregator:<12} {r["seconds_per_round"]:8.2f} {round1:8.1f} '
          f'{ratio:6.3f}  {r["coordinator_bytes_per_round"] / 1e6:11.2f} '
          f'{r["edge_server_bytes_per_round"] / 1e6:10.2f} '
          f'{r["bytes_ratio_to_mean"]:7.2f} {r["upload_ratio_to_mean"]:8.2f} '
          f'{r["pod_upload_over_fp32"]:11.3f}  '
          f'{target:<30} {_epsilon_text(r["privacy"])}')
    if _REPEATS.value > 1:
      print(f'{"":<12} per pass: ' + ', '.join(
          f'{s:.2f}' for s in r['seconds_per_round_per_pass']))
  print("ratio: s/round over mean's; bytes x: coordinator + edge-server bytes "
        "per round over mean's; upload x: the same for the updates only "
        '(pods -> edge servers -> coordinator; the broadcast down is float32 '
        'for every aggregator); pod up/fp32: bytes one pod sends its edge '
        'server per round over its float32 update')

  failures = sum(r['failures'] for r in results.values())
  if failures:
    print(f'warning: {failures} pod failures during the runs', file=sys.stderr)
  if _JSON_OUT.value:
    report = {
        'workload': {
            'model': _MODEL.value, 'model_bytes': model_bytes,
            'pods': _PODS.value, 'edge_servers': _EDGE_SERVERS.value,
            'num_clients': participants, 'rounds': _ROUNDS.value,
            'repeats': _REPEATS.value, 'clip': _CLIP.value,
            'noise_multiplier': _NOISE_MULTIPLIER.value,
            'network_namespaces': cluster.use_netns, 'tls': use_tls,
        },
        'run_order': aggregators * _REPEATS.value,
        'results': results,
    }
    with open(_JSON_OUT.value, 'w', encoding='utf-8') as f:
      json.dump(report, f, indent=2)  # Epsilons are JSON-safe already.
      f.write('\n')
    print(f'wrote {_JSON_OUT.value}', file=sys.stderr)
  return 0


if __name__ == '__main__':
  app.run(main)
