"""Secure aggregation as a TFF aggregation factory.

Client values are clipped to [-bound, bound] per coordinate, quantized to
fixed point in Z_{2^bits} with stochastic rounding (unbiased), and summed with
`tff.federated_secure_sum_bitwidth`. TFF's own runtimes treat that intrinsic
as a plain sum; ours (`tff_pipeline.secagg.form` driven by SecAgg+,
`workers.secure_round`) gives it real masks, so the server only ever holds
masked values until the sum over the round's surviving parties.

It is an unweighted sum: use it inside `tff.aggregators.UnweightedMeanFactory`
(`mean_factory`; --aggregator=secagg is the weighted mean of
`weighted_mean`) or as the record sum of
`tff.aggregators.DifferentiallyPrivateFactory` (`dp_factory`), whose records
are already L2-clipped to the same bound.

DP and rounding. Stochastic rounding moves each coordinate by up to one step
2C / (2^bits - 1), so a C-clipped record can decode to norm up to
C + sqrt(d) step: 9.6 C at 8 bits for a 1.2M-parameter model, and the
Gaussian noise, calibrated for sensitivity C, would protect far less than
reported. So with `l2_clip` (`dp_factory`) rounding is conditional (Kairouz,
Liu, Steinke, ICML 2021, "The Distributed Discrete Gaussian Mechanism for
Federated Learning with Secure Aggregation", Theorem 1 and Section 4.1): the
whole record is rounded again until its decoded norm is at most
`dp_sensitivity(clip, bits, d)`, and after `MAX_ROUNDING_TRIES` draws it is
rounded toward zero, which always fits. The bound holds for every record;
the accountant uses it as the L2 sensitivity (its ratio to C is
`dp_sensitivity_inflation`: 1 + 2e-10 at 32 bits for the CNN, 1.00016 at
16, 4.4 at 8).
"""

from __future__ import annotations

import math

import tensorflow as tf
import tensorflow_federated as tff
import tensorflow_privacy as tfp

DEFAULT_BITS = 32
# Conditional rounding (see the module docstring): Kairouz et al.'s beta, and
# draws before rounding toward zero (each fails with probability <= 0.61).
ROUNDING_BETA = math.exp(-0.5)
MAX_ROUNDING_TRIES = 20


def _half_range(bits: int) -> float:
  """h = C s: the clip in integer units ((2^bits - 1) / 2, a half-integer)."""
  return (2.0**bits - 1) / 2.0


def rounded_norm_bound_squared(bits: int, dim: int) -> float:
  """B: every conditionally rounded record has ||r - h||^2 <= B.

  Integer units (one step = 1), centred on the encoding of zero. For a
  record of norm <= C (h in these units), one randomized rounding has, with
  probability >= 1 - beta, ||r||^2 <= h^2 + d/4 + sqrt(2 ln(1/beta)) (h +
  sqrt(d)/2), and always ||r|| <= h + sqrt(d) (Kairouz et al., Theorem 1).
  Both are >= h^2 + d/4, which rounding toward zero never exceeds.
  """
  if dim < 1:
    raise ValueError(f'dim must be >= 1, got {dim}')
  h, root_d = _half_range(bits), math.sqrt(dim)
  always = (h + root_d)**2
  likely = (h * h + dim / 4 +
            math.sqrt(2 * math.log(1 / ROUNDING_BETA)) * (h + root_d / 2))
  return min(always, likely)


def dp_sensitivity_inflation(bits: int, dim: int) -> float:
  """The L2 sensitivity of a decoded `dp_factory` record over the clip."""
  return math.sqrt(rounded_norm_bound_squared(bits, dim)) / _half_range(bits)


def dp_sensitivity(clip: float, bits: int, dim: int) -> float:
  """The L2 norm every decoded `dp_factory` record stays within."""
  return clip * dp_sensitivity_inflation(bits, dim)


def _conditional_round(v: tf.Tensor, h: float,
                       bound_squared: float) -> tf.Tensor:
  """Randomized rounding of v (in [0, 2h]) with ||r - h||^2 <= bound_squared.

  Redraws until the bound holds; after MAX_ROUNDING_TRIES, rounds toward the
  encoding of zero (|r_j - h| <= max(|v_j - h|, 1/2), so ||r - h||^2 <=
  ||v - h||^2 + d/4 <= bound_squared for a record within the clip); failing
  even that (a record over the clip by float error), returns the grid
  points next to h (||r - h||^2 = d/4).
  """
  low = tf.floor(v)
  frac = v - low
  bound = tf.constant(bound_squared, tf.float64)

  def fits(r):
    return tf.reduce_sum(tf.square(r - h)) <= bound

  def draw():
    return low + tf.cast(
        tf.random.uniform(tf.shape(v), dtype=tf.float64) < frac, tf.float64)

  def again(i, r):
    return tf.logical_and(i < MAX_ROUNDING_TRIES, tf.logical_not(fits(r)))

  _, r = tf.while_loop(again, lambda i, r: (i + 1, draw()),
                       (tf.constant(1), draw()))
  toward_zero = tf.where(v >= h, low, tf.math.ceil(v))
  nearest_zero = tf.where(v >= h, tf.zeros_like(v) + (h - 0.5),
                          tf.zeros_like(v) + (h + 0.5))
  r = tf.cond(fits(r), lambda: r, lambda: toward_zero)
  return tf.cond(fits(r), lambda: r, lambda: nearest_zero)


