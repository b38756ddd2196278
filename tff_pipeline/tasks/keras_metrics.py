"""Keras metrics (and a loss) the tasks need beyond Keras' own."""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf


class MaskedAccuracy(tf.keras.metrics.Mean):
  """Accuracy of argmax predictions over tokens not in `masked_tokens`.

  For sequence tasks: padding (and e.g. OOV/EOS) must not count as correct
  or as wrong predictions.
  """

  def __init__(self, masked_tokens: Sequence[int] = (0,),
               name: str = 'accuracy', dtype=None):
    super().__init__(name=name, dtype=dtype)
    self._masked_tokens = list(masked_tokens)

  def update_state(self, y_true, y_pred, sample_weight=None):
    del sample_weight  # The mask is the weight.
    y_true = tf.cast(y_true, tf.int64)
    predictions = tf.argmax(y_pred, axis=-1, output_type=tf.int64)
    keep = target_mask(y_true, self._masked_tokens)
    correct = tf.cast(tf.equal(predictions, y_true), self.dtype)
    return super().update_state(correct, sample_weight=tf.cast(keep, self.dtype))

  def get_config(self):
    return dict(super().get_config(), masked_tokens=self._masked_tokens)


class MaskedCrossentropy(tf.keras.losses.Loss):
  """Sparse cross-entropy from logits, averaged over unmasked targets.

  Rows of a sequence batch may hold many targets or one (a LEAF sample:
  80 characters of context and the next one), the rest padding; the mean
  is over the targets, so padding neither trains nor dilutes the loss.
  Computed in float32 whatever the logits' dtype (mixed precision).
  """

  def __init__(self, masked_tokens: Sequence[int] = (0,),
               name: str = 'masked_crossentropy'):
    super().__init__(name=name)
    self._masked_tokens = list(masked_tokens)

  def __call__(self, y_true, y_pred, sample_weight=None):
    del sample_weight  # The mask is the weight.
    y_true = tf.cast(y_true, tf.int64)
    losses = tf.keras.losses.sparse_categorical_crossentropy(
        y_true, tf.cast(y_pred, tf.float32), from_logits=True)
    keep = tf.cast(target_mask(y_true, self._masked_tokens), tf.float32)
    return tf.math.divide_no_nan(tf.reduce_sum(losses * keep),
                                 tf.reduce_sum(keep))

  def get_config(self):
    return dict(super().get_config(), masked_tokens=self._masked_tokens)


def target_mask(y_true: tf.Tensor, masked_tokens: Sequence[int]) -> tf.Tensor:
  """True where y_true is a target (not one of `masked_tokens`)."""
  keep = tf.ones_like(y_true, tf.bool)
  for token in masked_tokens:
    keep = tf.logical_and(keep, tf.not_equal(y_true, token))
  return keep


class RatingAccuracy(tf.keras.metrics.Mean):
  """Share of predicted ratings that round to the true (integer) rating."""

  def __init__(self, name: str = 'accuracy', dtype=None):
    super().__init__(name=name, dtype=dtype)

  def update_state(self, y_true, y_pred, sample_weight=None):
    y_true = tf.cast(tf.reshape(y_true, [-1]), self.dtype)
    y_pred = tf.clip_by_value(tf.cast(tf.reshape(y_pred, [-1]), self.dtype),
                              1.0, 5.0)
    correct = tf.cast(tf.equal(tf.round(y_pred), y_true), self.dtype)
    return super().update_state(correct, sample_weight=sample_weight)
