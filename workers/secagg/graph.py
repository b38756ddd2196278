"""The SecAgg+ neighbour graph: a Harary graph H(k, n) with random labels.

Bell, Bonawitz, Gascon, Lepoint, Raykova, "Secure Single-Server Aggregation
with (Poly)Logarithmic Overhead", CCS 2020: each party masks with, and
secret-shares to, only its k = O(log n) neighbours in a random k-regular
graph, instead of all n - 1 others (Bonawitz et al. 2017).

H(k, n) puts n positions on a circle and joins every position to the k/2
nearest on each side (plus the opposite one when k is odd and n even); it is
k-regular and k-connected. A seed assigns parties to positions: party i goes
to the rank of SHA-256(domain, seed, i) among all parties, a uniformly random
permutation whenever the seed is. Who chooses the seed matters (a chosen
labelling can surround a victim with colluders): `crypto.graph_seed` derives
it from every party's committed-then-revealed randomness, so no single party
and not the server can steer it.

Defaults: k = min(n - 1, 2 * ceil(log2 n)) (even, so H(k, n) is regular for
every n; at most the bound 2 * ceil(log2 n) + 1). k = n - 1 is the complete
graph, i.e. Bonawitz et al.'s protocol.
"""

from __future__ import annotations

import hashlib
import math

_DOMAIN = b'secagg+ graph labels v1\x00'


def max_degree(n: int) -> int:
  """2 * ceil(log2 n) + 1: the largest degree the defaults ever use."""
  return 2 * math.ceil(math.log2(n)) + 1 if n > 1 else 0


def default_degree(n: int) -> int:
  if n < 2:
    raise ValueError(f'a round needs at least 2 parties, got {n}')
  return min(n - 1, 2 * math.ceil(math.log2(n)))


def check_degree(k: int, n: int) -> int:
  """`k` if H(k, n) exists and is k-regular, else ValueError."""
  if not 1 <= k <= n - 1:
    raise ValueError(f'degree {k} outside [1, {n - 1}] for {n} parties')
  if k < n - 1 and k % 2 == 1 and n % 2 == 1:
    raise ValueError(f'H({k}, {n}) is not regular (odd degree, odd count); '
                     'use an even degree')
  return k


def _offsets(k: int, n: int) -> list[int]:
  offsets = []
  for j in range(1, k // 2 + 1):
    offsets += [j, n - j]
  if k % 2 == 1:
    offsets.append(n // 2)
  return offsets


def positions(seed: bytes, n: int) -> list[int]:
  """positions[i]: where party index i sits on the circle."""
  if len(seed) != 32:
    raise ValueError('graph seed must be 32 bytes')
  keys = [hashlib.sha256(_DOMAIN + seed + i.to_bytes(4, 'big')).digest()
          for i in range(n)]
  order = sorted(range(n), key=keys.__getitem__)
  where = [0] * n
  for position, index in enumerate(order):
    where[index] = position
  return where


class Graph:
  """H(k, n) on party indices 0..n-1 (the round's sorted participant list)."""

  def __init__(self, n: int, k: int, seed: bytes):
    self.n = n
    self.k = check_degree(k, n)
    self.seed = seed
    self._where = positions(seed, n)
    self._at = [0] * n
    for index, position in enumerate(self._where):
      self._at[position] = index
    self._offsets = _offsets(k, n)

  def neighbors(self, i: int) -> tuple[int, ...]:
    """The k neighbours of party index `i`, ascending."""
    if not 0 <= i < self.n:
      raise IndexError(i)
    p = self._where[i]
    return tuple(sorted(self._at[(p + o) % self.n] for o in self._offsets))

  def edges(self) -> set[tuple[int, int]]:
    return {(min(i, j), max(i, j)) for i in range(self.n)
            for j in self.neighbors(i)}
