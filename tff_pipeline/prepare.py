"""Prepares a task's per-client shards: `python -m tff_pipeline.prepare`.

    python -m tff_pipeline.prepare --task=fashion_mnist --num_clients=20
    python -m tff_pipeline.prepare --config=configs/movielens.yaml --key_only

Takes the data flags of `tff_pipeline.train` (--task, --data_dir,
--num_clients, --partition, --partition_alpha, --seed, --shard_dir, or
--config), prepares (or reuses) the shards and prints one JSON line on
stdout: {"key": <what decides the shards' contents>, "shard_dir": <dir>,
"task": <task>, "clients": <count>}. With --key_only it prints only the key
(and the shard dir it would use), preparing nothing. `workers.local_cluster`
and `workers.pod_data` run it as a child process, so the runtime never
imports the training package.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top
from absl import app
from absl import flags
import tensorflow as tf  # pylint: disable=unused-import  (before app.run)

from data_prep import entry_point
from data_prep import shards
from data_prep.errors import UserError
from tff_pipeline import config_flags
from tff_pipeline import plan

config_flags.define()
_KEY_ONLY = flags.DEFINE_bool(
    'key_only', False, 'Print the data key and shard dir; prepare nothing.')


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    print(f'error: unexpected arguments: {" ".join(argv[1:])}',
          file=sys.stderr)
    return 2
  try:
    config = config_flags.resolve()
    shard_dir = config.shard_dir or plan.default_shard_dir(config)
    out = {'key': plan.data_key(config), 'shard_dir': shard_dir,
           'task': config.task}
    if not _KEY_ONLY.value:
      manifest = plan.prepare_shards(config)
      # Large populations are verified where their shards are used.
      shards.verify_eval(manifest)
      shards.ShardVerifier(manifest).verify_if_few()
      out.update(shard_dir=manifest.shard_dir, clients=len(manifest.clients))
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(json.dumps(out, sort_keys=True), flush=True)
  return 0


if __name__ == '__main__':
  entry_point.run(main)
