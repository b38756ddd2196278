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

from data_prep.errors import DataPrepError
from tff_pipeline import config as config_lib
from tff_pipeline import runtime
from tff_pipeline import training_loop
from tff_pipeline.errors import UserError
from workers import metrics as metrics_lib

FLAGS = flags.FLAGS

flags.DEFINE_string('config', None,
                    'FedML-style YAML config (sections common_args, data_args, '
                    'model_args, train_args, validation_args, device_args, '
                    'comm_args, tracking_args); flags override it.')


def _define_option_flags() -> None:
  for name, field in config_lib.OPTION_FIELDS.items():
    meta = field.metadata
    help_text = meta['help']
    if meta['choices']:
      help_text += f' One of: {", ".join(meta["choices"])}.'
    aliases = ', '.join(meta['fedml'])
    help_text += f' YAML: {meta["section"]}.{name}'
    help_text += f' (FedML: {aliases}).' if aliases else '.'
    default = field.default
    if isinstance(default, bool):
      flags.DEFINE_bool(name, default, help_text)
    elif isinstance(default, int):
      flags.DEFINE_integer(name, default, help_text)
    elif isinstance(default, float):
      flags.DEFINE_float(name, default, help_text)
    else:
      flags.DEFINE_string(name, default, help_text)


_define_option_flags()


def config_from_flags() -> config_lib.TrainConfig:
  """Resolves defaults < --config YAML < explicit flags."""
  yaml_values = {}
  if FLAGS.config:
    overrides = config_lib.parse_yaml(FLAGS.config)
    warning = overrides.warning()
    if warning:
      logging.warning('%s', warning)
      print(f'warning: {warning}', file=sys.stderr)
    yaml_values = overrides.values
  explicit = {name: FLAGS[name].value
              for name in config_lib.OPTION_FIELDS if FLAGS[name].present}
  return config_lib.resolve(yaml_values, explicit)


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  try:
    config = config_from_flags()
    print(f'training {config.task}/{config.model} with {config.algorithm} '
          f'({config.aggregator} aggregation): '
          f'{config.num_clients or "all"} clients ({config.partition}), '
          f'{config.clients_per_round}/round, {config.rounds} rounds -> '
          f'{config.output_dir}', file=sys.stderr)
    # Remote: the local executor only merges and finishes rounds.
    runtime.use_local_runtime(
        config.clients_per_round if config.executor == 'local' else 1)
    on_round = None
    if config.metrics_port:  # Prometheus /metrics (workers/metrics.py).
      exporter = metrics_lib.CoordinatorMetrics()
      exporter.start_run(config_lib.to_dict(config))
      try:
        metrics_lib.serve(config.metrics_port, exporter.registry)
      except OSError as e:
        raise UserError(f'--metrics_port={config.metrics_port}: {e.strerror}; '
                        'choose a free port') from None
      on_round = exporter.observe_round
    result = training_loop.run(config, on_round=on_round)
  except (UserError, DataPrepError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  final = result.summary['final_eval']
  print(f'done: eval accuracy {final["accuracy"]:.4f}, loss {final["loss"]:.4f} '
        f'after round {config.rounds}; {result.summary["wall_seconds"]:.0f}s; '
        f'results in {config.output_dir}', file=sys.stderr)
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
