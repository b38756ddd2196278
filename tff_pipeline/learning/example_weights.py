"""A `tff.learning` model whose batches count examples other than by rows.

Weighted FedAvg (McMahan et al. 2017) weighs each client's update by n_k,
the examples it trained on; TFF takes n_k from `forward_pass`'s
`num_examples`, which `from_keras_model` sets to the rows of a batch. When a
row is not one example (a row of chained text holds up to 80 next-character
targets, a row of a lone LEAF sample one), `counted` wraps the model so
that n_k is what `count(batch)` says instead; nothing else changes.
"""

from __future__ import annotations

from typing import Any, Callable

import tensorflow as tf
import tensorflow_federated as tff

Count = Callable[[Any], tf.Tensor]


class _Counted(tff.learning.models.VariableModel):
  """Delegates to `model`, with `num_examples` from `count`."""

  def __init__(self, model: tff.learning.models.VariableModel, count: Count):
    self._model = model
    self._count = count

  @property
  def trainable_variables(self):
    return self._model.trainable_variables

  @property
  def non_trainable_variables(self):
    return self._model.non_trainable_variables

  @property
  def local_variables(self):
    return self._model.local_variables

  @property
  def input_spec(self):
    return self._model.input_spec

  @tf.function
  def forward_pass(self, batch_input, training=True):
    output = self._model.forward_pass(batch_input, training=training)
    return tff.learning.models.BatchOutput(
        loss=output.loss, predictions=output.predictions,
        num_examples=tf.cast(self._count(batch_input), tf.int32))

  @tf.function
  def predict_on_batch(self, batch_input, training=True):
    return self._model.predict_on_batch(batch_input, training=training)

  @tf.function
  def report_local_unfinalized_metrics(self):
    return self._model.report_local_unfinalized_metrics()

  def metric_finalizers(self):
    return self._model.metric_finalizers()

  @tf.function
  def reset_metrics(self):
    return self._model.reset_metrics()


def counted(model: tff.learning.models.VariableModel,
            count: Count) -> tff.learning.models.VariableModel:
  """`model`, with each batch's example count (FedAvg weight) from `count`.

  Args:
    model: a `tff.learning` model (e.g. from `from_keras_model`).
    count: batch (as the client dataset yields it) -> int tensor.
  """
  return _Counted(model, count)
