import math

from absl.testing import absltest
from absl.testing import parameterized
import dp_accounting
from dp_accounting import rdp
import numpy as np
from scipy import special
from scipy import stats

from tff_pipeline.aggregation import ddp_accounting
from data_prep.errors import UserError

ORDERS = ddp_accounting.ORDERS
DELTA = 1e-5
CNN_DIM = 1_199_882  # Fashion-MNIST CNN parameters.


def _gaussian_rdp(noise_multiplier, orders, q=None):
  """dp_accounting's RDP, called by hand (q None: no sampling)."""
  accountant = rdp.RdpAccountant(orders=list(orders))
  event = dp_accounting.GaussianDpEvent(noise_multiplier)
  if q is not None:
    event = dp_accounting.PoissonSampledDpEvent(q, event)
  accountant.compose(event)
  return accountant.rdp


def _exact_skellam_divergence(lam, shift, order):
  """D_order(Sk(lam) + shift || Sk(lam)) in one dimension, from scipy's pmf."""
  # The summand peaks near order * shift; 20 standard deviations either side
  # hold all of it that float64 can see.
  reach = int(order * abs(shift) + 20 * math.sqrt(2 * lam)) + 50
  k = np.arange(-reach, reach + 1)
  log_p = stats.skellam.logpmf(k - shift, lam, lam)
  log_q = stats.skellam.logpmf(k, lam, lam)
  seen = np.isfinite(log_p) & np.isfinite(log_q)
  return special.logsumexp(order * log_p[seen] + (1 - order) * log_q[seen]
                           ) / (order - 1)


def _params(**overrides):
  kwargs = dict(dim=CNN_DIM, clip=1.0, noise_multiplier=1.0,
                expected_clients=100, bits=17)
  kwargs.update(overrides)
  return ddp_accounting.SkellamParams(**kwargs)


class SkellamRdpTest(parameterized.TestCase):

  def test_hand_computed(self):
    # lam 10, one coordinate moved by 1 (Delta_1 = Delta_2 = 1):
    # a = 2: 2/40 + min((3 + 6)/1600, 3/40) = 0.05 + 0.005625.
    # a = 3: 3/40 + min((5 + 6)/1600, 3/40) = 0.075 + 0.006875.
    np.testing.assert_allclose(
        ddp_accounting.skellam_rdp([2, 3], 10.0, 1.0, 1.0),
        [0.055625, 0.081875], rtol=1e-12)
    # lam 0.5: the other branch of the min, 1 + min(2.25, 1.5).
    self.assertAlmostEqual(
        ddp_accounting.skellam_rdp([2], 0.5, 1.0, 1.0)[0], 2.5, places=12)

  @parameterized.parameters((0.5, 1), (3.0, 1), (3.0, 4), (50.0, 2),
                            (400.0, 7))
  def test_bounds_the_exact_divergence(self, lam, shift):
    # One coordinate moved by `shift`: Delta_1 = Delta_2 = shift.
    for order in (2, 3, 5, 10, 30):
      exact = _exact_skellam_divergence(lam, shift, order)
      bound = ddp_accounting.skellam_rdp([order], lam, shift, shift)[0]
      self.assertGreaterEqual(bound, exact, (lam, shift, order))
    # Two coordinates moved by 1: the divergence adds up; Delta_2 = sqrt 2.
    exact = 2 * _exact_skellam_divergence(lam, 1, 4)
    bound = ddp_accounting.skellam_rdp([4], lam, 2.0, math.sqrt(2))[0]
    self.assertGreaterEqual(bound, exact)

  def test_sharp_at_large_noise(self):
    # The bound is within 1% of the exact divergence once lam >> shift.
    exact = _exact_skellam_divergence(400.0, 7, 5)
    bound = ddp_accounting.skellam_rdp([5], 400.0, 7.0, 7.0)[0]
    self.assertLess(bound / exact, 1.01)

  def test_approaches_gaussian_of_same_variance(self):
    # Skellam(lam) has variance 2 lam: the Gaussian with sigma = sqrt(2 lam)
    # over the L2 sensitivity, from dp_accounting by hand.
    l2, l1 = 40.0, 900.0
    orders = [2, 4, 8, 16, 32]
    previous = None
    for lam in (1e3, 1e5, 1e7):
      ratio = (ddp_accounting.skellam_rdp(orders, lam, l1, l2) /
               _gaussian_rdp(math.sqrt(2 * lam) / l2, orders))
      self.assertTrue(np.all(ratio >= 1))
      if previous is not None:
        self.assertTrue(np.all(ratio - 1 < previous - 1))
      previous = ratio
    np.testing.assert_allclose(previous, 1, rtol=1e-4)

  def test_zero_noise_is_infinite(self):
    self.assertTrue(np.all(np.isinf(
        ddp_accounting.skellam_rdp(ORDERS, 0.0, 1.0, 1.0))))


