"""Accuracy against epsilon: central DP (dp_fixed) and distributed DP.

    python -m bench.dp_quality [--budgets=16,8,4,2] [--rounds=100] \
        [--aggregators=dp_fixed,distributed_dp] [--seeds=0] \
        [--output_root=/tmp/dp_quality]

Fashion-MNIST, the 2NN (200-200 MLP, 199,210 parameters), 1,000 clients
(Dirichlet 0.5), Poisson sampling of 100 expected clients per round
(q = 0.1), delta 1e-5, --target_epsilon per budget: each aggregator
calibrates its own noise (dp_fixed: dp-accounting's sampled Gaussian;
distributed_dp: the Skellam RDP bound, Poisson-sampled as in
`ddp_accounting.poisson_subsampled_rdp`, and its bits), then trains with the same hyperparameters. A run with
the clip but no noise (dp_fixed, noise multiplier 0) is the reference.

Each run is `tff_pipeline.api.run` in this process, its outputs under
--output_root/<aggregator>-eps<budget>-s<seed>; a run whose summary.json is
there is read, not redone (the benchmark can be stopped and restarted).
The table prints the final held-out accuracy (the central test split) and
the noise each aggregator needed.

distributed_dp rounds run through the secure round's pieces
(`secagg.form.SecureForm`: clients' encoding, the modular sum, the server's
decoding) with an all-zero mask: SecAgg+ masks cancel exactly in the modular
sum (`distributed_dp_test`: the unmasked sum is the clean sum plus every
share once), so the model is the same as with real masks, and the SecAgg+
protocol for 100 parties per round costs time the quality does not depend
on. Its cost on pods is `bench.ddp_cluster`'s.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from typing import Any

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top
from absl import app
from absl import flags
import numpy as np
import tensorflow as tf  # pylint: disable=unused-import

from data_prep.errors import UserError
from tff_pipeline import api
from tff_pipeline import plan
from tff_pipeline.aggregation import distributed_dp
from tff_pipeline.learning import metrics_io
from tff_pipeline.secagg import form as secure_form
from workers.secagg import maskfile
from workers.secagg import messages

_BUDGETS = flags.DEFINE_list('budgets', ['16', '8', '4', '2'],
                             'Target epsilons.')
_AGGREGATORS = flags.DEFINE_list('aggregators', ['dp_fixed', 'distributed_dp'],
                                 'DP aggregators to compare.')
_SEEDS = flags.DEFINE_list('seeds', ['0'], 'Seeds (data split, init).')
_ROUNDS = flags.DEFINE_integer('rounds', 100, 'Rounds per run.')
_REFERENCE = flags.DEFINE_bool('reference', True,
                               'Also run the clip without noise.')
_OUTPUT_ROOT = flags.DEFINE_string(
    'output_root', os.path.join(tempfile.gettempdir(), 'dp_quality'),
    'Where the runs go (reused when complete).')
_MODEL = flags.DEFINE_string('model', '2nn', 'cnn or 2nn.')
_CLIP = flags.DEFINE_float('clip', 1.0, 'L2 clip of each update.')
_CLIENT_LR = flags.DEFINE_float('client_learning_rate', 0.1, 'Client SGD.')
_SERVER_OPTIMIZER = flags.DEFINE_string('server_optimizer', 'sgdm',
                                        'Server optimizer.')
_SERVER_LR = flags.DEFINE_float('server_learning_rate', 1.0, 'Server step.')
_SERVER_MOMENTUM = flags.DEFINE_float('server_momentum', 0.9,
                                      'Server momentum (sgdm).')
_EVAL_EVERY = flags.DEFINE_integer('eval_every', 10, 'Evaluate every N.')

SETTING = dict(task='fashion_mnist', num_clients=1000, clients_per_round=100,
               client_sampling='poisson', delta=1e-5, progress=False)


class _UnmaskedSecureRound:
  """The secure round's pieces with an all-zero mask (see the module doc)."""

  def __init__(self, form: secure_form.SecureForm, root: str):
    self._form = form
    self._root = root
    self._run = messages.new_run_nonce()

  def __call__(self, state, keys, client_ids, round_num):
    rid = messages.RoundId(self._run, round_num, 1)
    state = distributed_dp.set_participants(state, len(client_ids))
    maskfile.write(self._root, rid.tag,
                   np.zeros(self._form.length, np.uint64))
    try:
      accumulator, words = self._form.pod_round(self._form.prepare(state),
                                                list(keys), rid.tag)
    finally:
      maskfile.remove(self._root, rid.tag)
    return self._form.finish(state, accumulator,
                             self._form.unpack(words)), None


class _BenchSetup(plan.LocalSetup):

  def round_runner(self, process):
    if not plan.is_secure(self.config):
      return super().round_runner(process)
    root = tempfile.mkdtemp(prefix='dp-quality-masks-')
    self._mask_root = root
    return _UnmaskedSecureRound(
        secure_form.SecureForm(process.next, len(self.task.manifest.clients),
                               root), root)


