"""The layered runtime (edge pods under edge servers) vs the local runtime.

    python -m bench.distributed_vs_local [--pods=10] [--edge_servers=2] \
        [--rounds=3] [--num_clients=10] [--model=cnn]

Same workload, same machine, one run: `tff_pipeline.train` on the local
runtime, then on a `workers.local_cluster` (network namespaces when root),
every client training every round (by default 10 clients x all 60k
Fashion-MNIST images, as bench.local_vs_keras). Prints seconds per round of
each (round 1, which includes tracing and graph setup, apart), their ratio,
and bytes on the wire per round against the lower bound of
2 x model size x participants.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top
from absl import app
from absl import flags
from absl import logging
import tensorflow as tf  # Before absl runs main; see tff_pipeline/train.py.

from bench import rss
from tff_pipeline.core import config as config_lib
from workers import local_cluster
from tff_pipeline import plan

_PODS = flags.DEFINE_integer('pods', 10, 'Edge pods.')
_EDGE_SERVERS = flags.DEFINE_integer('edge_servers', 2, 'Edge servers.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Rounds per runtime (>= 2).')
_NUM_CLIENTS = flags.DEFINE_integer('num_clients', 10,
                                    'Clients; all train every round.')
_MODEL = flags.DEFINE_string('model', 'cnn', 'cnn, 2nn or lr.')
_NETNS = flags.DEFINE_enum('netns', 'auto', ['auto', 'true', 'false'],
                           'Pods in network namespaces (auto: when root).')


def _train_args() -> list[str]:
  n = _NUM_CLIENTS.value
  return [f'--num_clients={n}', f'--clients_per_round={n}', '--partition=iid',
          f'--model={_MODEL.value}', f'--rounds={_ROUNDS.value}',
          '--eval_every=0', '--progress=false']


def _config() -> config_lib.TrainConfig:
  n = _NUM_CLIENTS.value
  return plan.resolve_config({}, dict(
      num_clients=n, clients_per_round=n, partition='iid', model=_MODEL.value,
      rounds=_ROUNDS.value, eval_every=0, progress=False,
      output_dir=tempfile.mkdtemp()))


def _train(extra: list[str]) -> list[dict]:
  out = tempfile.mkdtemp(prefix='bench-run-')
  subprocess.run([sys.executable, '-m', 'tff_pipeline.train', *_train_args(),
                  f'--output_dir={out}/run', *extra], check=True)
  with open(os.path.join(out, 'run', 'metrics.jsonl'), encoding='utf-8') as f:
    return [json.loads(line) for line in f]


def _steady(rows: list[dict]) -> float:
  later = rows[1:] or rows
  return sum(r['round_seconds'] for r in later) / len(later)


def _cluster_rss_mb(cluster: local_cluster.LocalCluster) -> float:
  """Current RSS of every pod and edge server, with their executors."""
  total = 0.0
  for node in cluster.pods + cluster.edge_servers:
    pids = [node.process.pid]
    try:
      with open(f'/proc/{node.process.pid}/task/{node.process.pid}/children',
                encoding='ascii') as f:
        pids += [int(p) for p in f.read().split()]
    except OSError:
      pass
    total += sum(rss.pid_current_mb(p) for p in pids)
  return total


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if _ROUNDS.value < 2:
    raise app.UsageError('--rounds must be >= 2 (round 1 includes tracing)')
  config = _config()
  task = plan.load_task(config)
  model_bytes = sum(w.numpy().nbytes
                    for w in task.model_builder().trainable_weights)

  local_rows = _train([])
  use_netns = {'auto': None, 'true': True, 'false': False}[_NETNS.value]
  with local_cluster.LocalCluster(plan.load_task(config).manifest.shard_dir,
                                  _PODS.value, _EDGE_SERVERS.value,
                                  use_netns=use_netns) as cluster:
    remote_rows = _train(['--executor=remote',
                          f'--topology={cluster.topology_path}'])
    cluster_mb = _cluster_rss_mb(cluster)

  participants = _NUM_CLIENTS.value
  print(f'workload: fashion_mnist {_MODEL.value} ({model_bytes / 1e6:.2f} MB '
        f'of weights), {participants} clients x '
        f'{remote_rows[-1]["train"]["num_examples"]} examples/round, '
        f'{_ROUNDS.value} rounds (round 1 apart)')
  print(f'cluster: {_PODS.value} edge pods under {_EDGE_SERVERS.value} edge '
        f'servers ({"network namespaces" if cluster.use_netns else "localhost"})'
        f', RSS after the run {cluster_mb:.0f} MB')
  local_s, remote_s = _steady(local_rows), _steady(remote_rows)
  print(f'local      : {local_s:6.1f} s/round  (round 1: '
        f'{local_rows[0]["round_seconds"]:.1f}s)')
  print(f'distributed: {remote_s:6.1f} s/round  (round 1: '
        f'{remote_rows[0]["round_seconds"]:.1f}s)')
  print(f'ratio distributed/local s/round: {remote_s / local_s:.2f} '
        '(target <= 1.3, aim <= 1.0)')
  net = remote_rows[-1]['network']
  bound = 2 * model_bytes * participants
  coordinator = net['coordinator_bytes_sent'] + net['coordinator_bytes_received']
  edge = net['edge_server_bytes_sent'] + net['edge_server_bytes_received']
  print(f'bytes/round at the coordinator: {coordinator / 1e6:.1f} MB '
        f'(sent {net["coordinator_bytes_sent"] / 1e6:.1f}, received '
        f'{net["coordinator_bytes_received"] / 1e6:.1f})')
  print(f'bytes/round edge servers<->pods: {edge / 1e6:.1f} MB')
  print(f'total bytes/round: {(coordinator + edge) / 1e6:.1f} MB; lower bound '
        f'2 x model x participants = {bound / 1e6:.1f} MB '
        f'(ratio {(coordinator + edge) / bound:.2f})')
  failures = sum(len(r.get('failures', [])) for r in remote_rows)
  if failures:
    print(f'warning: {failures} pod failures during the run', file=sys.stderr)
  return 0


if __name__ == '__main__':
  app.run(main)