def _exact_subsampled_divergences(lam, shift, q, order):
  """Both divergences of the sampled one-dimensional Skellam, from scipy.

  Q = Sk(lam) (the client absent), P = Sk(lam) + shift, mu = (1-q) Q + q P:
  (D_order(mu || Q), D_order(Q || mu)).
  """
  reach = int(order * abs(shift) + 40 * math.sqrt(2 * lam)) + 80
  k = np.arange(-reach, reach + 1)
  log_q = stats.skellam.logpmf(k, lam, lam)
  log_p = stats.skellam.logpmf(k - shift, lam, lam)
  log_mu = np.logaddexp(math.log1p(-q) + log_q, math.log(q) + log_p)
  seen = np.isfinite(log_q) & np.isfinite(log_mu)
  log_q, log_mu = log_q[seen], log_mu[seen]
  addition = special.logsumexp(order * log_mu + (1 - order) * log_q)
  removal = special.logsumexp(order * log_q + (1 - order) * log_mu)
  return addition / (order - 1), removal / (order - 1)


class PoissonSubsampledRdpTest(parameterized.TestCase):

  def test_hand_computed(self):
    # q = 0.1 on the lam 10, shift 1 curve above (eps(2) = 0.055625,
    # eps(3) = 0.081875; e^eps(2) - 1 = 0.0572012).
    # a = 2: addition log((1-q)(1+q) + q^2 e^eps(2)) = log(1.00057201)
    #        = 5.718481e-4; removal: the general bound (no l >= 3 terms)
    #        is the same, below the second-order one (c_2 = 1/0.9 - 1.1 =
    #        0.0111111: log(1 + 0.0111111 * 0.0572012) = 6.3537e-4).
    # a = 3: addition log((1-q)^2 (1+2q) + 3 q^2 (1-q) e^eps(2)
    #        + q^3 e^(2 eps(3)))/2 = log(0.972 + 0.02854443 + 0.00117792)/2
    #        = 8.604348e-4; removal: the general bound, with 3 q^3 e^(2 eps(3)),
    #        log(1.00707819)/2 = 2.034949e-3, against the second-order
    #        c_3 = 1/0.81 - 1.2 = 0.0345679: log(1 + 0.0345679 * 0.0572012)/2
    #        = 9.876858e-4, the smaller; the larger direction: 9.876858e-4.
    rdp_fn = lambda a: ddp_accounting.skellam_rdp(a, 10.0, 1.0, 1.0)
    np.testing.assert_allclose(
        ddp_accounting.poisson_subsampled_rdp([2, 3], 0.1, rdp_fn),
        [5.718481e-4, 9.876858e-4], rtol=1e-6)

  @parameterized.parameters((3.0, 1, 0.1), (50.0, 2, 0.1), (400.0, 7, 0.05),
                            (2.0, 1, 0.5), (400.0, 3, 0.9), (20.0, 1, 0.01))
  def test_bounds_the_exact_subsampled_divergences(self, lam, shift, q):
    # Both directions computed from the pmfs, against the bound on the
    # Skellam RDP curve: the bound must hold for each.
    rdp_fn = lambda a: ddp_accounting.skellam_rdp(a, lam, shift, shift)
    for order in (2, 3, 5, 10, 30):
      addition, removal = _exact_subsampled_divergences(lam, shift, q, order)
      bound = ddp_accounting.poisson_subsampled_rdp([order], q, rdp_fn)[0]
      self.assertGreaterEqual(bound, addition, (lam, shift, q, order))
      self.assertGreaterEqual(bound, removal, (lam, shift, q, order))

  @parameterized.parameters((0.1, 1.0, 1.01), (0.03, 0.8, 1.01),
                            (120 / 3383, 1.2, 1.01), (0.01, 2.0, 1.01),
                            (0.5, 1.0, 1.01), (0.1, 2.43, 1.15),
                            (0.1, 8.0, 1.6))
  def test_bound_vs_tight_gaussian(self, q, z, most):
    # For the Gaussian, dp_accounting's sampled Gaussian is exact (Mironov et
    # al. 2019): a valid bound is never below it, and ours is never above the
    # general bound, at most log(3) / (a - 1) above it.
    ours = ddp_accounting.poisson_subsampled_rdp(
        ORDERS, q, lambda a: a / (2 * z**2))
    tight = _gaussian_rdp(z, ORDERS, q)
    gap = ours - tight
    self.assertTrue(np.all(gap >= -1e-12), gap)
    self.assertTrue(np.all(gap <= np.log(3) / (np.array(ORDERS) - 1) + 1e-12))
    # And close where it matters: on the epsilon of 100 rounds.
    eps_ours, _ = rdp.rdp_privacy_accountant.compute_epsilon(
        ORDERS, 100 * ours, DELTA)
    eps_tight, _ = rdp.rdp_privacy_accountant.compute_epsilon(
        ORDERS, 100 * tight, DELTA)
    print(f'q={q:.4f} z={z}: our bound epsilon {eps_ours:.4f}, '
          f'dp_accounting {eps_tight:.4f}')
    # Where the removal bound sets the optimal order (much noise), above.
    self.assertBetween(eps_ours / eps_tight, 1.0 - 1e-9, most)

  def test_second_order_removal_bound(self):
    # D_a(Q || (1-q) Q + q P) computed exactly on two- and three-point
    # distributions, against the bound from D_2(P || Q) alone. The curvature
    # at 0 alone (c = C(a,2) q^2, no secant to x = -1) fails on these pairs,
    # so the secant term is what makes it hold.
    divergence = lambda p, q, a: math.log(np.sum(p**a * q**(1 - a))) / (a - 1)
    pairs = [((0.9, 0.1), (0.1, 0.9)), ((0.99, 0.01), (0.5, 0.5)),
             ((0.6, 0.4), (0.4, 0.6)), ((1e-4, 1 - 1e-4), (0.3, 0.7)),
             ((0.97, 0.02, 0.01), (0.2, 0.3, 0.5))]
    curvature_only_fails = 0
    for p, q_dist in pairs:
      p, q_dist = np.array(p), np.array(q_dist)
      eps_2 = divergence(p, q_dist, 2)
      for q in (0.1, 0.5, 0.9, 0.99):
        mixture = (1 - q) * q_dist + q * p
        for a in (2, 3, 5, 10, 30):
          exact = divergence(q_dist, mixture, a)
          bound = ddp_accounting._removal_second_order(  # pylint: disable=protected-access
              a, q, eps_2) / (a - 1)
          self.assertGreaterEqual(bound, exact - 1e-12, (p, q, a))
          curvature = math.log1p(math.comb(a, 2) * q**2 *
                                 math.expm1(eps_2)) / (a - 1)
          curvature_only_fails += exact > curvature
    self.assertGreater(curvature_only_fails, 10)

  def test_tiny_sampling_rates_and_bad_orders(self):
    # q = 1e-17: (1-q)^(1-a) - 1 - (a-1)q cancels to 0 in floats; its series
    # C(a,2) q^2 + ... does not. To first order the sampled Gaussian's RDP
    # is C(a,2) q^2 (e^(1/z^2) - 1) / (a - 1) = q^2 a (e^(1/z^2) - 1) / 2.
    for a in (2, 10):
      got = ddp_accounting.poisson_subsampled_rdp([a], 1e-17, lambda o: o / 2)
      np.testing.assert_allclose(got, [1e-34 * a * math.expm1(1) / 2],
                                 rtol=1e-6)
    for orders in ([2.5], [1], [1.5, 3]):
      with self.assertRaisesRegex(ValueError, 'integers >= 2'):
        ddp_accounting.poisson_subsampled_rdp(orders, 0.1, lambda o: o / 2)

  def test_vanishes_as_the_noise_grows(self):
    # The general bound alone levels off at log(1 + 2 P[Bin(a, q) >= 3]) /
    # (a - 1) however much noise there is (its factor 3); both directions
    # here go to 0 with eps(2).
    a = np.array(ORDERS)
    q = 0.1
    at_least_3 = stats.binom.sf(2, a, q)
    floor = np.log1p(2 * at_least_3) / (a - 1)
    quiet = ddp_accounting.poisson_subsampled_rdp(
        ORDERS, q, lambda o: o / (2 * 1e4**2))
    # (At orders beyond 64 the second-order bound's c_a grows as
    # (1-q)^(1-a); there the general bound is the smaller.)
    self.assertTrue(np.all(quiet[a <= 64] < 1e-6), quiet)
    self.assertTrue(np.all(floor[(a >= 4) & (a <= 64)] > 2e-3))

  def test_no_sampling_and_no_participation(self):
    rdp_fn = lambda a: a / 2.0
    np.testing.assert_allclose(
        ddp_accounting.poisson_subsampled_rdp([2, 5], 1.0, rdp_fn), [1, 2.5])
    np.testing.assert_array_equal(
        ddp_accounting.poisson_subsampled_rdp([2, 5], 0.0, rdp_fn), [0, 0])

  def test_never_above_the_unsampled_mechanism(self):
    for q in (0.01, 0.5, 0.99):
      for rdp_fn in (lambda a: 50 * a, lambda a: a / 8):
        unsampled = rdp_fn(np.array(ORDERS, dtype=float))
        sampled = ddp_accounting.poisson_subsampled_rdp(ORDERS, q, rdp_fn)
        self.assertTrue(np.all(sampled <= unsampled))
    # Hardly any noise: the addition direction's last term, q^a
    # e^((a-1) eps(a)), dominates: eps(a) + a log q / (a - 1). (Removal is
    # far smaller: Q <= mu / (1 - q), so D(Q || mu) <= log 2 at q = 0.5.)
    a = np.array(ORDERS, dtype=float)
    np.testing.assert_allclose(
        ddp_accounting.poisson_subsampled_rdp(ORDERS, 0.5, lambda a: 50 * a),
        50 * a + a * np.log(0.5) / (a - 1), rtol=1e-9)


