"""Splits a dataset's example indices among federated clients.

Pure numpy and deterministic given the np.random.Generator, so a partition
can be reproduced from (method, alpha, num_clients, seed) alone.
"""

import hashlib
import re
from typing import Sequence

import numpy as np

from data_prep import errors

_SAFE_ID = re.compile(r"[A-Za-z0-9_.-]+")


def iid(num_examples: int, num_clients: int,
        rng: np.random.Generator) -> list[np.ndarray]:
  """Shuffles indices 0..num_examples-1 and deals them out near-equally.

  Args:
    num_examples: number of examples to split.
    num_clients: number of clients, 1 <= num_clients <= num_examples.
    rng: source of randomness.

  Returns:
    num_clients int64 index arrays whose sizes differ by at most one.

  Raises:
    ValueError: invalid counts.
  """
  _check_counts(num_examples, num_clients)
  return [part.copy()
          for part in np.array_split(rng.permutation(num_examples),
                                     num_clients)]


def dirichlet(labels: np.ndarray, num_clients: int, alpha: float,
              rng: np.random.Generator, min_examples: int = 10,
              max_tries: int = 100) -> list[np.ndarray]:
  """Label-skewed split: FedML's "hetero" Dirichlet partition.

  For each class, client shares are drawn from Dir(alpha); clients that
  already hold >= num_examples / num_clients examples get no share, which
  keeps client sizes from exploding. The whole draw is repeated until every
  client holds >= min_examples. Small alpha means few classes per client.

  Args:
    labels: [N] integer class labels.
    num_clients: number of clients, 1 <= num_clients <= N.
    alpha: Dirichlet concentration, > 0.
    rng: source of randomness.
    min_examples: smallest acceptable client size.
    max_tries: draws to attempt before giving up (FedML loops forever).

  Returns:
    num_clients shuffled int64 index arrays; every index in exactly one.

  Raises:
    ValueError: invalid arguments.
    DataPrepError: no draw satisfied min_examples.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1 or labels.dtype.kind not in "iub":
    raise ValueError(f"labels must be a 1-D integer array, got "
                     f"{labels.dtype} of shape {labels.shape}")
  num_examples = len(labels)
  _check_counts(num_examples, num_clients)
  if not alpha > 0 or not np.isfinite(alpha):
    raise ValueError(f"alpha must be a positive number, got {alpha}")
  if min_examples < 0 or max_tries < 1:
    raise ValueError(f"need min_examples >= 0 and max_tries >= 1, got "
                     f"{min_examples} and {max_tries}")
  if num_clients * min_examples > num_examples:
    raise errors.DataPrepError(
        f"dirichlet partition cannot give each of {num_clients} clients "
        f">= {min_examples} examples from {num_examples}; use at most "
        f"{num_examples // max(min_examples, 1)} clients")

  # Stable sort groups indices by class, ascending within each class.
  order = np.argsort(labels, kind="stable")
  _, class_sizes = np.unique(labels, return_counts=True)
  by_class = np.split(order, np.cumsum(class_sizes)[:-1])
  for _ in range(max_tries):
    parts, sizes = _dirichlet_draw(by_class, num_clients, alpha, rng,
                                   cap=num_examples / num_clients)
    if sizes.min() >= min_examples:
      return [rng.permutation(np.concatenate(p)) for p in parts]
  raise errors.DataPrepError(
      f"dirichlet partition (alpha={alpha}) left some of {num_clients} "
      f"clients with < {min_examples} of {num_examples} examples in all "
      f"{max_tries} tries; use fewer clients or a larger --partition_alpha")


def natural(owner_ids: Sequence[str]) -> dict[str, np.ndarray]:
  """Groups example indices by their owner (e.g. writer or speaker).

  Args:
    owner_ids: owner of each example, indexed like the examples.

  Returns:
    {owner: ascending int64 indices of its examples}, owners sorted.
  """
  if len(owner_ids) == 0:
    return {}
  owners, inverse, counts = np.unique(np.asarray(owner_ids, dtype=str),
                                      return_inverse=True,
                                      return_counts=True)
  order = np.argsort(inverse, kind="stable")
  groups = np.split(order, np.cumsum(counts)[:-1])
  return {str(owner): group for owner, group in zip(owners, groups)}


def check_split(partition: str, num_clients: int, alpha: float,
                no_owners: str) -> None:
  """Checks a request to split a pool without owners (iid or dirichlet).

  Args:
    partition: The requested partition.
    num_clients: How many clients to split into.
    alpha: The Dirichlet concentration.
    no_owners: Why --partition=natural cannot apply, e.g. "CIFAR-10 has no
      owners".

  Raises:
    DataPrepError: naming the bad value and its fix.
  """
  if partition == "natural":
    raise errors.DataPrepError(
        f"{no_owners}; use --partition=iid or dirichlet")
  if partition not in ("iid", "dirichlet"):
    raise errors.DataPrepError(
        f"unknown --partition={partition}; use iid or dirichlet")
  if num_clients < 1:
    raise errors.DataPrepError(
        f"--num_clients={num_clients} must be at least 1")
  check_alpha(partition, alpha)


def check_alpha(partition: str, alpha: float) -> None:
  """A Dirichlet partition needs a positive, finite concentration."""
  if partition == "dirichlet" and not (alpha > 0 and np.isfinite(alpha)):
    raise errors.DataPrepError(
        f"--partition_alpha={alpha} must be a positive number (smaller is "
        "more label-skewed, e.g. 0.5)")


def _check_counts(num_examples: int, num_clients: int) -> None:
  if num_clients < 1:
    raise ValueError(f"num_clients must be >= 1, got {num_clients}")
  if num_clients > num_examples:
    raise ValueError(f"num_clients ({num_clients}) exceeds the number of "
                     f"examples ({num_examples}); use fewer clients")


def _dirichlet_draw(by_class: list[np.ndarray], num_clients: int,
                    alpha: float, rng: np.random.Generator,
                    cap: float) -> tuple[list[list[np.ndarray]], np.ndarray]:
  """One FedML hetero draw; returns per-client index pieces and sizes."""
  parts = [[] for _ in range(num_clients)]
  sizes = np.zeros(num_clients, np.int64)
  for class_indices in by_class:
    shuffled = rng.permutation(class_indices)
    open_clients = sizes < cap
    shares = rng.dirichlet(np.full(num_clients, alpha)) * open_clients
    if shares.sum() <= 0:
      # Tiny alpha can put all mass on full clients: spread evenly
      # over the open ones instead of dividing by zero as FedML does.
      shares = open_clients.astype(np.float64)
    cuts = (np.cumsum(shares / shares.sum()) * len(shuffled)).astype(int)
    for client, piece in enumerate(np.split(shuffled, cuts[:-1])):
      parts[client].append(piece)
      sizes[client] += len(piece)
  return parts, sizes


def safe_client_id(value: str) -> str:
  """A shard file name for an owner's name (a folder, a column value).

  Safe names ([A-Za-z0-9_.-]+, not '.' or '..') are kept; others are
  spelled safely and suffixed with a hash of the original, so distinct
  owners keep distinct ids.
  """
  if _SAFE_ID.fullmatch(value) and value not in (".", ".."):
    return value
  safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", value).strip("._") or "client"
  return f"{safe}-{hashlib.sha256(value.encode()).hexdigest()[:8]}"


def hold_out(indices: np.ndarray, fraction: float,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Splits one client's example indices into (kept, held out).

  Holds out round(fraction * n) examples (halves round up), chosen by
  `rng`, but always keeps at least one. Both parts come back sorted.
  """
  n = len(indices)
  held = min(n - 1, int(np.floor(fraction * n + 0.5))) if n else 0
  shuffled = rng.permutation(indices)
  return np.sort(shuffled[held:]), np.sort(shuffled[:held])
