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

from data_prep import entry_point
from data_prep.errors import UserError
from tff_pipeline import api
from tff_pipeline import config_flags
from tff_pipeline import plan
from tff_pipeline.core import config as config_lib
from workers import metrics as metrics_lib

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
    on_round = None
    if config.metrics_port:  # Prometheus /metrics (workers/metrics.py).
      exporter = metrics_lib.CoordinatorMetrics()
      exporter.start_run(config_lib.to_dict(config))
      try:
        metrics_lib.serve(config.metrics_port, exporter.registry,
                          tls=plan.coordinator_tls(config))
      except OSError as e:
        raise UserError(f'--metrics_port={config.metrics_port}: {e.strerror}; '
                        'choose a free port') from None
      on_round = exporter.observe_round
    result = api.run(config, on_round=on_round)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  final = result.summary['final_eval'] or {}
  scores = ('eval ' + ', '.join(f'{k} {v:.4f}' for k, v in sorted(
      final.items(), key=lambda kv: (kv[0] != 'accuracy', kv[0] != 'loss')))
            if final else
            'evaluation withheld (DP: it would use clients\' data)')
  print(f'done: {scores} after round {config.rounds}; '
        f'{result.summary["wall_seconds"]:.0f}s; '
        f'results in {config.output_dir}', file=sys.stderr)
  if result.exported is not None:
    print(api.describe_export(result.exported), file=sys.stderr)
  else:
    print(f'warning: {result.summary["model"]["problem"]}', file=sys.stderr)
  if result.summary.get('eval_note'):
    print(f'eval: {result.summary["eval_note"]}', file=sys.stderr)
  spent = result.summary.get('privacy')
  if spent:
    epsilon = spent['epsilon']
    epsilon = f'{epsilon:.3f}' if isinstance(epsilon, float) else epsilon
    amplified = ('' if spent.get('amplified', True) else
                 ', not amplified by sampling: participants are logged')
    print(f'privacy: ({epsilon}, {spent["delta"]})-DP after '
          f'{spent["rounds"]} rounds at noise multiplier '
          f'{spent["noise_multiplier"]:.3f} ({spent["accountant"]} accountant'
          f'{amplified})', file=sys.stderr)
    if 'epsilon_coordinator' in spent:
      coordinator = spent['epsilon_coordinator']
      coordinator = (f'{coordinator:.3f}' if isinstance(coordinator, float)
                     else coordinator)
      print(f'privacy against the coordinator (it knows the sample): '
            f'epsilon {coordinator}; bits {spent["bits"]}', file=sys.stderr)
  return 0


if __name__ == '__main__':
  entry_point.run(main)