class SkellamParamsTest(absltest.TestCase):

  def test_derived_by_hand(self):
    # d = 3 pads to D = 4; n_hi = 2 + 3 sqrt(2); k from the Gaussian tail
    # 2 D Q(k) = 1e-3; beta = e^(-1/2) makes sqrt(2 ln(1/beta)) = 1.
    p = ddp_accounting.SkellamParams(dim=3, clip=1.0, noise_multiplier=1.0,
                                     expected_clients=2, bits=10)
    k = stats.norm.isf(1e-3 / 8)
    n_hi = 2 + 3 * math.sqrt(2)
    s = math.sqrt((2.0**20 / (4 * k**2) - n_hi / 4) / (n_hi**2 / 4 + 1))
    self.assertEqual(p.padded_dim, 4)
    self.assertAlmostEqual(p.k, k, places=9)
    self.assertAlmostEqual(p.scale, s, places=9)
    bound = math.floor(min((s + 2)**2, s**2 + 1 + (s + 1)))
    self.assertEqual(p.l2_bound_squared, bound)
    self.assertEqual(p.l1_sensitivity, math.floor(min(2 * math.sqrt(bound),
                                                      bound)))
    self.assertAlmostEqual(p.lam, s**2 / 2, places=6)
    # sqrt(2 lam) / s is the noise stddev in model units: z C.
    self.assertAlmostEqual(math.sqrt(2 * p.lam) / p.scale, 1.0, places=12)

  def test_too_few_bits_and_clients(self):
    with self.assertRaisesRegex(UserError, r'--secagg_bits=4 is too few for '
                                r'1000 expected clients.*--secagg_bits=\d+'):
      _params(bits=4, expected_clients=1000)
    with self.assertRaisesRegex(UserError, 'clients_per_round=1 is too few'):
      _params(expected_clients=1)
    with self.assertRaisesRegex(UserError, 'secagg_bits=31'):
      _params(bits=31)


