"""The weighted FedAvg mean under secure aggregation, at no cost in accuracy.

FedAvg's mean weights each client's update by its example count (McMahan et
al. 2017). Under secure aggregation the server may see only sums, so each
client sends `[w * update, w]` and the server divides the two secure sums,
as Flower's SecAgg+ workflow does (with its `max_weight` cap). What the sum
needs is a known range per coordinate; here it comes from

* the weight, capped at `max_weight` (by default the most examples any
  client trains on, so the cap never bites), and
* the update's L2 norm, clipped at an adaptive bound that tracks a value
  somewhat above the largest norms seen: the quantile-based estimate of TFF's
  `tff.learning.secure_aggregator` zeroing (Andrew, Thakkar et al. 2021,
  "Differentially Private Learning with Adaptive Clipping"): the 0.98
  quantile, starting at 10, geometric steps of log(10), times 2 plus 1. Its
  counts are summed securely too. So by default nothing is clipped and the
  result is the weighted mean's, within the quantization bound below.

Each coordinate of `w * update` lies in [-max_weight C, max_weight C]; it is
quantized to `bits` bits with unbiased stochastic rounding (error below one
step, 2 max_weight C / (2^bits - 1), per client), the weight to an integer
the same way, and both are summed with `tff.federated_secure_sum_bitwidth`,
which our runtime gives real SecAgg+ masks (tff_pipeline.secagg.form). The
participant count (public) is a plain sum.
"""

from __future__ import annotations

import collections
import math

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

DEFAULT_BITS = 32
# The adaptive clip: TFF's secure_aggregator zeroing norm (see above).
INITIAL_ESTIMATE = 10.0  # Round 1 clips at 21.
TARGET_QUANTILE = 0.98
LEARNING_RATE = math.log(10.0)
MULTIPLIER = 2.0
INCREMENT = 1.0


def quantization_error_bound(max_weight: float, clip: float, bits: int,
                             num_clients: int) -> float:
  """Largest per-coordinate error of the decoded sum of `w * update`."""
  return num_clients * 2.0 * max_weight * clip / (2.0**bits - 1)


class SecureWeightedMeanFactory(tff.aggregators.WeightedAggregationFactory):
  """Weighted mean of adaptively clipped updates over secure sums."""

  def __init__(self, max_weight: float, bits: int = DEFAULT_BITS,
               initial_clip: float = INITIAL_ESTIMATE):
    if not max_weight >= 1:
      raise ValueError(f'max_weight must be >= 1, got {max_weight}')
    if not 8 <= bits <= 48:
      raise ValueError(f'bits must be in [8, 48], got {bits}')
    if not initial_clip > 0:
      raise ValueError(f'initial_clip must be > 0, got {initial_clip}')
    self._max_weight = float(max_weight)
    self._bits = int(bits)
    self._weight_bits = math.ceil(math.log2(self._max_weight + 1))
    self._clip = tff.aggregators.PrivateQuantileEstimationProcess.no_noise(
        initial_estimate=float(initial_clip), target_quantile=TARGET_QUANTILE,
        learning_rate=LEARNING_RATE, multiplier=MULTIPLIER,
        increment=INCREMENT, secure_estimation=True)

  def create(self, value_type, weight_type) -> tff.templates.AggregationProcess:
    bits, weight_bits = self._bits, self._weight_bits
    max_weight = self._max_weight
    clip_process = self._clip
    steps = 2.0**bits - 1

    @tff.tensorflow.computation(value_type)
    def norm(value):
      return tf.cast(tf.linalg.global_norm(
          [tf.cast(v, tf.float64) for v in tf.nest.flatten(value)]),
                     tf.float32)

    @tff.tensorflow.computation(value_type, weight_type, np.float32)
    def encode(value, weight, clip):
      clip = tf.cast(clip, tf.float64)
      flat = [tf.cast(v, tf.float64) for v in tf.nest.flatten(value)]
      size = tf.linalg.global_norm(flat)
      factor = tf.minimum(clip / tf.maximum(size, 1e-30), 1.0)
      weight = tf.cast(weight, tf.float64)
      capped = tf.minimum(weight, max_weight)
      bound = max_weight * clip
      scale = steps / (2.0 * bound)

      def quantize(v):
        x = tf.clip_by_value(capped * factor * v, -bound, bound)
        scaled = (x + bound) * scale
        up = tf.random.uniform(tf.shape(x), dtype=tf.float64)
        return tf.cast(tf.minimum(tf.floor(scaled + up), steps), tf.int64)

      encoded = tf.nest.pack_sequence_as(value, [quantize(v) for v in flat])
      rounded = tf.floor(tf.maximum(capped, 0.0) + tf.random.uniform(
          [], dtype=tf.float64))
      return (encoded, tf.cast(tf.minimum(rounded, max_weight), tf.int64),
              tf.cast(factor < 1.0, tf.int32),
              tf.cast(weight > max_weight, tf.int32))

    @tff.tensorflow.computation(value_type)
    def one(value):
      del value
      return tf.constant(1, tf.int32)

    encoded_type = encode.type_signature.result[0]

    @tff.tensorflow.computation(encoded_type, np.int64, np.int32, np.float32)
    def decode(value_sum, weight_sum, count, clip):
      bound = max_weight * tf.cast(clip, tf.float64)
      scale = steps / (2.0 * bound)
      total_weight = tf.cast(weight_sum, tf.float64)
      offset = tf.cast(count, tf.float64) * bound
      specs = tf.nest.flatten(tff.types.type_to_tf_tensor_specs(value_type))
      means = [tf.cast(tf.math.divide_no_nan(
          tf.cast(s, tf.float64) / scale - offset, total_weight), spec.dtype)
               for s, spec in zip(tf.nest.flatten(value_sum), specs)]
      return tf.nest.pack_sequence_as(value_sum, means)

    @tff.federated_computation()
    def init_fn():
      return clip_process.initialize()

    @tff.federated_computation(
        init_fn.type_signature.result,
        tff.FederatedType(value_type, tff.CLIENTS),
        tff.FederatedType(weight_type, tff.CLIENTS))
    def next_fn(state, value, weight):
      clip = clip_process.report(state)
      encoded = tff.federated_map(
          encode, (value, weight, tff.federated_broadcast(clip)))
      new_state = clip_process.next(state, tff.federated_map(norm, value))
      value_sum = tff.federated_secure_sum_bitwidth(encoded[0], bits)
      weight_sum = tff.federated_secure_sum_bitwidth(encoded[1], weight_bits)
      clipped = tff.federated_secure_sum_bitwidth(encoded[2], 1)
      capped = tff.federated_secure_sum_bitwidth(encoded[3], 1)
      # Who took part is not secret; the offset of the sum depends on it.
      count = tff.federated_sum(tff.federated_map(one, value))
      result = tff.federated_map(decode, (value_sum, weight_sum, count, clip))
      measurements = tff.federated_zip(collections.OrderedDict(
          clip=clip, clipped=clipped, capped=capped))
      return tff.templates.MeasuredProcessOutput(
          state=new_state, result=result, measurements=measurements)

    return tff.templates.AggregationProcess(init_fn, next_fn)
