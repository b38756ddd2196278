"""Client sampling: seeded (reproducible), or secret (DP runs).

Without DP, a round's clients are a function of (--seed, round), so runs
repeat exactly. With DP the sample must be secret (amplification by sampling
assumes nobody knows who took part): `SecretSampler` draws from a key made
by the OS CSPRNG and kept in the run's checkpoint, never in its outputs.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
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


# Secret sampling (DP runs). Amplification by sampling holds only against
# someone who does not know the sample, so in a DP run the sample must not be
# a function of anything public (the --seed is in config.json).
SECRET_KEY_BYTES = 32


def new_secret_key() -> bytes:
  """A fresh sampler key from the OS CSPRNG (`secrets`)."""
  return secrets.token_bytes(SECRET_KEY_BYTES)


class SecretSampler:
  """Client sampling keyed by a secret: HMAC-SHA256 as the random source.

  Each (round, client) gets 256 pseudorandom bits, HMAC-SHA256(key, "kind
  round client"): a PRF keyed by 32 bytes from `secrets` (HMAC_DRBG, NIST SP
  800-90A, draws its output the same way). Without the key the draws are
  indistinguishable from uniform; with it (the checkpoint holds it) a
  resumed run draws exactly the samples of the uninterrupted run, and a
  round redone after a crash draws the same sample again.

  poisson: a client takes part iff its first 64 bits, as an integer h, has
    h * population < expected * 2^64 (probability expected / population,
    exactly up to 2^-64).
  uniform: the `expected` clients with the smallest 256-bit values: a
    uniformly random subset of that size (the ordering of i.i.d. uniform
    values is a uniform permutation).
  """

  def __init__(self, key: bytes):
    if len(key) < 16:
      raise ValueError('the sampler key must have at least 128 bits')
    self._key = bytes(key)

  def _draw(self, kind: str, round_num: int, client_id: str) -> bytes:
    message = f'{kind}\n{round_num}\n{client_id}'.encode()
    return hmac.new(self._key, message, hashlib.sha256).digest()

  def poisson(self, client_ids: Sequence[str], expected_per_round: int,
              round_num: int) -> list[str]:
    population = len(client_ids)
    if not 0 < expected_per_round <= population:
      raise ValueError(f'cannot sample {expected_per_round} of {population} '
                       'clients')
    limit = int(expected_per_round) << 64
    return [c for c in sorted(client_ids)
            if int.from_bytes(self._draw('poisson', round_num, c)[:8], 'big')
            * population < limit]

  def uniform(self, client_ids: Sequence[str], clients_per_round: int,
              round_num: int) -> list[str]:
    if not 0 < clients_per_round <= len(client_ids):
      raise ValueError(f'cannot sample {clients_per_round} of '
                       f'{len(client_ids)} clients')
    ranked = sorted(client_ids,
                    key=lambda c: self._draw('uniform', round_num, c))
    return ranked[:clients_per_round]

  def sample(self, kind: str, client_ids: Sequence[str],
             clients_per_round: int, round_num: int) -> list[str]:
    """`--client_sampling`: 'uniform' or 'poisson', as `sample` above."""
    if kind == 'poisson':
      return self.poisson(client_ids, clients_per_round, round_num)
    return self.uniform(client_ids, clients_per_round, round_num)
