"""Shamir t-of-k secret sharing over GF(2^521 - 1) (Shamir, CACM 1979).

The field is the Mersenne prime 2^521 - 1 (the field of NIST P-521), large
enough for a whole 32-byte secret in one element, so a party's self-mask seed
and its X25519 mask key are each one polynomial. A share is the polynomial's
value at a holder's x-coordinate (its index in the round's participant list
plus one), encoded as 66 big-endian bytes.

Fewer than t shares say nothing about the secret: for any candidate secret
exactly one polynomial of degree t - 1 fits them. Reconstruction with more
than t shares checks that every extra share lies on the same polynomial, so a
corrupted or substituted share is detected rather than silently used.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

PRIME = 2**521 - 1
SHARE_BYTES = 66  # ceil(521 / 8)


class ShareError(ValueError):
  """Shares that cannot give the secret: too few, duplicated or inconsistent."""


def split(secret: int, threshold: int, xs: Sequence[int], prime: int = PRIME
          ) -> list[int]:
  """Shares of `secret` at the points `xs` (distinct, in [1, prime))."""
  if not 0 <= secret < prime:
    raise ValueError('secret is not a field element')
  if not 1 <= threshold <= len(xs):
    raise ValueError(f'threshold {threshold} not in [1, {len(xs)}]')
  if len(set(xs)) != len(xs) or any(not 0 < x < prime for x in xs):
    raise ValueError('share points must be distinct and non-zero')
  coefficients = [secret] + [secrets.randbelow(prime)
                             for _ in range(threshold - 1)]
  shares = []
  for x in xs:
    value = 0
    for c in reversed(coefficients):  # Horner.
      value = (value * x + c) % prime
    shares.append(value)
  return shares


def _lagrange_at(points: Sequence[tuple[int, int]], at: int, prime: int
                 ) -> int:
  """The value at `at` of the polynomial through `points`."""
  total = 0
  for i, (xi, yi) in enumerate(points):
    num, den = 1, 1
    for j, (xj, _) in enumerate(points):
      if i != j:
        num = num * (at - xj) % prime
        den = den * (xi - xj) % prime
    total = (total + yi * num * pow(den, -1, prime)) % prime
  return total


def combine(points: Sequence[tuple[int, int]], threshold: int,
            prime: int = PRIME) -> int:
  """The secret from >= `threshold` (x, share) points; extras are checked."""
  if len(points) < threshold:
    raise ShareError(f'{len(points)} shares, {threshold} needed')
  xs = [x for x, _ in points]
  if len(set(xs)) != len(xs):
    raise ShareError('two shares at the same point')
  if any(not 0 < x < prime or not 0 <= y < prime for x, y in points):
    raise ShareError('a share is not a field element')
  base = list(points[:threshold])
  for x, y in points[threshold:]:
    if _lagrange_at(base, x, prime) != y:
      raise ShareError(f'the share at point {x} does not lie on the '
                       'polynomial of the others')
  return _lagrange_at(base, 0, prime)


def encode(value: int) -> bytes:
  return value.to_bytes(SHARE_BYTES, 'big')


def decode(data: bytes) -> int:
  if len(data) != SHARE_BYTES:
    raise ShareError(f'a share is {len(data)} bytes, not {SHARE_BYTES}')
  value = int.from_bytes(data, 'big')
  if value >= PRIME:
    raise ShareError('a share is not a field element')
  return value