class EpsilonTest(absltest.TestCase):

  def test_close_to_sampled_gaussian_with_same_noise(self):
    # 100 expected of 1000 clients, 100 rounds: the Skellam epsilon is the
    # sampled Gaussian's (dp_accounting, by hand, with sigma over Delta_2)
    # up to the general sampling bound's slack.
    params = _params()
    ours = ddp_accounting.epsilon(params, 0.1, 100, DELTA)
    accountant = rdp.RdpAccountant(orders=list(ORDERS))
    accountant.compose(dp_accounting.PoissonSampledDpEvent(
        0.1, dp_accounting.GaussianDpEvent(
            params.effective_noise_multiplier)), 100)
    gaussian = accountant.get_epsilon(DELTA)
    print(f'CNN, 17 bits, z=1, q=0.1, 100 rounds: epsilon {ours["epsilon"]:.3f}'
          f', sampled Gaussian {gaussian:.3f}')
    self.assertBetween(ours['epsilon'] / gaussian, 1.0, 1.3)
    self.assertEqual(ours['delta'], DELTA)
    self.assertTrue(ours['amplified'])

  def test_monotone_in_noise_and_rounds(self):
    by_noise = [ddp_accounting.epsilon(_params(noise_multiplier=z), 0.1, 100,
                                       DELTA)['epsilon']
                for z in (0.6, 0.8, 1.0, 1.5, 2.0, 4.0, 8.0)]
    self.assertTrue(np.all(np.diff(by_noise) < 0), by_noise)
    by_rounds = [ddp_accounting.epsilon(_params(), 0.1, t, DELTA)['epsilon']
                 for t in (1, 10, 100, 1000)]
    self.assertTrue(np.all(np.diff(by_rounds) > 0), by_rounds)
    self.assertEqual(ddp_accounting.epsilon(_params(), 0.1, 0, DELTA)
                     ['epsilon'], 0.0)

  def test_unamplified_is_larger(self):
    amplified = ddp_accounting.epsilon(_params(), 0.1, 100, DELTA)
    plain = ddp_accounting.epsilon(_params(), 0.1, 100, DELTA,
                                   amplified=False)
    # No sampling: 100 rounds of the Skellam mechanism, by hand.
    expected, _ = rdp.rdp_privacy_accountant.compute_epsilon(
        ORDERS, 100 * _params().rdp(ORDERS), DELTA)
    self.assertAlmostEqual(plain['epsilon'], expected, places=9)
    self.assertGreater(plain['epsilon'], 5 * amplified['epsilon'])
    self.assertFalse(plain['amplified'])

  def test_zero_noise(self):
    self.assertEqual(ddp_accounting.epsilon(
        _params(noise_multiplier=0.0), 0.1, 10, DELTA)['epsilon'], math.inf)


