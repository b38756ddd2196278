"""Our local TFF runtime vs a plain Keras FedAvg loop over the same clients.

    python -m bench.local_vs_keras [--rounds=3] [--num_clients=10] [--model=cnn]

Each side runs in its own process (so peak RSS is its own) on the same
Fashion-MNIST shards, sampling every client each round. Round 1 includes
tracing/compilation and is reported separately; s/round is the mean of the
later rounds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top
from absl import app
from absl import flags
import tensorflow as tf  # Before absl runs main; see tff_pipeline/train.py.
from absl import logging

_SIDE = flags.DEFINE_enum('side', None, ['tff', 'keras'],
                          'Internal: run one side and write JSON.')
_JSON_OUT = flags.DEFINE_string('json_out', None, 'Internal: result file.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Rounds per side (>= 2).')
_NUM_CLIENTS = flags.DEFINE_integer('num_clients', 10,
                                    'Clients; all train every round.')
_MODEL = flags.DEFINE_string('model', 'cnn', 'cnn, 2nn or lr.')
_BATCH = flags.DEFINE_integer('batch_size', 20, 'Client batch size.')


def _config():
  from tff_pipeline import plan
  return plan.resolve_config({}, dict(
      num_clients=_NUM_CLIENTS.value, clients_per_round=_NUM_CLIENTS.value,
      partition='iid', model=_MODEL.value, rounds=_ROUNDS.value,
      client_batch_size=_BATCH.value, output_dir=tempfile.mkdtemp(),
      eval_every=0, progress=False))


def _run_tff() -> dict:
  """The product path (api.run): rounds, metrics and checkpoints."""
  from bench import rss
  from tff_pipeline import api
  from workers import local_runtime as runtime
  config = _config()
  worker = runtime.use_local_runtime(config.clients_per_round)
  times, last = [], [time.monotonic()]

  def on_round(row):
    now = time.monotonic()
    # Wall time per round, checkpoint and metrics included, final eval not.
    times.append(now - last[0] - row.get('eval_seconds', 0.0))
    last[0] = now
    print(f'  tff round {row["round"]}: {times[-1]:.1f}s', file=sys.stderr)

  result = api.run(config, on_round=on_round)
  return dict(times=times, examples=result.rows[-1]['train']['num_examples'],
              loss=result.rows[-1]['train']['loss'],
              python_peak_mb=rss.self_peak_mb(),
              worker_peak_mb=rss.pid_peak_mb(worker.pid))


def _run_keras() -> dict:
  from bench import keras_fedavg, rss
  from tff_pipeline import plan
  config = _config()
  task = plan.load_task(config)
  rows = keras_fedavg.run(task, config)
  return dict(times=[r['round_seconds'] for r in rows],
              examples=sum(i.num_examples for i in task.manifest.clients),
              loss=rows[-1]['train']['loss'],
              python_peak_mb=rss.self_peak_mb(), worker_peak_mb=0.0)


def _side_in_child(side: str) -> dict:
  fd, out = tempfile.mkstemp(suffix='.json')
  os.close(fd)
  args = [sys.executable, '-m', 'bench.local_vs_keras', f'--side={side}',
          f'--json_out={out}', f'--rounds={_ROUNDS.value}',
          f'--num_clients={_NUM_CLIENTS.value}', f'--model={_MODEL.value}',
          f'--batch_size={_BATCH.value}']
  subprocess.run(args, check=True)
  with open(out) as f:
    return json.load(f)


def _steady(times: list[float]) -> float:
  later = times[1:] or times
  return sum(later) / len(later)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if _SIDE.value:
    result = _run_tff() if _SIDE.value == 'tff' else _run_keras()
    with open(_JSON_OUT.value, 'w') as f:
      json.dump(result, f)
    return 0
  if _ROUNDS.value < 2:
    raise app.UsageError('--rounds must be >= 2 (round 1 includes tracing)')
  tff_result = _side_in_child('tff')
  keras_result = _side_in_child('keras')
  print(f'workload: fashion_mnist {_MODEL.value}, {_NUM_CLIENTS.value} clients, '
        f'{tff_result["examples"]} examples/round, batch {_BATCH.value}, '
        f'{_ROUNDS.value} rounds (first excluded)')
  for name, r in (('tff_local', tff_result), ('keras_loop', keras_result)):
    peak = r['python_peak_mb'] + r['worker_peak_mb']
    print(f'{name:11s}: {_steady(r["times"]):6.1f} s/round  (round 1: '
          f'{r["times"][0]:.1f}s)  peak RSS {peak:7.0f} MB '
          f'(python {r["python_peak_mb"]:.0f} + worker {r["worker_peak_mb"]:.0f})'
          f'  last train loss {r["loss"]:.3f}')
  ratio = _steady(tff_result['times']) / _steady(keras_result['times'])
  print(f'ratio tff_local/keras_loop s/round: {ratio:.2f} (target <= 0.90)')
  return 0


if __name__ == '__main__':
  app.run(main)
