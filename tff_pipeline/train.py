"""Federated training: `python -m tff_pipeline.train [--config=fedml.yaml] [flags]`.

Flags override the YAML config, which overrides the defaults. With no flags it
trains the TFF EMNIST CNN on Fashion-MNIST split over 100 Dirichlet(0.5)
clients, 10 per round, on the local TFF C++ runtime.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top
from absl import app
from absl import flags
from absl import logging
# TF must be imported before absl runs main: imported later, Keras builds
# Sequential models in a graph and fails ("Output tensors of a Sequential
# model must be the output of a TensorFlow `Layer`").
import tensorflow as tf  # pylint: disable=unused-import

from data_prep.errors import UserError
from tff_pipeline import api
from tff_pipeline import config_flags

FLAGS = flags.FLAGS
config_flags.define()


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  try:
    config = config_flags.resolve()
    print(f'training {config.task}/{config.model} with {config.algorithm} '
          f'({config.aggregator} aggregation): '
          f'{config.num_clients or "all"} clients ({config.partition}), '
          f'{config.clients_per_round}/round, {config.rounds} rounds -> '
          f'{config.output_dir}', file=sys.stderr)
    result = api.run(config)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  final = result.summary['final_eval']
  scores = ', '.join(f'{k} {v:.4f}' for k, v in sorted(
      final.items(), key=lambda kv: (kv[0] != 'accuracy', kv[0] != 'loss')))
  print(f'done: eval {scores} '
        f'after round {config.rounds}; {result.summary["wall_seconds"]:.0f}s; '
        f'results in {config.output_dir}', file=sys.stderr)
  if result.exported is not None:
    print(api.describe_export(result.exported), file=sys.stderr)
  else:
    print(f'warning: {result.summary["model"]["problem"]}', file=sys.stderr)
  spent = result.summary.get('privacy')
  if spent:
    epsilon = spent['epsilon']
    epsilon = f'{epsilon:.3f}' if isinstance(epsilon, float) else epsilon
    print(f'privacy: ({epsilon}, {spent["delta"]})-DP after '
          f'{spent["rounds"]} rounds at noise multiplier '
          f'{spent["noise_multiplier"]:.3f} ({spent["accountant"]} accountant)',
          file=sys.stderr)
  return 0


if __name__ == '__main__':
  app.run(main)
