"""A task's shards, prepared by `python -m tff_pipeline.prepare` in a child.

The runtime (workers) sits below the training package and never imports it;
`workers.local_cluster` and `workers.pod_data` take the training data flags
(--task, --num_clients, --config, ...) and hand them to that child, which
knows every task (custom ones too) and prints one JSON line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any, Optional, Sequence

from data_prep.errors import UserError

PREPARE_MODULE = 'tff_pipeline.prepare'


def prepare(data_args: Sequence[str], shard_dir: Optional[str] = None,
            key_only: bool = False) -> dict[str, Any]:
  """Prepares (or reuses) the shards the data flags describe.

  Args:
    data_args: Training data flags, e.g. ['--task=mnist', '--num_clients=20'].
    shard_dir: Where the shards go (default: the flags' --shard_dir, else
      the training package's cache).
    key_only: Only name the data (its key and default shard dir).

  Returns:
    {'key', 'shard_dir', 'task'} and, unless key_only, 'clients'.

  Raises:
    UserError: the child refused the flags or the data (its error line).
  """
  argv = [sys.executable, '-m', PREPARE_MODULE, *data_args]
  if shard_dir:
    argv.append(f'--shard_dir={shard_dir}')
  if key_only:
    argv.append('--key_only')
  done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        text=True, check=False)
  if done.returncode != 0:
    lines = [l for l in done.stderr.splitlines() if l.startswith('error:')]
    detail = (lines[-1][len('error:'):].strip() if lines else
              (done.stderr.strip().splitlines() or ['no output'])[-1])
    raise UserError(f'preparing the data failed: {detail}')
  try:
    return json.loads(done.stdout.strip().splitlines()[-1])
  except (IndexError, ValueError):
    raise UserError(f'{PREPARE_MODULE} printed no result: '
                    f'{done.stdout[-200:]!r}') from None
