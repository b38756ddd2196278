"""Privacy accounting for DP-FedAvg with the dp_accounting library.

Each round samples clients (Poisson or fixed-size uniform without
replacement) and adds Gaussian noise with standard deviation
`noise_multiplier * clip` to the sum of clipped client updates; the run is
that round mechanism composed `rounds` times. The unit of privacy is one
client (user-level DP). All accounting math is dp_accounting's.

dp_accounting's `GaussianDpEvent` takes the noise standard deviation over the
L2 *sensitivity* of the sum. Poisson sampling is analysed for add/remove-one
neighbours, where one client moves the sum of C-clipped updates by at most C;
sampling without replacement only for replace-one neighbours, where one
client's update is swapped for another and the sum moves by up to 2C. So the
event's multiplier is z for Poisson and z / 2 for fixed-size sampling
(Mironov, Talwar, Zhang 2019, "Renyi Differential Privacy of the Sampled
Gaussian Mechanism"; Wang, Balle, Kasiviswanathan 2019, "Subsampled Renyi
Differential Privacy and Analytical Moments Accountant").
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import dp_accounting
from dp_accounting import pld
from dp_accounting import rdp

from data_prep.errors import UserError

SAMPLING_KINDS = ('poisson', 'fixed')

# PLD grid step (in privacy-loss units) for the PLD accountant. It is coarsened
# in proportion to the RDP epsilon (eps_rdp / 1e4) so that the grid, which
# spans roughly the range of the privacy loss, stays small: each call stays
# well under a second. The PLD bound is pessimistic, so any step gives a valid
# upper bound; a finer one only gives a tighter one.
PLD_VALUE_DISCRETIZATION_INTERVAL = 1e-3

# Above this RDP epsilon the guarantee is vacuous and PLD is slow and can
# overflow, so PLD is skipped (epsilon_pld None).
PLD_MAX_EPSILON = 100.0

# calibrate_noise_multiplier gives up above this noise multiplier. RDP's
# epsilon levels off (about 0.0035 at delta 1e-5 with the default orders), and
# far above it dp_accounting 0.4.3 fails on rounding errors (below).
_MAX_NOISE_MULTIPLIER = 2.0**14


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How each round picks its clients.

  Attributes:
    kind: 'poisson' (each client joins a round independently with probability
      expected_size / population) or 'fixed' (exactly expected_size clients,
      uniformly without replacement, as sampling.sample_clients does).
    population: The number of clients.
    expected_size: Clients per round; for 'poisson' the expected count (may be
      fractional), for 'fixed' the exact count (an integer).
  """
  kind: str
  population: int
  expected_size: int | float

  def __post_init__(self):
    if self.kind not in SAMPLING_KINDS:
      raise UserError(f'client sampling must be one of {SAMPLING_KINDS}, '
                      f'got {self.kind!r}')
    if (isinstance(self.population, bool) or
        not isinstance(self.population, numbers.Integral) or
        self.population < 1):
      raise UserError(f'--num_clients={self.population}: privacy accounting '
                      'needs the actual number of clients, at least 1')
    size = self.expected_size
    if (isinstance(size, bool) or not isinstance(size, numbers.Real) or
        not math.isfinite(size) or size <= 0):
      raise UserError(f'--clients_per_round={size} must be a positive number')
    if self.kind == 'fixed' and size != int(size):
      raise UserError(f'--clients_per_round={size} must be an integer for '
                      'fixed-size sampling')
    if size > self.population:
      raise UserError(
          f'--clients_per_round={size} is greater than '
          f'--num_clients={self.population}; lower it or raise --num_clients')

  @property
  def probability(self) -> float:
    """The chance that a given client takes part in a given round."""
    return self.expected_size / self.population


def _check_noise_multiplier(noise_multiplier: float) -> None:
  if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
    raise UserError(f'--noise_multiplier={noise_multiplier} must be a finite '
                    'number >= 0')


