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
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_federated as tff
import tensorflow_privacy as tfp

DEFAULT_BITS = 32


def quantization_error_bound(bound: float, bits: int, num_clients: int
                             ) -> float:
  """Largest per-coordinate error of the decoded sum of `num_clients` values.

  Stochastic rounding moves each client's value by less than one step.
  """
  return num_clients * 2.0 * bound / (2.0**bits - 1)


class SecureQuantizedSumFactory(tff.aggregators.UnweightedAggregationFactory):
  """Fixed-point secure sum of float tensors."""

  def __init__(self, bound: float, bits: int = DEFAULT_BITS):
    if not bound > 0:
      raise ValueError(f'bound must be > 0, got {bound}')
    if not 2 <= bits <= 48:
      raise ValueError(f'bits must be in [2, 48], got {bits}')
    self._bound = float(bound)
    self._bits = int(bits)

  def create(self, value_type) -> tff.templates.AggregationProcess:
    bound, bits = self._bound, self._bits
    scale = (2.0**bits - 1) / (2.0 * bound)

    @tff.tensorflow.computation(value_type)
    def encode(value):

      def quantize(x):
        x = tf.clip_by_value(tf.cast(x, tf.float64), -bound, bound)
        scaled = (x + bound) * scale
        low = tf.floor(scaled)
        up = tf.random.uniform(tf.shape(x), dtype=tf.float64) < scaled - low
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
  sum of clipped records changes, to SecAgg. The server adds the noise.
  """
  query = tfp.NormalizedQuery(
      tfp.GaussianSumQuery(l2_norm_clip=clip,
                           stddev=noise_multiplier * clip),
      denominator=clients_per_round)
  return tff.aggregators.DifferentiallyPrivateFactory(
      query, SecureQuantizedSumFactory(clip, bits))
