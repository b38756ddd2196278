"""Puts one edge pod's clients (and only them) on its disk: the demo dataset.

    python -m workers.pod_data --pod_name=edge-3 --pods=10 \
        --out_dir=/data/shards --config=/config/train.yaml
    python -m workers.pod_data --eval_out=/eval --config=/config/train.yaml

Takes the data flags of training (--task, --data_dir, --num_clients,
--partition, --partition_alpha, --seed, or --config: every flag that is not
its own), has `python -m tff_pipeline.prepare` (workers.prepared_data) write
all shards into a scratch folder (--scratch_dir; removed afterwards, so the pod's volume never
holds other pods' shards), and writes the pod's shard dir with
workers.placement: the same round-robin assignment as workers.local_cluster
(client k of the sorted ids goes to pod k mod --pods), so every pod of a
deployment agrees on who holds what without talking to the others. With
--eval_out it writes the coordinator's held-out shard dir instead (or too).

Idempotent: a stamp in --out_dir records the pod, the pod count and the
data settings; a restart with the same ones reuses the shards (after
checking them), different ones (e.g. the edge tier was scaled) re-place them.

This step exists for the demo dataset, which every pod can derive from the
same public files. In a real deployment each site already has its own data:
its pod mounts a volume that data_prep wrote at the site, and this step is
dropped.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from typing import Any, Optional

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top
from absl import flags

from data_prep import entry_point
from data_prep import shards
from data_prep.errors import UserError
from workers import placement
from workers import prepared_data

STAMP_FILE = '.pod_data.json'
# What a placed dir holds; a stamp of another layout is placed again.
# 2: per-client held-out shards go with their clients (held_out/).
LAYOUT = 2


def define_flags() -> None:
  """The CLI's own flags (the rest go to tff_pipeline.prepare); defined only
  when run as a program, so tests can import this module."""
  flags.DEFINE_string(
      'pod_name', os.environ.get('POD_NAME', ''),
      'This pod (default: $POD_NAME), one of --pod_pattern over 0..pods-1.')
  flags.DEFINE_integer('pods', None, 'Number of edge pods.')
  flags.DEFINE_string('pod_pattern', 'edge-{i}',
                      'Name of pod i, as in workers.topology_gen.')
  flags.DEFINE_string('out_dir', '', "The pod's shard dir.")
  flags.DEFINE_string(
      'eval_out', '', "The coordinator's held-out shard dir (topology "
      'eval_data).')
  flags.DEFINE_string(
      'scratch_dir', '', 'Where data_prep writes all shards before placing '
      '(removed afterwards; default: a new temp dir). Ignored with '
      '--shard_dir.')
  flags.DEFINE_bool('force', False, 'Re-place even if the stamp matches.')


def pod_names(pods: int, pattern: str = 'edge-{i}') -> list[str]:
  if pods is None or pods < 1:
    raise UserError(f'--pods must be at least 1, got {pods}')
  if pods > 1 and '{i}' not in pattern:
    raise UserError(f'--pod_pattern={pattern!r} has no {{i}}')
  return [pattern.replace('{i}', str(i)) for i in range(pods)]


def _stamp(kind: str, data_key: str, **extra: Any) -> dict[str, Any]:
  return {'kind': kind, 'layout': LAYOUT, 'data': data_key, **extra}


def _read_stamp(directory: str) -> Optional[dict[str, Any]]:
  try:
    with open(os.path.join(directory, STAMP_FILE), encoding='utf-8') as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _write_stamp(directory: str, stamp: dict[str, Any]) -> None:
  path = os.path.join(directory, STAMP_FILE)
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    json.dump(stamp, f, indent=2, sort_keys=True)
  os.replace(path + '.tmp', path)


def _still_good(directory: str, stamp: dict[str, Any]) -> bool:
  if _read_stamp(directory) != stamp:
    return False
  try:
    shards.verify_shards(shards.load_manifest(directory))
  except (UserError, OSError, ValueError):
    return False
  return True


class Prepared:
  """data_prep's full output, made on first use in a scratch dir that
  close() removes (unless the data flags name their own --shard_dir)."""

  def __init__(self, data_args: list[str], scratch_dir: str):
    self._args = list(data_args)
    named = prepared_data.prepare(self._args, key_only=True)
    # The key names everything that decides the shards' contents.
    self.data_key: str = named['key']
    self._scratch = None
    self._shard_dir = None
    if not any(a.startswith('--shard_dir=') and a != '--shard_dir='
               for a in self._args):
      if scratch_dir:
        os.makedirs(scratch_dir, exist_ok=True)
      self._scratch = tempfile.mkdtemp(prefix='pod-data-',
                                       dir=scratch_dir or None)
      self._shard_dir = os.path.join(self._scratch, self.data_key)
    self._manifest: Optional[shards.Manifest] = None

  @property
  def manifest(self) -> shards.Manifest:
    if self._manifest is None:
      made = prepared_data.prepare(self._args, shard_dir=self._shard_dir)
      self._manifest = shards.load_manifest(made['shard_dir'])
      shards.verify_shards(self._manifest)
    return self._manifest

  def close(self) -> None:
    if self._scratch is not None:
      shutil.rmtree(self._scratch, ignore_errors=True)


def place_pod(prepared: Prepared, pod_name: str, pods: int, out_dir: str,
              pattern: str = 'edge-{i}', force: bool = False
              ) -> tuple[list[str], bool]:
  """Writes `pod_name`'s clients to out_dir; returns (client ids, reused)."""
  names = pod_names(pods, pattern)
  if pod_name not in names:
    raise UserError(f'pod {pod_name!r} is not one of {names[0]}..'
                    f'{names[-1]} (--pods={pods}, --pod_pattern={pattern})')
  stamp = _stamp('pod', prepared.data_key, pod=pod_name, pods=pods,
                 pattern=pattern)
  if not force and _still_good(out_dir, stamp):
    return shards.load_manifest(out_dir).client_ids(), True
  manifest = prepared.manifest
  assigned = placement.assign_filled(
      manifest.client_ids(), names,
      'lower the number of edge pods or raise --num_clients')
  placement.write_pod_dir(manifest, assigned[pod_name], out_dir)
  _write_stamp(out_dir, stamp)
  return assigned[pod_name], False