def _check_rounds(rounds: int, minimum: int) -> None:
  if (isinstance(rounds, bool) or not isinstance(rounds, numbers.Integral) or
      rounds < minimum):
    raise UserError(f'--rounds={rounds} must be an integer >= {minimum}')


def _check_delta(delta: float) -> None:
  if not 0 < delta < 1:
    raise UserError(f'--delta={delta} must be in (0, 1), typically below '
                    '1 / --num_clients')


def sensitivity_in_clips(sampling: Sampling) -> float:
  """L2 sensitivity of the clipped sum, in units of the clip, for `sampling`.

  1 for Poisson sampling (add/remove-one neighbours), 2 for fixed-size
  sampling (replace-one neighbours: one clipped update swapped for another).
  """
  return 1.0 if sampling.kind == 'poisson' else 2.0


def dp_event(noise_multiplier: float, sampling: Sampling,
             rounds: int, amplified: bool = True) -> dp_accounting.DpEvent:
  """Returns the DpEvent of `rounds` rounds of sampled Gaussian noise.

  Args:
    noise_multiplier: Noise standard deviation over the clipping norm.
    sampling: How clients are sampled each round.
    rounds: The number of rounds; 0 gives a NoOpDpEvent.
    amplified: False: the sample is public (logged participants), so each
      round is the Gaussian mechanism itself, for a client in every round
      (the same neighbours and sensitivity as with sampling).
  """
  _check_noise_multiplier(noise_multiplier)
  _check_rounds(rounds, 0)
  if rounds == 0:
    return dp_accounting.NoOpDpEvent()
  # dp_accounting's multiplier is over the L2 sensitivity, not the clip.
  gaussian = dp_accounting.GaussianDpEvent(
      noise_multiplier / sensitivity_in_clips(sampling))
  if not amplified:
    return dp_accounting.SelfComposedDpEvent(gaussian, rounds)
  if sampling.kind == 'poisson':
    round_event = dp_accounting.PoissonSampledDpEvent(sampling.probability,
                                                      gaussian)
  else:
    round_event = dp_accounting.SampledWithoutReplacementDpEvent(
        sampling.population, int(sampling.expected_size), gaussian)
  return dp_accounting.SelfComposedDpEvent(round_event, rounds)


def _neighboring_relation(
    sampling: Sampling) -> dp_accounting.NeighboringRelation:
  # Sampling without replacement is only analysed for replace-one neighbours
  # (one client's data swapped), Poisson for add/remove-one.
  if sampling.kind == 'fixed':
    return dp_accounting.NeighboringRelation.REPLACE_ONE
  return dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE


def _rdp_epsilon(noise_multiplier: float, sampling: Sampling, rounds: int,
                 delta: float, amplified: bool = True) -> float | None:
  """Returns the RDP epsilon, or None where dp_accounting fails."""
  accountant = rdp.RdpAccountant(
      neighboring_relation=_neighboring_relation(sampling))
  accountant.compose(dp_event(noise_multiplier, sampling, rounds, amplified))
  try:
    return float(accountant.get_epsilon(delta))
  except ValueError:
    # 'Renyi divergence cannot be negative': with a tiny sampling probability
    # (about 1e-6 and below) or a huge noise multiplier (from about 2**14),
    # rounding makes some orders' RDP slightly negative (about -1e-15) and
    # dp_accounting 0.4.3 refuses it.
    return None


def _pld_epsilon(noise_multiplier: float, sampling: Sampling, rounds: int,
                 delta: float, epsilon_rdp: float | None,
                 amplified: bool = True) -> float | None:
  if sampling.kind != 'poisson' and amplified:
    return None
  interval = PLD_VALUE_DISCRETIZATION_INTERVAL
  if epsilon_rdp is not None:
    if epsilon_rdp > PLD_MAX_EPSILON:
      return None
    interval = max(interval, epsilon_rdp / 1e4)
  accountant = pld.PLDAccountant(
      neighboring_relation=_neighboring_relation(sampling),
      value_discretization_interval=interval)
  event = dp_event(noise_multiplier, sampling, rounds, amplified)
  if not accountant.supports(event):
    return None
  accountant.compose(event)
  return float(accountant.get_epsilon(delta))