class CalibrateTest(absltest.TestCase):

  def test_reaches_target_with_least_noise(self):
    common = dict(dim=CNN_DIM, clip=1.0, expected_clients=100, bits=17,
                  sampling_probability=0.1, rounds=100, delta=DELTA)
    z = ddp_accounting.calibrate(4.0, **common)
    at = lambda z: ddp_accounting.epsilon(
        _params(noise_multiplier=z), 0.1, 100, DELTA)['epsilon']
    self.assertLessEqual(at(z), 4.0)
    self.assertGreater(at(z - 0.01), 4.0)
    print(f'target epsilon 4: noise multiplier {z:.3f}')

  def test_unreachable_in_rounds(self):
    with self.assertRaisesRegex(UserError, r'unreachable in --rounds=100000'):
      ddp_accounting.calibrate(
          0.05, dim=1000, clip=1.0, expected_clients=500, bits=30,
          sampling_probability=0.5, rounds=100000, delta=DELTA)

  def test_unreachable_with_bits(self):
    # At 8 bits the rounding of a CNN update alone costs more than the target.
    with self.assertRaisesRegex(UserError,
                                r'unreachable with --secagg_bits=8.*'
                                r'use --secagg_bits=\d+'):
      ddp_accounting.calibrate(
          1.0, dim=CNN_DIM, clip=1.0, expected_clients=10, bits=8,
          sampling_probability=0.1, rounds=100, delta=DELTA)

  def test_bad_input(self):
    common = dict(dim=CNN_DIM, clip=1.0, expected_clients=100, bits=17,
                  sampling_probability=0.1, delta=DELTA)
    with self.assertRaisesRegex(UserError, 'target_epsilon'):
      ddp_accounting.calibrate(-1.0, rounds=10, **common)
    with self.assertRaisesRegex(UserError, 'rounds=0'):
      ddp_accounting.calibrate(1.0, rounds=0, **common)
    common['expected_clients'] = 1.5
    with self.assertRaisesRegex(UserError, 'too few for distributed_dp'):
      ddp_accounting.calibrate(1.0, rounds=10, **common)


