"""Parameters and privacy accounting of distributed DP with Skellam noise.

The mechanism (`tff_pipeline.distributed_dp`) is the distributed Skellam
mechanism of Agarwal, Kairouz and Liu, "The Skellam Mechanism for
Differentially Private Federated Learning" (NeurIPS 2021, arXiv 2110.04995),
on the pipeline of Kairouz, Liu and Steinke, "The Distributed Discrete
Gaussian Mechanism for Federated Learning with Secure Aggregation" (ICML
2021, arXiv 2102.06387). In a round with n participants, each participant

  1. flattens its update to d floats and clips it to L2 norm C;
  2. pads it with zeros to D = 2^ceil(log2 d) and rotates it,
     y = H S x / sqrt(D), with H the D x D Walsh-Hadamard matrix and S a
     diagonal of random signs drawn from the round's public seed. H S / sqrt(D)
     is orthogonal, so ||y||_2 = ||x||_2 <= C;
  3. scales, v = s y, so ||v||_2 <= s C;
  4. rounds each coordinate of v up or down at random (up with probability
     equal to its fractional part), and draws again until the integer vector
     r has ||r||_2^2 <= B; after `MAX_ROUNDING_TRIES` draws it rounds toward
     zero instead (|r_j| <= |v_j|, so ||r||_2 <= s C <= sqrt(B)). The bound
     holds for every output, not with some probability;
  5. adds its noise share: D independent Skellam(lambda / n) variables,
     each Poisson(lambda / n) - Poisson(lambda / n);
  6. reduces the result modulo M = 2^bits into [0, M).

The secure sum adds the shares modulo M. The coordinator unmasks only that
sum; it centres it into [-M/2, M/2), divides by s and rotates back.

Noise. A sum of independent Skellam(a_i) is Skellam(sum a_i), so the n shares
add up to exactly Skellam(lambda) per coordinate (variance 2 lambda, i.e.
standard deviation `noise_multiplier * C` in model units), whatever n is.
Each round's n is the number of clients that actually contribute (survivors
of a redone round included), set by the coordinator before the round. A fixed
share per client would not do under add/remove neighbours: the aggregate's
variance would then grow with n, and over D ~ 10^6 coordinates the variance
alone reveals n, so one client's presence would show.

Sensitivity. What the coordinator sees, the sum modulo M, is a function of
sum_i r_i + Z with Z ~ Skellam(lambda)^D (the reduction modulo M commutes with
the sum, and the masks cancel). Under add/remove-one neighbours (Poisson
sampling) one client adds or removes one rounded vector r, so the L2 and L1
sensitivities of sum_i r_i are

  Delta_2 = sqrt(B),
  Delta_1 = floor(min(sqrt(D) * Delta_2, B)),

the L1 bound by Cauchy-Schwarz and, r being an integer vector,
||r||_1 = sum |r_j| <= sum r_j^2 = ||r||_2^2 <= B. B is the integer part of
Kairouz et al.'s bound for randomized rounding (their Theorem 1 and Section
4.1): with probability at least 1 - beta one draw has
||r||^2 <= (sC)^2 + D/4 + sqrt(2 ln(1/beta)) (sC + sqrt(D)/2); also always
||r|| <= sC + sqrt(D). With beta = exp(-1/2) a draw fails with probability at
most 0.61, so resampling stops after about 2.5 draws on average; the bound
only sets that cost, privacy rests on the check.

RDP of one round (Agarwal et al., the multi-dimensional Skellam mechanism,
for integer orders a > 1):

  eps(a) = a Delta_2^2 / (4 lambda)
           + min(((2a - 1) Delta_2^2 + 6 Delta_1) / (16 lambda^2),
                 3 Delta_1 / (4 lambda)).

The first term is the Gaussian mechanism's with the same variance 2 lambda.

Sampling. Each client takes part in a round independently with probability
q. Add/remove RDP of the sampled mechanism needs two divergences, each
bounded from the curve eps(l) above (`poisson_subsampled_rdp`):

  addition: 1/(a-1) log[ (1-q)^(a-1) (1 + (a-1) q)
                 + sum_{l=2..a} C(a,l) q^l (1-q)^(a-l) e^((l-1) eps(l)) ],

the binomial expansion of E_Q[((1-q) + q P/Q)^a], exact in the D_l(P||Q)
and a bound once eps(l) >= D_l(P||Q) stands in for them (the
expression of Zhu and Wang, "Poisson Subsampled Renyi Differential
Privacy", ICML 2019, and Mironov, Talwar and Zhang 2019), and

  removal: the smaller of Zhu and Wang's general upper bound (Theorem 5: the
  terms l >= 3 above times 3) and the second-order bound
  log(1 + c_a (e^eps(2) - 1)) / (a - 1), c_a = (1-q)^(1-a) - 1 - (a-1) q
  (a Taylor bound of (1 + q x)^(1-a) on x >= -1; the proof is at
  `poisson_subsampled_rdp`).

The larger of the two, capped by eps(a), is the round's RDP. Rounds compose
by adding RDP, and `dp_accounting`'s conversion turns RDP into (epsilon,
delta) (`rdp_privacy_accountant.compute_epsilon`). The general bound alone
does not go to 0 as the noise grows (its factor 3 leaves log(1 + 2 P[Bin(a,
q) >= 3]) / (a - 1) per round), which made small budgets over many rounds
need 3.4 times central DP's noise; with the second-order removal bound the
distributed epsilon is close to the sampled Gaussian's with the same noise:
equal where the addition direction sets the optimal order (epsilon 4 to 8
over 100 rounds with q = 0.1), about 10% above at epsilon 2 over 100
rounds and 15% over 200 (the removal bound's slack).

What is not amplified. Amplification by sampling needs a secret sample. The
coordinator picks the clients, so against the coordinator (and whenever the
participants are logged) the guarantee is the unamplified one:
`amplified=False` composes eps(a) itself over the rounds, for a client that
took part in every round, with "zero-out" neighbours (the client's update
replaced by zero; the same Delta_1, Delta_2). Both assume the participants
run the agreed computation: noise a participant leaves out, or tells the
coordinator, is missing from the total.

The scale s keeps wrap-arounds rare: with n_hi = n + 3 sqrt(n) clients (a high
Poisson draw), a coordinate of the aggregate has variance at most about
s^2 (n_hi^2 C^2 / D + sigma^2) + n_hi / 4 (all updates aligned; noise;
rounding), and s is the largest value that keeps k of those standard
deviations inside M/2, as in TFF's DistributedDpSumFactory. A wrapped
coordinate costs an error of about 2k standard deviations, far more than
rounding, so k is chosen per model size: Gaussian tails beyond k on D
coordinates, 2 D Q(k) = `WRAPS_PER_ROUND` (k ~ 6 for D ~ 10^6; TFF's 3.9 gave
about 14 wraps per round on the 2NN in bench/ddp_bits.py).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable, Optional, Sequence

import numpy as np
from dp_accounting.rdp import rdp_privacy_accountant
from scipy import special

from data_prep.errors import UserError
from tff_pipeline.aggregation import privacy

# Integer RDP orders: the Skellam bound and Zhu and Wang's bound are stated for
# integers. Up to 256 covers epsilons down to about 0.1 at delta = 1e-5.
ORDERS = tuple(range(2, 65)) + (72, 80, 96, 112, 128, 160, 192, 256)

# Conditional rounding: Kairouz et al.'s recommended beta.
DEFAULT_BETA = math.exp(-0.5)
# Draws of randomized rounding before rounding toward zero; with beta above a
# draw fails with probability <= 0.61, so all fail with probability <= 5e-5.
MAX_ROUNDING_TRIES = 20
# Expected wrapped coordinates per round, which sets k (see above).
WRAPS_PER_ROUND = 1e-3
# Clients' updates in the bits rule: pairwise cosine 0.5 (half of each update
# along a common direction).
REFERENCE_COSINE = 0.5
MIN_BITS, MAX_BITS = 4, 30
# Secure aggregation of fewer hides nothing: the "sum" is one client's vector.
MIN_EXPECTED_CLIENTS = 2.0
# Above this noise multiplier calibration gives up (epsilon has levelled off).
_MAX_NOISE_MULTIPLIER = 2.0**12


class TooFewBitsError(UserError):
  """The target epsilon needs more bits than given (rounding costs too much)."""


def _round_size_high(expected_clients: float) -> float:
  """A high Poisson round size: about 3 standard deviations above the mean."""
  return expected_clients + 3.0 * math.sqrt(expected_clients)


def wrap_stddevs(padded_dim: int,
                 wraps_per_round: float = WRAPS_PER_ROUND) -> float:
  """k with 2 D Q(k) = wraps_per_round (Q: the Gaussian upper tail)."""
  return math.sqrt(2) * float(special.erfcinv(wraps_per_round / padded_dim))


def _padded(dim: int) -> int:
  return 1 << (dim - 1).bit_length()


def _scale_room(bits: int, expected_clients: float,
                wrap_stddevs: float) -> float:
  """(M / 2k)^2 less the rounding variance of n_hi clients; must be > 0."""
  n_hi = _round_size_high(expected_clients)
  return 4.0**bits / (4 * wrap_stddevs**2) - n_hi / 4


@dataclasses.dataclass(frozen=True)
class SkellamParams:
  """One round of the distributed Skellam mechanism, in integer units.

  Attributes:
    dim: Number of model parameters summed (d).
    clip: L2 clip of each client's update (C), in model units.
    noise_multiplier: Standard deviation of the aggregate noise per
      coordinate, over the clip (z; sigma = z C in model units). 0: no noise.
    expected_clients: Expected participants per round (n).
    bits: The secure sum adds modulo 2^bits.
    wraps_per_round: Expected wrapped coordinates per round; sets how many
      aggregate standard deviations the modular range holds.
    beta: Conditional rounding parameter, in (0, 1).
  """
  dim: int
  clip: float
  noise_multiplier: float
  expected_clients: float
  bits: int
  wraps_per_round: float = WRAPS_PER_ROUND
  beta: float = DEFAULT_BETA

  def __post_init__(self):
    if (isinstance(self.dim, bool) or not isinstance(self.dim, numbers.Integral)
        or self.dim < 1):
      raise ValueError(f'dim must be a positive integer, got {self.dim!r}')
    if not (math.isfinite(self.clip) and self.clip > 0):
      raise UserError(f'--clip={self.clip} must be a finite number > 0')
    if not (math.isfinite(self.noise_multiplier) and
            self.noise_multiplier >= 0):
      raise UserError(f'--noise_multiplier={self.noise_multiplier} must be a '
                      'finite number >= 0')
    check_clients(self.expected_clients)
    if (isinstance(self.bits, bool) or
        not isinstance(self.bits, numbers.Integral) or
        not MIN_BITS <= self.bits <= MAX_BITS):
      raise UserError(f'--secagg_bits={self.bits} must be an integer in '
                      f'[{MIN_BITS}, {MAX_BITS}] for distributed_dp')
    if not 0 < self.beta < 1:
      raise ValueError(f'beta must be in (0, 1), got {self.beta}')
    if not 0 < self.wraps_per_round < self.padded_dim:
      raise ValueError('wraps_per_round must be in (0, D), got '
                       f'{self.wraps_per_round}')
    if _scale_room(self.bits, self.expected_clients, self.k) <= 0:
      raise UserError(
          f'--secagg_bits={self.bits} is too few for '
          f'{self.expected_clients:g} expected clients per round: the '
          'rounding of their sum alone overflows the modular range; use '
          f'--secagg_bits={default_bits(self.expected_clients, self.dim)}')

  @property
  def padded_dim(self) -> int:
    """D: the dimension rounded up to a power of two (Hadamard transform)."""
    return _padded(self.dim)

  @property
  def k(self) -> float:
    """Aggregate standard deviations inside half the modular range."""
    return wrap_stddevs(self.padded_dim, self.wraps_per_round)

  @property
  def modulus(self) -> int:
    return 1 << self.bits

  @property
  def stddev(self) -> float:
    """sigma: the aggregate noise standard deviation, in model units."""
    return self.noise_multiplier * self.clip

  @property
  def scale(self) -> float:
    """s: model units to integer units."""
    n_hi = _round_size_high(self.expected_clients)
    signal = n_hi**2 * self.clip**2 / self.padded_dim
    room = _scale_room(self.bits, self.expected_clients, self.k)
    return math.sqrt(room / (signal + self.stddev**2))

  @property
  def l2_bound_squared(self) -> int:
    """B: every rounded client vector has squared L2 norm <= B."""
    sc, dim = self.scale * self.clip, self.padded_dim
    always = (sc + math.sqrt(dim))**2
    likely = (sc**2 + dim / 4 + math.sqrt(2 * math.log(1 / self.beta)) *
              (sc + math.sqrt(dim) / 2))
    return int(math.floor(min(always, likely)))

  @property
  def l2_sensitivity(self) -> float:
    """Delta_2 of the integer sum, in integer units."""
    return math.sqrt(self.l2_bound_squared)

  @property
  def l1_sensitivity(self) -> float:
    """Delta_1 of the integer sum, in integer units."""
    return float(math.floor(min(math.sqrt(self.padded_dim) *
                                self.l2_sensitivity, self.l2_bound_squared)))

  @property
  def lam(self) -> float:
    """lambda: the aggregate noise is Skellam(lambda) per coordinate."""
    return (self.scale * self.stddev)**2 / 2

  @property
  def effective_noise_multiplier(self) -> float:
    """sigma over the L2 sensitivity, both in integer units (<= z)."""
    return math.sqrt(2 * self.lam) / self.l2_sensitivity

  def rdp(self, orders) -> np.ndarray:
    """RDP of one unsampled round at integer `orders`."""
    return skellam_rdp(orders, self.lam, self.l1_sensitivity,
                       self.l2_sensitivity)

  def describe(self) -> dict[str, Any]:
    """The derived parameters, for logs and the ledger."""
    return {
        'mechanism': 'distributed_skellam',
        'bits': self.bits,
        'dim': self.dim,
        'padded_dim': self.padded_dim,
        'scale': self.scale,
        'noise_multiplier': self.noise_multiplier,
        'effective_noise_multiplier': (self.effective_noise_multiplier
                                       if self.lam > 0 else 0.0),
        'l2_sensitivity': self.l2_sensitivity / self.scale,
        'aggregate_skellam_lambda': self.lam,
    }


def skellam_rdp(orders, lam: float, l1: float, l2: float) -> np.ndarray:
  """RDP of the multi-dimensional Skellam mechanism (Agarwal et al. 2021).

  Args:
    orders: Integer orders > 1.
    lam: Each coordinate's noise is Poisson(lam) - Poisson(lam).
    l1: L1 sensitivity of the integer query.
    l2: L2 sensitivity of the integer query.

  Returns:
    eps(a) per order; inf if lam is 0.
  """
  a = np.asarray(orders, dtype=np.float64)
  if np.any(a < 2) or np.any(a != np.floor(a)):
    raise ValueError(f'orders must be integers >= 2, got {orders}')
  if lam == 0:
    return np.full_like(a, np.inf)
  gaussian = a * l2**2 / (4 * lam)
  extra = np.minimum(((2 * a - 1) * l2**2 + 6 * l1) / (16 * lam**2),
                     3 * l1 / (4 * lam))
  return gaussian + extra


def _log_expm1(x: float) -> float:
  """log(e^x - 1) for x >= 0 (-inf at 0); x itself beyond 40 (to 1e-17)."""
  if x == 0:
    return -math.inf
  return x if x > 40 else math.log(math.expm1(x))


def _binomial_terms(a: int, q: float, eps_l: np.ndarray,
                    weight_above_two: float) -> float:
  """log[(1-q)^(a-1)(1+(a-1)q) + sum_{l=2..a} w_l C(a,l) q^l (1-q)^(a-l)
  e^((l-1) eps(l))], w_l = 1 for l = 2 and `weight_above_two` beyond.

  The binomial weights sum to 1, so this is log(1 + sum_{l>=2} C(a,l) q^l
  (1-q)^(a-l) (w_l e^((l-1) eps(l)) - 1)), a sum of terms >= 0, kept in log
  space and taken with log1p so that values near 0 keep their precision.
  """
  log_q, log_1q = math.log(q), math.log1p(-q)
  logs = []
  for l, eps in zip(range(2, a + 1), eps_l[:a - 1]):
    y = (l - 1) * float(eps)
    if math.isinf(y):
      return math.inf
    weight = weight_above_two if l >= 3 else 1.0
    # log(w e^y - 1) for w >= 1, y >= 0.
    excess = (_log_expm1(y) if weight == 1.0 else
              y + math.log(weight - math.exp(-y)))
    logs.append(special.gammaln(a + 1) - special.gammaln(l + 1) -
                special.gammaln(a - l + 1) + l * log_q + (a - l) * log_1q +
                excess)
  return float(np.logaddexp(0.0, special.logsumexp(logs)))


def _log_c(a: int, q: float) -> float:
  """log c_a, c_a = (1-q)^(1-a) - 1 - (a-1) q = sum_{k>=2} C(a+k-2, k) q^k."""
  if (a - 1) * q < 1e-3:  # The series: positive terms, no cancellation.
    total, term, k = 0.0, 1.0, 0
    while True:
      k += 1
      term *= (a + k - 2) / k * q  # C(a+k-2, k) q^k from k - 1.
      if k >= 2:
        total += term
        if term < 1e-17 * total:
          return math.log(total)
  exponent = -(a - 1) * math.log1p(-q)  # (1-q)^(1-a) = e^exponent.
  if exponent > 700:
    return exponent
  return math.log(math.expm1(exponent) - (a - 1) * q)


def _removal_second_order(a: int, q: float, eps_2: float) -> float:
  """(a - 1) times the removal bound log(1 + c_a (e^eps(2) - 1)) / (a - 1)."""
  if eps_2 == 0:
    return 0.0
  if math.isinf(eps_2):
    return math.inf
  return float(np.logaddexp(0.0, _log_c(a, q) + _log_expm1(eps_2)))


def poisson_subsampled_rdp(orders, q: float,
                           rdp_fn: Callable[[np.ndarray], np.ndarray]
                           ) -> np.ndarray:
  """RDP of a Poisson-subsampled mechanism, both directions bounded.

  With Q the output without a client and P with it (L = P/Q, E_Q[L] = 1),
  the sampled output with it is (1-q) Q + q P, and add/remove RDP at order a
  needs both divergences:

  * addition, D_a((1-q)Q + qP || Q): E_Q[((1-q) + qL)^a] expands binomially
    into sum_l C(a,l) (1-q)^(a-l) q^l e^((l-1) D_l(P||Q)), exactly, so
    eps(l) >= D_l(P||Q) bounds it (the expression of Zhu and Wang's
    Theorem 6 and Mironov et al. 2019, here as an upper bound for this
    direction only);
  * removal, D_a(Q || (1-q)Q + qP) = log E_Q[g(L - 1)] / (a - 1) with
    g(x) = (1 + qx)^(1-a) on x >= -1, the smaller of
      - Zhu and Wang's general upper bound (ICML 2019, Theorem 5; the
        terms l >= 3 times 3), and
      - a second-order bound: g(0) = 1, g'(0) = -(a-1)q and g'' decreases,
        so g(x) <= 1 - (a-1)qx + c_a x^2 with c_a = C(a,2) q^2 for x >= 0
        and c_a = (1-q)^(1-a) - 1 - (a-1)q (the secant to x = -1) for
        -1 <= x < 0, the larger; E_Q[L - 1] = 0 (P << Q, else eps(2) is
        infinite) and E_Q[(L-1)^2] =
        e^(D_2(P||Q)) - 1, so the divergence is at most
        log(1 + c_a (e^eps(2) - 1)) / (a - 1).
  The result is min(max(addition, removal), rdp_fn(a)). Unlike the general
  bound, it tends to 0 as the noise grows (the factor 3 leaves a floor of
  log(1 + 2 P[Bin(a, q) >= 3]) / (a - 1) per round).

  Args:
    orders: Integer orders >= 2.
    q: Probability that a given client takes part in a round.
    rdp_fn: The mechanism's RDP (for add/remove-one neighbours, both
      directions) at an array of integer orders.

  Returns:
    The bound per order.
  """
  if not 0 <= q <= 1:
    raise ValueError(f'sampling probability must be in [0, 1], got {q}')
  if any(a != math.floor(a) or a < 2 for a in orders):
    raise ValueError(f'orders must be integers >= 2, got {orders}')
  orders = [int(a) for a in orders]
  base = np.asarray(rdp_fn(np.asarray(orders, dtype=np.float64)),
                    dtype=np.float64)
  if q == 0:
    return np.zeros(len(orders))
  if q == 1:
    return base
  ls = np.arange(2, max(orders) + 1)
  eps_l = np.asarray(rdp_fn(ls.astype(np.float64)), dtype=np.float64)
  out = []
  for a, eps_a in zip(orders, base):
    addition = _binomial_terms(a, q, eps_l, 1.0)
    general = _binomial_terms(a, q, eps_l, 3.0)
    removal = min(general, _removal_second_order(a, q, float(eps_l[0])))
    out.append(min(max(max(addition, removal) / (a - 1), 0.0), eps_a))
  return np.asarray(out)


def _check_common(rounds: int, delta: float, q: float) -> None:
  if (isinstance(rounds, bool) or not isinstance(rounds, numbers.Integral) or
      rounds < 0):
    raise UserError(f'--rounds={rounds} must be an integer >= 0')
  if not 0 < delta < 1:
    raise UserError(f'--delta={delta} must be in (0, 1), typically below '
                    '1 / --num_clients')
  if not 0 < q <= 1:
    raise UserError(f'sampling probability {q} must be in (0, 1]: '
                    '--clients_per_round over --num_clients')


def epsilon(params: SkellamParams, sampling_probability: float, rounds: int,
            delta: float, amplified: bool = True) -> dict[str, Any]:
  """The (epsilon, delta) guarantee after `rounds` rounds.

  Args:
    params: The mechanism.
    sampling_probability: q, each client's chance to take part in a round
      (Poisson sampling).
    rounds: Rounds run so far; 0 gives epsilon 0.
    delta: The target delta.
    amplified: True: amplification by the (secret) Poisson sample, against
      anyone who sees only the released model. False: no amplification, for
      a client in every round, as the coordinator (who knows the sample) or
      readers of logged participants see it.

  Returns:
    {'epsilon', 'delta', 'order' (the optimal RDP order), 'rounds',
    'amplified', 'accountant': 'rdp_skellam'} plus params.describe().
  """
  _check_common(rounds, delta, sampling_probability)
  if rounds == 0:
    eps, order = 0.0, None
  else:
    if amplified:
      per_round = poisson_subsampled_rdp(ORDERS, sampling_probability,
                                         params.rdp)
    else:
      per_round = params.rdp(ORDERS)
    eps, order = rdp_privacy_accountant.compute_epsilon(
        ORDERS, rounds * per_round, delta)
    eps = float(eps)
    order = int(order) if math.isfinite(eps) else None
  result = {'epsilon': eps, 'delta': delta, 'order': order, 'rounds': rounds,
            'amplified': amplified, 'accountant': 'rdp_skellam'}
  result.update(params.describe())
  return result


def check_clients(expected_clients: float) -> None:
  """Refuses fewer expected clients per round than the mechanism needs."""
  if (isinstance(expected_clients, bool) or
      not isinstance(expected_clients, numbers.Real) or
      not math.isfinite(expected_clients) or
      expected_clients < MIN_EXPECTED_CLIENTS):
    raise UserError(
        f'--clients_per_round={expected_clients} is too few for '
        f'distributed_dp: it needs at least {MIN_EXPECTED_CLIENTS:g} expected '
        'clients per round (secure aggregation of one client reveals its '
        'noised update); raise --clients_per_round')


def calibrate(target_epsilon: float, *, dim: int, clip: float,
              expected_clients: float, bits: int,
              sampling_probability: float, rounds: int, delta: float,
              tolerance: float = 0.01, amplified: bool = True) -> float:
  """About the smallest noise multiplier whose epsilon is <= the target.

  Bisection on z; epsilon decreases with z (ddp_accounting_test checks it on
  a grid). With the bits fixed, epsilon levels off as z grows (the scale
  shrinks and rounding dominates the sensitivity), so a target below that
  floor is refused, naming what would reach it.

  Args:
    target_epsilon: The budget for the whole run (amplified epsilon).
    dim: Model parameters summed.
    clip: L2 clip.
    expected_clients: Expected participants per round.
    bits: The modular range is 2^bits.
    sampling_probability: Poisson sampling probability.
    rounds: Rounds of the run, at least 1.
    delta: The target delta.
    tolerance: Width of the final bracket on z.
    amplified: False: for the unamplified epsilon (logged participants).

  Returns:
    z with epsilon(z) <= target_epsilon and, if z > tolerance,
    epsilon(z - tolerance) > target_epsilon.

  Raises:
    UserError: bad input, too few clients or bits, or an unreachable target.
  """
  if not (math.isfinite(target_epsilon) and target_epsilon > 0):
    raise UserError(f'--target_epsilon={target_epsilon} must be a finite '
                    'number > 0')
  _check_common(rounds, delta, sampling_probability)
  if rounds < 1:
    raise UserError(f'--rounds={rounds} must be at least 1 to calibrate')
  if not tolerance > 0:
    raise ValueError(f'tolerance must be positive, got {tolerance}')

  def eps_at(z: float, b: int = bits) -> float:
    params = SkellamParams(dim=dim, clip=clip, noise_multiplier=z,
                           expected_clients=expected_clients, bits=b)
    return epsilon(params, sampling_probability, rounds, delta,
                   amplified)['epsilon']

  lo, hi = 0.0, 1.0
  while eps_at(hi) > target_epsilon:
    if hi >= _MAX_NOISE_MULTIPLIER:
      floor = eps_at(hi)
      better = next((b for b in range(bits + 1, MAX_BITS + 1)
                     if eps_at(hi, b) <= target_epsilon), None)
      if better is not None:
        raise TooFewBitsError(
            f'--target_epsilon={target_epsilon} is unreachable with '
            f'--secagg_bits={bits}: rounding to {bits} bits alone costs '
            f'epsilon {floor:.3g} over {rounds} rounds; use '
            f'--secagg_bits={better} or more')
      raise UserError(
          f'--target_epsilon={target_epsilon} is unreachable in '
          f'--rounds={rounds}: even the most noise distributed_dp can add '
          f'gives epsilon {floor:.3g} at --delta={delta}; lower --rounds or '
          '--clients_per_round, or raise --target_epsilon')
    lo, hi = hi, 2 * hi
  while hi - lo > tolerance:
    mid = (lo + hi) / 2
    if eps_at(mid) <= target_epsilon:
      hi = mid
    else:
      lo = mid
  return hi


def predicted_rounding_error(expected_clients: float, dim: int,
                             noise_multiplier: float, bits: int,
                             cosine: float = REFERENCE_COSINE) -> float:
  """Rounding error of the decoded sum over the norm of the clean sum.

  Each client's rounding adds variance f (1 - f) to a coordinate with
  fractional part f: 1/6 on average over uniform f. n clients: error norm
  sqrt(n D / 6) / s in model units, against ||sum|| =
  C sqrt(n + n (n - 1) cosine) for n updates of norm C with pairwise
  `cosine`. `bench/ddp_bits.py` measures it (wraps included).
  """
  params = SkellamParams(dim=dim, clip=1.0, noise_multiplier=noise_multiplier,
                         expected_clients=expected_clients, bits=bits)
  n = expected_clients
  signal = math.sqrt(n + n * (n - 1) * cosine)
  return math.sqrt(n * params.padded_dim / 6) / (params.scale * signal)


def sensitivity_inflation(expected_clients: float, dim: int,
                          noise_multiplier: float, bits: int) -> float:
  """Delta_2 / (s C) - 1: what rounding adds to the L2 sensitivity."""
  params = SkellamParams(dim=dim, clip=1.0, noise_multiplier=noise_multiplier,
                         expected_clients=expected_clients, bits=bits)
  return params.l2_sensitivity / (params.scale * params.clip) - 1


# The default bits keep both the rounding error (against the clean sum of
# updates with pairwise cosine REFERENCE_COSINE) and the sensitivity
# inflation at or below 1%, at noise multiplier 1 unless told the run's
# (bench/ddp_bits.py measures both; docs/privacy.md has the table).
BITS_TARGET = 0.01
_RULE_NOISE_MULTIPLIER = 1.0


def default_bits(expected_clients: float, dim: int,
                 noise_multiplier: Optional[float] = None) -> int:
  """The smallest bits keeping rounding costs within BITS_TARGET.

  Args:
    expected_clients: Expected participants per round.
    dim: Model parameters summed.
    noise_multiplier: The run's noise multiplier; None (before calibration)
      uses 1.

  Returns:
    Bits in [MIN_BITS, MAX_BITS].
  """
  check_clients(expected_clients)
  z = _RULE_NOISE_MULTIPLIER if noise_multiplier is None else noise_multiplier
  for bits in range(MIN_BITS, MAX_BITS + 1):
    if _scale_room(bits, expected_clients,
                   wrap_stddevs(_padded(dim))) <= 0:
      continue
    error = predicted_rounding_error(expected_clients, dim, z, bits)
    inflation = sensitivity_inflation(expected_clients, dim, z, bits)
    if error <= BITS_TARGET and inflation <= BITS_TARGET:
      return bits
  return MAX_BITS


def calibrate_with_bits(target_epsilon: float, *, dim: int, clip: float,
                        expected_clients: float,
                        sampling_probability: float, rounds: int,
                        delta: float, amplified: bool = True
                        ) -> tuple[float, int]:
  """(noise multiplier, bits) for a budget when the bits are not given.

  The bits rule depends on the noise (more noise, smaller scale) and the
  noise on the bits (fewer bits, more rounding in the sensitivity): start
  from the rule at z = 1 and raise the bits until the target is reachable and
  the rule holds at the calibrated z. Converges in a step or two (more bits
  only lower z).

  Raises:
    UserError: the target is unreachable in the rounds at any bits.
  """
  bits = default_bits(expected_clients, dim)
  while True:
    try:
      z = calibrate(target_epsilon, dim=dim, clip=clip,
                    expected_clients=expected_clients, bits=bits,
                    sampling_probability=sampling_probability, rounds=rounds,
                    delta=delta, amplified=amplified)
    except TooFewBitsError:
      bits += 1
      continue
    needed = default_bits(expected_clients, dim, z)
    if needed <= bits or bits >= MAX_BITS:
      return z, bits
    bits = needed


def ledger_row(params: SkellamParams, sampling_probability: float,
               rounds: int, delta: float,
               participants_logged: bool = False) -> dict[str, Any]:
  """The privacy fields of a metrics row after `rounds` rounds.

  'epsilon' is what the released model and metrics cost a client: amplified
  by the secret Poisson sample, unless the participants are logged, when it
  is the unamplified one (and 'amplified' says so). 'epsilon_coordinator' is
  always the unamplified one: the coordinator knows who took part.
  """
  amplified = epsilon(params, sampling_probability, rounds, delta)
  unamplified = epsilon(params, sampling_probability, rounds, delta,
                        amplified=False)
  row = dict(unamplified if participants_logged else amplified)
  row['epsilon_coordinator'] = unamplified['epsilon']
  row['sampling_probability'] = sampling_probability
  return row


class Ledger:
  """The privacy fields of each row of a distributed_dp run (`ledger_row`).

  Attributes:
    params: The mechanism.
    sampling_probability: q, each client's chance to take part in a round.
    delta: The target delta.
    participants_logged: The sample is public (--log_participants):
      'epsilon' is the unamplified one, and the row says so.
  """

  def __init__(self, params: SkellamParams, sampling_probability: float,
               delta: float, participants_logged: bool = False):
    _check_common(0, delta, sampling_probability)
    self.params = params
    self.sampling_probability = sampling_probability
    self.delta = delta
    self.participants_logged = participants_logged

  def after(self, rounds: int) -> dict[str, Any]:
    """The guarantee after `rounds` rounds, JSON-safe, for a metrics row."""
    row = ledger_row(self.params, self.sampling_probability, rounds,
                     self.delta, self.participants_logged)
    if self.participants_logged:
      row['note'] = privacy.UNAMPLIFIED_NOTE
    return privacy.to_json_safe(row)
