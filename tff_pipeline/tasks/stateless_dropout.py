"""Dropout whose draws are a pure function of the client's batch and step.

Keras' `Dropout` draws from RNG state kept in the op kernels of whichever
executor process runs a client, so its masks depend on how that process
creates and reuses kernels, not only on the client. Here every mask comes
from TensorFlow's stateless random ops (counter-based Philox, the same bits
on every CPU), seeded by

  * a fingerprint (FarmHash, `tf.fingerprint`) of the model's INPUT batch:
    identical wherever the client's data is read, unlike intermediate
    activations, whose low bits can change with thread counts;
  * a step counter, a non-trainable weight of the model: the server
    broadcasts non-trainable weights and never changes them, so each client
    counts its steps from the same value every round, and a batch that
    repeats (a client with one batch, several epochs) gets new masks;
  * a per-layer salt (the model seed plus the layer's index).

At inference (`training=False`) nothing is random and no counter moves, so
exported models (SavedModel, TFLite) hold neither op.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

_SERIALIZABLE_PACKAGE = 'tff_pipeline'


def batch_fingerprint(inputs: tf.Tensor) -> tf.Tensor:
  """An int64 scalar naming the bytes of a batch (FarmHash, platform-free)."""
  rows = tf.reshape(inputs, tf.stack(
      [tf.shape(inputs)[0], tf.reduce_prod(tf.shape(inputs)[1:])]))
  per_row = tf.fingerprint(rows)  # [batch, 8] uint8.
  whole = tf.fingerprint(tf.reshape(per_row, [1, -1]))  # [1, 8] uint8.
  return tf.bitcast(tf.reshape(whole, [8]), tf.int64)


@tf.keras.utils.register_keras_serializable(package=_SERIALIZABLE_PACKAGE)
class StepSeed(tf.keras.layers.Layer):
  """Model input batch -> a [2] int64 seed (fingerprint, step); zeros at
  inference.

  Put it on the model's input and feed its output to every
  `StatelessDropout`. Each training call advances the step (one int64
  non-trainable weight).
  """

  def build(self, input_shape):
    self.step = self.add_weight(
        name='step', shape=(), dtype=tf.int64, trainable=False,
        initializer=tf.keras.initializers.Zeros())
    super().build(input_shape)

  def call(self, inputs, training=None):
    if training is None:
      training = tf.keras.backend.learning_phase()

    def training_seed():
      step = self.step.assign_add(1)
      return tf.stack([batch_fingerprint(inputs), step])

    return tf.__internal__.smart_cond.smart_cond(
        training, training_seed, lambda: tf.zeros([2], tf.int64))

  def compute_output_shape(self, input_shape):
    return tf.TensorShape([2])


@tf.keras.utils.register_keras_serializable(package=_SERIALIZABLE_PACKAGE)
class StatelessDropout(tf.keras.layers.Layer):
  """`Dropout(rate)` on [x, seed] with masks drawn from the seed and `salt`.

  Scales kept units by 1 / (1 - rate), as Keras' Dropout does; identity at
  inference.
  """

  def __init__(self, rate: float, salt: int, **kwargs: Any):
    super().__init__(**kwargs)
    if not 0 <= rate < 1:
      raise ValueError(f'rate must be in [0, 1), got {rate}')
    self.rate = float(rate)
    self.salt = int(salt)

  def call(self, inputs, training=None):
    x, seed = inputs
    if training is None:
      training = tf.keras.backend.learning_phase()

    def dropped():
      layer_seed = tf.random.experimental.stateless_fold_in(seed, self.salt)
      return tf.nn.experimental.stateless_dropout(x, self.rate, layer_seed)

    return tf.__internal__.smart_cond.smart_cond(
        training, dropped, lambda: tf.identity(x))

  def compute_output_shape(self, input_shape):
    return input_shape[0]

  def get_config(self) -> dict[str, Any]:
    return {**super().get_config(), 'rate': self.rate, 'salt': self.salt}
