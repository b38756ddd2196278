"""Exports a run's global model: `python -m tff_pipeline.export <output_dir>`.

    python -m tff_pipeline.export runs/fashion_mnist-20261122-000102
    python -m tff_pipeline.export runs/fashion_mnist-20261122-000102 --round=20

Reads the run's config.json and a checkpoint (the latest, or --round's)
and writes the global model as a Keras SavedModel and a TFLite file, as
every run does at its end: `<output_dir>/model/` for the latest round,
`<output_dir>/model_round_<N>/` for an earlier one (or --model_dir).
"""

from __future__ import annotations

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import tensorflow as tf  # pylint: disable=unused-import  (before absl)

from data_prep import entry_point
from data_prep.errors import UserError
from tff_pipeline import api

_ROUND = flags.DEFINE_integer(
    'round', None, "The checkpoint's round (default: the latest kept).")
_MODEL_DIR = flags.DEFINE_string(
    'model_dir', '', 'Output folder (default: <output_dir>/model, or '
    '<output_dir>/model_round_<N> for an earlier round).')
_SHARD_DIR = flags.DEFINE_string(
    'shard_dir', '', "Shards of the run's data, when they are not where the "
    "run had them (runs on edge pods: default the topology's eval_data).")


def main(argv: list[str]) -> int:
  if len(argv) != 2:
    raise UserError('give one argument, the output_dir of a training run')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  exported = api.export(argv[1], _ROUND.value, _MODEL_DIR.value,
                        _SHARD_DIR.value)
  print(api.describe_export(exported))
  return 0


if __name__ == '__main__':
  entry_point.run(main)