def epsilon(noise_multiplier: float, sampling: Sampling, rounds: int,
            delta: float, amplified: bool = True) -> dict[str, Any]:
  """Returns the (epsilon, delta) guarantee of a DP-FedAvg run.

  Both accountants give valid upper bounds; the result is the smaller.
  `amplified=False` (a public sample) composes the unsampled Gaussian
  mechanism `rounds` times, for a client in every round.

  Args:
    noise_multiplier: Noise standard deviation over the clipping norm; 0 means
      no privacy (epsilon inf).
    sampling: How clients are sampled each round. For 'fixed' the guarantee
      is for replace-one neighbours, for 'poisson' for add/remove-one, so the
      two are not directly comparable.
    rounds: The number of rounds; 0 gives epsilon 0.
    delta: The target delta.

  Returns:
    {'epsilon': the smaller bound, 'delta': delta, 'epsilon_rdp': the RDP
    bound, or None where dp_accounting fails numerically (see
    _rdp_epsilon), 'epsilon_pld': the PLD bound, or None for fixed-size
    sampling (PLD does not support it) or when epsilon_rdp > PLD_MAX_EPSILON,
    'accountant': 'rdp' or 'pld', whichever gave 'epsilon' (RDP on ties)}.
    Epsilons are floats and may be float('inf'); see to_json_safe.

  Raises:
    UserError: for a bad noise multiplier, rounds or delta, or if neither
      accountant gives a bound.
  """
  _check_noise_multiplier(noise_multiplier)
  _check_rounds(rounds, 0)
  _check_delta(delta)
  if rounds == 0 or noise_multiplier == 0:
    # Exact, and dp_accounting cannot compose 0 rounds (nor, for fixed-size
    # sampling, zero noise).
    epsilon_rdp = 0.0 if rounds == 0 else math.inf
    epsilon_pld = (epsilon_rdp if sampling.kind == 'poisson' or not amplified
                   else None)
  else:
    epsilon_rdp = _rdp_epsilon(noise_multiplier, sampling, rounds, delta,
                               amplified)
    epsilon_pld = _pld_epsilon(noise_multiplier, sampling, rounds, delta,
                               epsilon_rdp, amplified)
  if epsilon_rdp is None and epsilon_pld is None:
    raise UserError(
        f'privacy accounting failed numerically for --noise_multiplier='
        f'{noise_multiplier} with sampling probability '
        f'{sampling.probability:.3g}; use Poisson sampling (PLD) or a less '
        'extreme setting')
  if epsilon_rdp is None or (epsilon_pld is not None and
                             epsilon_pld < epsilon_rdp):
    best, accountant = epsilon_pld, 'pld'
  else:
    best, accountant = epsilon_rdp, 'rdp'
  return {
      'epsilon': best,
      'delta': delta,
      'epsilon_rdp': epsilon_rdp,
      'epsilon_pld': epsilon_pld,
      'accountant': accountant,
      'amplified': amplified,
  }