def quantization_error_bound(bound: float, bits: int, num_clients: int
                             ) -> float:
  """Largest per-coordinate error of the decoded sum of `num_clients` values.

  Stochastic rounding moves each client's value by less than one step.
  """
  return num_clients * 2.0 * bound / (2.0**bits - 1)


class SecureQuantizedSumFactory(tff.aggregators.UnweightedAggregationFactory):
  """Fixed-point secure sum of float tensors."""

  def __init__(self, bound: float, bits: int = DEFAULT_BITS,
               l2_clip: bool = False):
    """Checks the settings.

    Args:
      bound: Each coordinate is clipped to [-bound, bound].
      bits: Fixed-point bits per coordinate.
      l2_clip: The records are L2-clipped to `bound` (DP): round them
        conditionally, so each decoded record has L2 norm at most
        `dp_sensitivity(bound, bits, d)`.
    """
    if not bound > 0:
      raise ValueError(f'bound must be > 0, got {bound}')
    if not 2 <= bits <= 48:
      raise ValueError(f'bits must be in [2, 48], got {bits}')
    self._bound = float(bound)
    self._bits = int(bits)
    self._l2_clip = l2_clip

  def create(self, value_type) -> tff.templates.AggregationProcess:
    bound, bits = self._bound, self._bits
    scale = (2.0**bits - 1) / (2.0 * bound)
    specs = tf.nest.flatten(tff.types.type_to_tf_tensor_specs(value_type))
    sizes = [int(math.prod(s.shape)) for s in specs]
    h = _half_range(bits)
    bound_squared = (rounded_norm_bound_squared(bits, sum(sizes))
                     if self._l2_clip else None)

    @tff.tensorflow.computation(value_type)
    def encode(value):

      def scaled(x):
        x = tf.clip_by_value(tf.cast(x, tf.float64), -bound, bound)
        return (x + bound) * scale

      if bound_squared is not None:
        # The whole record at once: the bound is on its L2 norm.
        flat = tf.concat([tf.reshape(scaled(x), [-1])
                          for x in tf.nest.flatten(value)], axis=0)
        rounded = tf.cast(_conditional_round(flat, h, bound_squared),
                          tf.int64)
        return tf.nest.pack_sequence_as(value, [
            tf.reshape(piece, s.shape)
            for piece, s in zip(tf.split(rounded, sizes), specs)])

      def quantize(x):
        v = scaled(x)
        low = tf.floor(v)
        up = tf.random.uniform(tf.shape(x), dtype=tf.float64) < v - low
        return tf.cast(low + tf.cast(up, tf.float64), tf.int64)

      return tf.nest.map_structure(quantize, value)

    @tff.tensorflow.computation(value_type)
    def one(value):
      del value
      return tf.constant(1, tf.int32)

    encoded_type = encode.type_signature.result

    @tff.tensorflow.computation(encoded_type, tf.int32)
    def decode(summed, count):
      offset = tf.cast(count, tf.float64) * bound
      return tf.nest.map_structure(
          lambda s, spec: tf.cast(tf.cast(s, tf.float64) / scale - offset,
                                  spec.dtype),
          summed, tff.types.type_to_tf_tensor_specs(value_type))

    @tff.federated_computation()
    def init_fn():
      return tff.federated_value((), tff.SERVER)

    @tff.federated_computation(init_fn.type_signature.result,
                               tff.FederatedType(value_type, tff.CLIENTS))
    def next_fn(state, value):
      summed = tff.federated_secure_sum_bitwidth(
          tff.federated_map(encode, value), bits)
      # Who took part is not secret; the offset of the sum depends on it.
      count = tff.federated_sum(tff.federated_map(one, value))
      return tff.templates.MeasuredProcessOutput(
          state=state,
          result=tff.federated_map(decode, (summed, count)),
          measurements=tff.federated_value((), tff.SERVER))

    return tff.templates.AggregationProcess(init_fn, next_fn)


def mean_factory(clip: float, bits: int = DEFAULT_BITS
                 ) -> tff.aggregators.UnweightedAggregationFactory:
  """Unweighted mean of updates L2-clipped to `clip`, summed securely."""
  return tff.aggregators.UnweightedMeanFactory(
      value_sum_factory=tff.aggregators.clipping_factory(
          clip, SecureQuantizedSumFactory(clip, bits)))


def dp_factory(noise_multiplier: float, clients_per_round: float, clip: float,
               bits: int = DEFAULT_BITS
               ) -> tff.aggregators.UnweightedAggregationFactory:
  """DP-FedAvg's Gaussian mean (fixed clip) over a secure record sum.

  The same query as `DifferentiallyPrivateFactory.gaussian_fixed`; only the
  sum of clipped records changes, to SecAgg, with conditional rounding. The
  server adds the noise. The L2 sensitivity of the decoded sum is
  `dp_sensitivity(clip, bits, d)`, not `clip`: account for it with
  noise_multiplier / `dp_sensitivity_inflation(bits, d)`.
  """
  query = tfp.NormalizedQuery(
      tfp.GaussianSumQuery(l2_norm_clip=clip,
                           stddev=noise_multiplier * clip),
      denominator=clients_per_round)
  return tff.aggregators.DifferentiallyPrivateFactory(
      query, SecureQuantizedSumFactory(clip, bits, l2_clip=True))
