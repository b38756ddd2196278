import fractions
import itertools
import random

from absl.testing import absltest
from scipy import stats

from workers.secagg import shamir


def _solve_vandermonde(points, prime):
  """Independent reconstruction: Gaussian elimination on the Vandermonde
  system (coefficients from points), mod prime; returns the constant term."""
  n = len(points)
  rows = [[pow(x, j, prime) for j in range(n)] + [y] for x, y in points]
  for col in range(n):
    pivot = next(r for r in range(col, n) if rows[r][col] % prime)
    rows[col], rows[pivot] = rows[pivot], rows[col]
    inv = pow(rows[col][col], -1, prime)
    rows[col] = [v * inv % prime for v in rows[col]]
    for r in range(n):
      if r != col and rows[r][col]:
        factor = rows[r][col]
        rows[r] = [(a - factor * b) % prime for a, b in zip(rows[r], rows[col])]
  return rows[0][n]


class ShamirTest(absltest.TestCase):

  def test_field_is_p521(self):
    # The field prime of NIST P-521 (FIPS 186-4, D.1.2.5).
    self.assertEqual(shamir.PRIME, int('1' * 521, 2))
    self.assertEqual(shamir.SHARE_BYTES, 66)

  def test_hand_computed_line(self):
    # f(x) = 7 + 3x over GF(11): shares at 1, 2, 3 are 10, 13 = 2, 16 = 5.
    self.assertEqual(shamir.combine([(1, 10), (2, 2)], 2, prime=11), 7)
    self.assertEqual(shamir.combine([(2, 2), (3, 5)], 2, prime=11), 7)
    self.assertEqual(shamir.combine([(1, 10), (3, 5), (2, 2)], 2, prime=11), 7)

  def test_every_t_subset_gives_the_secret(self):
    secret = random.getrandbits(256)
    xs = list(range(1, 8))
    shares = shamir.split(secret, 4, xs)
    for subset in itertools.combinations(zip(xs, shares), 4):
      self.assertEqual(shamir.combine(list(subset), 4), secret)
      self.assertEqual(_solve_vandermonde(list(subset), shamir.PRIME), secret)

  def test_matches_exact_rational_interpolation_over_small_field(self):
    prime = 101
    for _ in range(50):
      secret = random.randrange(prime)
      xs = random.sample(range(1, prime), 5)
      shares = shamir.split(secret, 3, xs, prime=prime)
      points = list(zip(xs, shares))[:3]
      # Lagrange at 0 in exact rationals, then reduced mod prime.
      total = fractions.Fraction(0)
      for i, (xi, yi) in enumerate(points):
        term = fractions.Fraction(yi)
        for j, (xj, _) in enumerate(points):
          if i != j:
            term *= fractions.Fraction(xj, xj - xi)
        total += term
      self.assertEqual(total.numerator * pow(total.denominator, -1, prime)
                       % prime, secret)

  def test_fewer_than_t_shares_are_uniform_whatever_the_secret(self):
    # Over GF(7) with t = 3, two shares must be uniform on the 49 pairs for
    # every secret (chi-square, 48 dof; false failure 1e-6 per secret).
    prime, xs, draws = 7, [2, 5, 6], 49 * 200
    for secret in (0, 6):
      counts = [0] * (prime * prime)
      for _ in range(draws):
        a, b, _ = shamir.split(secret, 3, xs, prime=prime)
        counts[a * prime + b] += 1
      self.assertGreater(stats.chisquare(counts).pvalue, 1e-6)

  def test_too_few_duplicate_or_inconsistent_shares(self):
    shares = shamir.split(12345, 3, [1, 2, 3, 4])
    points = list(zip([1, 2, 3, 4], shares))
    with self.assertRaisesRegex(shamir.ShareError, '2 shares, 3 needed'):
      shamir.combine(points[:2], 3)
    with self.assertRaisesRegex(shamir.ShareError, 'same point'):
      shamir.combine([points[0], points[0], points[1]], 3)
    bad = points[:3] + [(4, (shares[3] + 1) % shamir.PRIME)]
    with self.assertRaisesRegex(shamir.ShareError, 'does not lie'):
      shamir.combine(bad, 3)
    with self.assertRaises(shamir.ShareError):
      shamir.combine([(0, 1), (1, 2)], 2)

  def test_split_arguments(self):
    with self.assertRaises(ValueError):
      shamir.split(shamir.PRIME, 2, [1, 2])
    with self.assertRaises(ValueError):
      shamir.split(1, 3, [1, 2])
    with self.assertRaises(ValueError):
      shamir.split(1, 2, [1, 1])
    with self.assertRaises(ValueError):
      shamir.split(1, 2, [0, 1])

  def test_encoding(self):
    value = shamir.PRIME - 1
    self.assertEqual(shamir.decode(shamir.encode(value)), value)
    self.assertEqual(shamir.encode(1), bytes(65) + b'\x01')
    with self.assertRaises(shamir.ShareError):
      shamir.decode(shamir.PRIME.to_bytes(66, 'big'))
    with self.assertRaises(shamir.ShareError):
      shamir.decode(bytes(65))


if __name__ == '__main__':
  absltest.main()
