"""Seeded uniform client sampling."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def sample_clients(client_ids: Sequence[str], clients_per_round: int,
                   seed: int, round_num: int) -> list[str]:
  """Samples clients uniformly without replacement for one round.

  The draw depends only on (seed, round_num), so a resumed run samples the
  same clients as an uninterrupted one.

  Args:
    client_ids: All client ids, in any order.
    clients_per_round: How many to draw.
    seed: The run's seed.
    round_num: The 1-based round.

  Returns:
    The sampled ids, in sampled order.
  """
  if not 0 < clients_per_round <= len(client_ids):
    raise ValueError(f'cannot sample {clients_per_round} of '
                     f'{len(client_ids)} clients')
  # Sorted first: the draw must not depend on where the list came from (one
  # local manifest, or the union of the edge pods' manifests).
  ordered = sorted(client_ids)
  rng = np.random.default_rng([seed, round_num])
  picks = rng.choice(len(ordered), size=clients_per_round, replace=False)
  return [ordered[i] for i in picks]


def sample_poisson(client_ids: Sequence[str], expected_per_round: float,
                   seed: int, round_num: int) -> list[str]:
  """Takes each client independently with p = expected / population.

  The sampling DP accounting assumes (`PoissonSampledDpEvent`); the round
  size varies and may be zero. Seeded by (seed, round_num) like
  `sample_clients`, with its own stream.
  """
  if not 0 < expected_per_round <= len(client_ids):
    raise ValueError(f'cannot sample {expected_per_round} of '
                     f'{len(client_ids)} clients')
  ordered = sorted(client_ids)
  rng = np.random.default_rng([seed, round_num, 1])
  taken = rng.random(len(ordered)) < expected_per_round / len(ordered)
  return [c for c, take in zip(ordered, taken) if take]


def sample(kind: str, client_ids: Sequence[str], clients_per_round: int,
           seed: int, round_num: int) -> list[str]:
  """`--client_sampling`: 'uniform' or 'poisson'."""
  if kind == 'poisson':
    return sample_poisson(client_ids, clients_per_round, seed, round_num)
  return sample_clients(client_ids, clients_per_round, seed, round_num)
