"""Places each client's shard on exactly one edge pod's disk."""

from __future__ import annotations

import dataclasses
import os
import shutil

from data_prep import shards
from data_prep.errors import UserError


def assign(client_ids: list[str], pod_names: list[str]) -> dict[str, list[str]]:
  """Deals clients to pods round-robin (pod i gets clients i, i+P, ...)."""
  if not pod_names:
    raise ValueError('no pods to place clients on')
  placed: dict[str, list[str]] = {name: [] for name in pod_names}
  for i, client_id in enumerate(client_ids):
    placed[pod_names[i % len(pod_names)]].append(client_id)
  return placed


def assign_filled(client_ids: list[str], pod_names: list[str],
                  fix: str) -> dict[str, list[str]]:
  """`assign` of the sorted ids; UserError (ending with `fix`) if a pod is empty."""
  assigned = assign(sorted(client_ids), pod_names)
  empty = [p for p, ids in assigned.items() if not ids]
  if empty:
    raise UserError(f'{len(client_ids)} clients cannot fill {len(pod_names)} '
                    f'pods ({", ".join(empty)} would be empty); {fix}')
  return assigned


def _link_or_copy(source: str, target: str) -> None:
  os.makedirs(os.path.dirname(target), exist_ok=True)
  try:
    os.link(source, target)
  except OSError:  # Other filesystem, or no hard links: copy.
    shutil.copyfile(source, target)


def write_pod_dir(manifest: shards.Manifest, client_ids: list[str],
                  pod_dir: str) -> shards.Manifest:
  """A shard dir holding only `client_ids` (no eval split), as a pod sees it.

  If the data has per-client held-out shards (shards.HELD_OUT_DIR), those of
  `client_ids` go along, in the pod dir's own held_out/.
  """
  if os.path.exists(pod_dir):
    shutil.rmtree(pod_dir)
  os.makedirs(pod_dir)
  infos = tuple(manifest.client(c) for c in client_ids)
  for info in infos:
    _link_or_copy(manifest.path(info), os.path.join(pod_dir, info.file))
  pod_manifest = dataclasses.replace(manifest, shard_dir=pod_dir,
                                     clients=infos, eval=None)
  held_out = shards.load_held_out(manifest)
  if held_out is not None:
    held = set(held_out.client_ids())
    write_pod_dir(held_out, [c for c in client_ids if c in held],
                  os.path.join(pod_dir, shards.HELD_OUT_DIR))
  shards.write_manifest(pod_manifest)
  return pod_manifest


def write_eval_dir(manifest: shards.Manifest, eval_dir: str) -> shards.Manifest:
  """A shard dir holding only the held-out split, for the coordinator.

  Data with per-client held-out shards is evaluated on the pods: the
  coordinator then gets the manifest without the held-out examples.
  """
  if os.path.exists(eval_dir):
    shutil.rmtree(eval_dir)
  os.makedirs(eval_dir)
  if shards.load_held_out(manifest) is not None:
    manifest = dataclasses.replace(manifest, eval=None)
  if manifest.eval is not None:
    _link_or_copy(manifest.path(manifest.eval),
                  os.path.join(eval_dir, manifest.eval.file))
  eval_manifest = dataclasses.replace(manifest, shard_dir=eval_dir, clients=())
  shards.write_manifest(eval_manifest)
  return eval_manifest
