"""Accuracy of the default run vs the plain Keras FedAvg reference.

    python -m bench.quality_vs_keras [--rounds=30] [any train flag...]

Runs `tff_pipeline.train`'s defaults (or the given overrides) through our
pipeline and through `bench.keras_fedavg` (same clients, sampling, shuffles
and initial weights), then prints held-out accuracy at each evaluated round
and the gap.
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top
from absl import app
from absl import logging
from absl import flags
import tensorflow as tf  # pylint: disable=unused-import

from bench import keras_fedavg
from tff_pipeline.core import config as config_lib
from workers import local_runtime as runtime
from tff_pipeline import train  # pylint: disable=unused-import  (defines flags)
from tff_pipeline import plan
from tff_pipeline import api

FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  explicit = {n: FLAGS[n].value for n in config_lib.OPTION_FIELDS
              if FLAGS[n].present}
  explicit.setdefault('output_dir', tempfile.mkdtemp(prefix='quality-'))
  explicit.setdefault('progress', False)
  config = plan.resolve_config({}, explicit)
  runtime.use_local_runtime(config.clients_per_round)
  ours = api.run(config).rows
  reference = keras_fedavg.run(plan.load_task(config), config)
  print(f'{config.task}/{config.model}, {config.num_clients} clients '
        f'({config.partition}), {config.clients_per_round}/round, '
        f'{config.rounds} rounds, seed {config.seed}')
  print('round  tff_acc  keras_acc  gap')
  gaps = []
  for a, b in zip(ours, reference):
    if 'eval' in a and 'eval' in b:
      gap = a['eval']['accuracy'] - b['eval']['accuracy']
      gaps.append(gap)
      print(f'{a["round"]:5d}  {a["eval"]["accuracy"]:.4f}   '
            f'{b["eval"]["accuracy"]:.4f}   {gap:+.4f}')
  last3 = gaps[-3:]
  print(f'final gap {gaps[-1] * 100:+.2f} points; mean gap over the last '
        f'{len(last3)} evaluations {sum(last3) / len(last3) * 100:+.2f} points '
        '(target: within 1.5)')
  mean_ours = sum(r['round_seconds'] for r in ours) / len(ours)
  mean_ref = sum(r['round_seconds'] for r in reference) / len(reference)
  print(f's/round: tff {mean_ours:.1f}, keras {mean_ref:.1f}')
  return 0


if __name__ == '__main__':
  app.run(main)