def place_eval(prepared: Prepared, eval_out: str, force: bool = False
               ) -> tuple[int, bool]:
  """Writes the held-out split to eval_out; returns (examples, reused)."""
  stamp = _stamp('eval', prepared.data_key)
  if not force and _still_good(eval_out, stamp):
    held_out = shards.load_manifest(eval_out).eval
    return (held_out.num_examples if held_out else 0), True
  written = placement.write_eval_dir(prepared.manifest, eval_out)
  _write_stamp(eval_out, stamp)
  return (written.eval.num_examples if written.eval else 0), False


def main(argv: list[str]) -> int:
  # argv[1:]: the flags that are not ours, i.e. the training data flags.
  args = flags.FLAGS
  prepared = None
  try:
    if not args.out_dir and not args.eval_out:
      raise UserError('nothing to do: give --out_dir (with --pod_name and '
                      '--pods) and/or --eval_out')
    if args.out_dir and not args.pod_name:
      raise UserError('--out_dir needs --pod_name (or $POD_NAME)')
    prepared = Prepared(argv[1:], args.scratch_dir)
    if args.out_dir:
      ids, reused = place_pod(prepared, args.pod_name, args.pods, args.out_dir,
                              args.pod_pattern, args.force)
      shown = ', '.join(ids[:5]) + (', ...' if len(ids) > 5 else '')
      print(f'pod_data: {args.pod_name}: {len(ids)} clients ({shown}) in '
            f'{args.out_dir}' + (' (already there)' if reused else ''),
            flush=True)
    if args.eval_out:
      examples, reused = place_eval(prepared, args.eval_out, args.force)
      print(f'pod_data: held-out split ({examples} examples) in '
            f'{args.eval_out}' + (' (already there)' if reused else ''),
            flush=True)
  except (UserError, OSError) as e:
    print(f'error: pod_data: {e}', file=sys.stderr)
    return 2
  finally:
    if prepared is not None:
      prepared.close()
  return 0


if __name__ == '__main__':
  define_flags()
  entry_point.run(main, known_only=True)
