"""Evaluation of the global model on the held-out split."""

from __future__ import annotations

import tensorflow as tf
import tensorflow_federated as tff

from tff_pipeline.tasks.base import Task


class CentralEvaluator:
  """Evaluates model weights on the task's held-out shard (eval.tfrecord).

  The held-out split is the public test set of the benchmark, evaluated where
  the coordinator runs, as FedML and TFF's simulation baselines do.
  """

  def __init__(self, task: Task, batch_size: int):
    if task.manifest.eval is None:
      raise ValueError(f'{task.manifest.shard_dir} has no eval shard')
    self._model = task.model_builder()
    self._loss = task.loss_builder()
    self._metrics = task.metrics_builder()
    self._mean_loss = tf.keras.metrics.Mean(name='loss')
    path = task.manifest.path(task.manifest.eval)
    self._dataset = task.batched(tf.data.TFRecordDataset(path),
                                 batch_size).cache()

  @tf.function
  def _update(self, x, y):
    predictions = self._model(x, training=False)
    self._mean_loss.update_state(self._loss(y, predictions),
                                 sample_weight=tf.shape(y)[0])
    for metric in self._metrics:
      metric.update_state(y, predictions)

  def evaluate(self, weights: tff.learning.models.ModelWeights) -> dict[str, float]:
    """Returns {'loss': ..., <metric>: ...} for `weights`."""
    weights.assign_weights_to(self._model)
    return self._evaluate()

  def evaluate_keras(self, model: tf.keras.Model) -> dict[str, float]:
    """Same, for the weights of a Keras model of the task."""
    self._model.set_weights(model.get_weights())
    return self._evaluate()

  def _evaluate(self) -> dict[str, float]:
    for metric in [self._mean_loss, *self._metrics]:
      metric.reset_state()
    for x, y in self._dataset:
      self._update(x, y)
    return {m.name: float(m.result()) for m in [self._mean_loss, *self._metrics]}


class WithheldEvaluator:
  """Evaluates nothing: an evaluation on clients' data, withheld (DP runs).

  A federated evaluation (e.g. MovieLens users' held-out ratings on their
  pods) releases un-noised statistics of clients' data, outside epsilon.
  The loop writes no `eval` for an empty result.
  """

  def evaluate(self, weights: tff.learning.models.ModelWeights
               ) -> dict[str, float]:
    del weights
    return {}