def _run(name: str, **options: Any) -> dict[str, Any]:
  output_dir = os.path.join(_OUTPUT_ROOT.value, name)
  summary_path = os.path.join(output_dir, metrics_io.SUMMARY_FILE)
  if os.path.exists(summary_path):
    with open(summary_path, encoding='utf-8') as f:
      return json.load(f)
  if os.path.exists(output_dir):  # An interrupted run: start it again.
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.rmtree(output_dir)
  config = plan.resolve_config({}, dict(
      SETTING, model=_MODEL.value, rounds=_ROUNDS.value,
      eval_every=_EVAL_EVERY.value, clip=_CLIP.value,
      client_learning_rate=_CLIENT_LR.value,
      server_optimizer=_SERVER_OPTIMIZER.value,
      server_learning_rate=_SERVER_LR.value,
      server_momentum=_SERVER_MOMENTUM.value, output_dir=output_dir,
      **options))
  start = time.monotonic()
  real_setup = plan.setup
  plan.setup = _BenchSetup  # Only the mask generation differs (module doc).
  try:
    result = api.run(config)
  finally:
    plan.setup = real_setup
  print(f'{name}: {time.monotonic() - start:.0f} s, accuracy '
        f'{result.summary["final_eval"]["accuracy"]:.4f}', flush=True)
  return result.summary


def _row(summary: dict[str, Any]) -> dict[str, Any]:
  spent = summary.get('privacy') or {}
  return {
      'accuracy': summary['final_eval']['accuracy'],
      'epsilon': spent.get('epsilon'),
      'noise_multiplier': spent.get('noise_multiplier', 0.0),
      'bits': spent.get('bits'),
      'epsilon_coordinator': spent.get('epsilon_coordinator'),
      'seconds_per_round': summary['mean_round_seconds'],
  }


def main(argv: list[str]) -> None:
  del argv
  os.makedirs(_OUTPUT_ROOT.value, exist_ok=True)
  results: dict[str, Any] = {}
  seeds = [int(s) for s in _SEEDS.value]
  for seed in seeds:
    if _REFERENCE.value:
      results[f'reference-s{seed}'] = _row(_run(
          f'reference-s{seed}', aggregator='dp_fixed', noise_multiplier=0.0,
          seed=seed))
    for budget in _BUDGETS.value:
      for aggregator in _AGGREGATORS.value:
        name = f'{aggregator}-eps{budget}-s{seed}'
        try:
          results[name] = _row(_run(name, aggregator=aggregator,
                                    target_epsilon=float(budget), seed=seed))
        except UserError as e:
          print(f'{name}: error: {e}', flush=True)
  with open(os.path.join(_OUTPUT_ROOT.value, 'results.json'), 'w',
            encoding='utf-8') as f:
    json.dump(results, f, indent=2, sort_keys=True)

  def mean(name_of, field):
    values = [results[name_of(s)][field] for s in seeds
              if name_of(s) in results]
    return float(np.mean(values)) if values else float('nan')

  print(f'\nFashion-MNIST {_MODEL.value}, 1000 clients, Poisson q = 0.1, '
        f'{_ROUNDS.value} rounds, delta 1e-5, clip {_CLIP.value}, seeds '
        f'{seeds}; accuracy = final held-out accuracy (mean over seeds)\n')
  if _REFERENCE.value:
    print(f'no noise (clip only): accuracy '
          f'{mean(lambda s: f"reference-s{s}", "accuracy"):.4f}\n')
  print('| target eps | central z | central acc | distributed z (bits) | '
        'distributed acc | gap (points) | distributed eps_coordinator |')
  print('|---|---|---|---|---|---|---|')
  for budget in _BUDGETS.value:
    central = lambda s, b=budget: f'dp_fixed-eps{b}-s{s}'
    distributed = lambda s, b=budget: f'distributed_dp-eps{b}-s{s}'
    bits = results.get(distributed(seeds[0]), {}).get('bits')
    gap = 100 * (mean(central, 'accuracy') - mean(distributed, 'accuracy'))
    print(f'| {budget} | {mean(central, "noise_multiplier"):.3f} | '
          f'{mean(central, "accuracy"):.4f} | '
          f'{mean(distributed, "noise_multiplier"):.3f} ({bits}) | '
          f'{mean(distributed, "accuracy"):.4f} | {gap:+.2f} | '
          f'{mean(distributed, "epsilon_coordinator"):.1f} |')
  print('\nseconds per round (mean): ' + ', '.join(
      f'{name} {row["seconds_per_round"]:.1f}'
      for name, row in sorted(results.items())))


if __name__ == '__main__':
  app.run(main)