def calibrate_noise_multiplier(target_epsilon: float,
                               sampling: Sampling,
                               rounds: int,
                               delta: float,
                               tolerance: float = 0.01,
                               amplified: bool = True) -> float:
  """Returns about the smallest noise multiplier reaching target_epsilon.

  Uses the RDP accountant only: it is fast and its epsilon is monotone in the
  noise multiplier, which bisection needs. (PLD may allow slightly less
  noise.) The noise multiplier is bracketed by doubling from 1, then bisected.

  Args:
    target_epsilon: The epsilon to stay within.
    sampling: How clients are sampled each round.
    rounds: The number of rounds, at least 1.
    delta: The target delta.
    tolerance: Width of the final bracket.
    amplified: False: for the unamplified epsilon (logged participants).

  Returns:
    z with RDP epsilon(z) <= target_epsilon and, if z > tolerance,
    epsilon(z - tolerance) > target_epsilon.

  Raises:
    UserError: for a bad target, rounds or delta, an unreachable target, or a
      setting where the RDP accountant fails numerically.
  """
  if not (math.isfinite(target_epsilon) and target_epsilon > 0):
    raise UserError(f'--target_epsilon={target_epsilon} must be a finite '
                    'number > 0')
  _check_rounds(rounds, 1)
  _check_delta(delta)
  if not tolerance > 0:
    raise ValueError(f'tolerance must be positive, got {tolerance}')

  def fits(z: float) -> bool:
    eps = _rdp_epsilon(z, sampling, rounds, delta, amplified)
    if eps is None:
      raise UserError(
          f'cannot calibrate: RDP accounting fails numerically at noise '
          f'multiplier {z:g} with sampling probability '
          f'{sampling.probability:.3g}; set --noise_multiplier instead')
    return eps <= target_epsilon

  # Invariant: lo does not fit (z = 0 gives epsilon inf), hi fits.
  lo, hi = 0.0, 1.0
  while not fits(hi):
    if hi >= _MAX_NOISE_MULTIPLIER:
      raise UserError(
          f'--target_epsilon={target_epsilon} is unreachable: even '
          f'noise_multiplier {hi:g} gives a larger RDP epsilon at '
          f'--delta={delta}; raise --target_epsilon or --delta')
    lo, hi = hi, 2 * hi
  while hi - lo > tolerance:
    mid = (lo + hi) / 2
    if fits(mid):
      hi = mid
    else:
      lo = mid
  return hi


def _json_safe(value: Any) -> Any:
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # 'inf', '-inf' or 'nan'.
  if isinstance(value, dict):
    return {k: _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  return value


def to_json_safe(d: dict[str, Any]) -> dict[str, Any]:
  """Returns a copy of d with non-finite floats as 'inf', '-inf' or 'nan'.

  json.dumps would write them as Infinity/NaN, which is not JSON. Nested
  dicts, lists and tuples are converted too (tuples become lists).
  """
  return _json_safe(d)


# What a row says when participants are logged.
UNAMPLIFIED_NOTE = ('participants are logged (--log_participants): epsilon '
                    'without amplification by sampling')


class Ledger:
  """The (epsilon, delta) spent after each round of a central DP run.

  Attributes:
    noise_multiplier: Noise standard deviation over the clip.
    sampling: How rounds pick clients.
    delta: The target delta.
    amplified: False when the sample is public (logged participants).
    sensitivity_inflation: A record's L2 sensitivity over the clip (above 1
      where rounding can lengthen it: secagg_dp); the accountant takes
      noise_multiplier / sensitivity_inflation.
  """

  def __init__(self, noise_multiplier: float, sampling: Sampling,
               delta: float, amplified: bool = True,
               sensitivity_inflation: float = 1.0):
    if not sensitivity_inflation >= 1:
      raise ValueError('sensitivity_inflation must be >= 1, got '
                       f'{sensitivity_inflation}')
    self.noise_multiplier = noise_multiplier
    self.sampling = sampling
    self.delta = delta
    self.amplified = amplified
    self.sensitivity_inflation = sensitivity_inflation

  @property
  def effective_noise_multiplier(self) -> float:
    return self.noise_multiplier / self.sensitivity_inflation

  def after(self, rounds: int) -> dict[str, Any]:
    """The guarantee after `rounds` rounds, JSON-safe, for a metrics row."""
    # Both accountants take well under a second per call.
    spent = to_json_safe(epsilon(self.effective_noise_multiplier,
                                 self.sampling, rounds, self.delta,
                                 amplified=self.amplified))
    spent['noise_multiplier'] = self.noise_multiplier
    if self.sensitivity_inflation != 1.0:
      spent['sensitivity_inflation'] = self.sensitivity_inflation
      spent['effective_noise_multiplier'] = self.effective_noise_multiplier
    if not self.amplified:
      spent['note'] = UNAMPLIFIED_NOTE
    spent['rounds'] = rounds
    return spent
