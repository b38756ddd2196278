"""A sum of client values that does not depend on the order of the clients.

Float32 addition is not associative: the local runtime adds a round's client
updates in client order, the edge pods per pod and then per edge server, and
the two sums differ in their last bits (~3e-8). For most models that is
noise; for TFF's EMNIST CNN on Fashion-MNIST it is not: its training is not
continuous in the weights at that scale, and one round later the two
runtimes' models differed by ~1e-2 (measured; reversing the order of a
round's clients on the local runtime alone did the same, with or without
dropout). `ExactSumFactory` adds float32 values in
float64: each has a 24-bit significand, so sums of up to 2^29 values whose
magnitudes lie within a factor 2^(53-24-log2 n) of each other are exact,
whatever the order (and partial sums merged on edge servers are exact too);
the total is rounded to float32 once, at the server. With it inside TFF's
weighted mean (`exact_weighted_mean`), the runtimes train the same model.
The cost: merged partial sums travel as float64 (twice the bytes between
edge servers and the coordinator); client uploads are unchanged.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_federated as tff


def _is_float32(dtype) -> bool:
  return tf.as_dtype(dtype) == tf.float32


class ExactSumFactory(tff.aggregators.UnweightedAggregationFactory):
  """`federated_sum` with float32 leaves summed in float64."""

  def create(self, value_type) -> tff.templates.AggregationProcess:
    dtypes = [t.dtype for t in tff.structure.flatten(value_type)]

    @tff.tensorflow.computation(value_type)
    def widen(value):
      return tf.nest.map_structure(
          lambda t: tf.cast(t, tf.float64) if t.dtype == tf.float32 else t,
          value)

    @tff.tensorflow.computation(widen.type_signature.result)
    def narrow(total):
      flat = tf.nest.flatten(total)
      cast = [tf.cast(t, dtype) if _is_float32(dtype) else t
              for t, dtype in zip(flat, dtypes, strict=True)]
      return tf.nest.pack_sequence_as(total, cast)

    @tff.federated_computation()
    def init_fn():
      return tff.federated_value((), tff.SERVER)

    @tff.federated_computation(init_fn.type_signature.result,
                               tff.FederatedType(value_type, tff.CLIENTS))
    def next_fn(state, value):
      total = tff.federated_sum(tff.federated_map(widen, value))
      return tff.templates.MeasuredProcessOutput(
          state=state, result=tff.federated_map(narrow, total),
          measurements=tff.federated_value((), tff.SERVER))

    return tff.templates.AggregationProcess(init_fn, next_fn)


def exact_weighted_mean() -> tff.aggregators.WeightedAggregationFactory:
  """TFF's weighted mean, its value sum made order-independent.

  The client-side products value * weight are float32 as in TFF's mean; the
  weights (example counts, exact in float32 below 2^24) sum as before.
  """
  return tff.aggregators.MeanFactory(value_sum_factory=ExactSumFactory())