class LedgerTest(absltest.TestCase):

  def test_logged_participants_get_the_unamplified_epsilon(self):
    params = _params()
    row = ddp_accounting.ledger_row(params, 0.1, 50, DELTA)
    logged = ddp_accounting.ledger_row(params, 0.1, 50, DELTA,
                                       participants_logged=True)
    self.assertTrue(row['amplified'])
    self.assertFalse(logged['amplified'])
    self.assertEqual(row['epsilon_coordinator'], logged['epsilon'])
    self.assertEqual(row['epsilon_coordinator'],
                     ddp_accounting.epsilon(params, 0.1, 50, DELTA,
                                            amplified=False)['epsilon'])
    self.assertLess(row['epsilon'], logged['epsilon'])
    self.assertEqual(row['sampling_probability'], 0.1)

  def test_ledger_rows(self):
    params = _params()
    row = ddp_accounting.Ledger(params, 0.1, DELTA).after(50)
    self.assertEqual(row, ddp_accounting.ledger_row(params, 0.1, 50, DELTA))
    self.assertNotIn('note', row)
    logged = ddp_accounting.Ledger(params, 0.1, DELTA,
                                   participants_logged=True).after(50)
    self.assertIn('--log_participants', logged['note'])
    self.assertFalse(logged['amplified'])
    # No noise: JSON-safe infinities.
    free = ddp_accounting.Ledger(_params(noise_multiplier=0.0), 0.1,
                                 DELTA).after(3)
    self.assertEqual(free['epsilon'], 'inf')


class DefaultBitsTest(absltest.TestCase):

  def test_calibrate_with_bits_meets_the_rule(self):
    z, bits = ddp_accounting.calibrate_with_bits(
        4.0, dim=CNN_DIM, clip=1.0, expected_clients=100,
        sampling_probability=0.1, rounds=100, delta=DELTA)
    self.assertEqual(bits, ddp_accounting.default_bits(100, CNN_DIM, z))
    self.assertLessEqual(ddp_accounting.epsilon(
        _params(noise_multiplier=z, bits=bits), 0.1, 100, DELTA)['epsilon'],
                         4.0)
    print(f'target epsilon 4, CNN, 100 of 1000: z {z:.3f}, {bits} bits')

  def test_rule(self):
    # The smallest bits meeting the 1% rule; one fewer misses it.
    for n, dim in ((100, 199_210), (1000, 199_210), (100, CNN_DIM),
                   (1000, CNN_DIM), (10, CNN_DIM)):
      bits = ddp_accounting.default_bits(n, dim)
      self.assertLessEqual(
          ddp_accounting.predicted_rounding_error(n, dim, 1.0, bits), 0.01)
      self.assertLessEqual(
          ddp_accounting.sensitivity_inflation(n, dim, 1.0, bits), 0.01)
      worse = max(
          ddp_accounting.predicted_rounding_error(n, dim, 1.0, bits - 1),
          ddp_accounting.sensitivity_inflation(n, dim, 1.0, bits - 1))
      self.assertGreater(worse, 0.01)
      print(f'default bits for {n} clients, {dim} parameters: {bits}')


if __name__ == '__main__':
  absltest.main()
