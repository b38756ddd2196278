import math

from absl.testing import absltest
import numpy as np
import tensorflow as tf

from tff_pipeline.tasks import keras_metrics


class MaskedAccuracyTest(absltest.TestCase):

  def test_padding_is_ignored(self):
    y_true = tf.constant([[3, 1, 0, 0], [2, 2, 2, 0]])
    # Predict class 2 everywhere: right on the three 2s, wrong on 3 and 1.
    y_pred = tf.one_hot(tf.fill([2, 4], 2), depth=5)
    metric = keras_metrics.MaskedAccuracy(masked_tokens=[0])
    metric.update_state(y_true, y_pred)
    self.assertAlmostEqual(float(metric.result()), 3 / 5)
    unmasked = keras_metrics.MaskedAccuracy(masked_tokens=[])
    unmasked.update_state(y_true, y_pred)
    self.assertAlmostEqual(float(unmasked.result()), 3 / 8)

  def test_several_masked_tokens_and_config(self):
    metric = keras_metrics.MaskedAccuracy(masked_tokens=[0, 4])
    metric.update_state(tf.constant([4, 1, 0]), tf.one_hot([4, 1, 0], depth=5))
    self.assertAlmostEqual(float(metric.result()), 1.0)
    again = keras_metrics.MaskedAccuracy.from_config(metric.get_config())
    self.assertEqual(again.get_config()['masked_tokens'], [0, 4])
    self.assertEqual(again.name, 'accuracy')


class MaskedCrossentropyTest(absltest.TestCase):

  def test_mean_over_unmasked_targets(self):
    logits = np.log(np.array([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]],
                              [[0.2, 0.2, 0.6], [1 / 3, 1 / 3, 1 / 3]]]))
    y_true = tf.constant([[1, 0], [2, 1]])  # One padding target (0).
    loss = keras_metrics.MaskedCrossentropy(masked_tokens=[0])
    expected = -(math.log(0.25) + math.log(0.6) + math.log(1 / 3)) / 3
    self.assertAlmostEqual(float(loss(y_true, tf.constant(logits))), expected,
                           places=5)
    # Half-precision logits give the same float32 loss, near enough.
    half = loss(y_true, tf.constant(logits, tf.bfloat16))
    self.assertEqual(half.dtype, tf.float32)
    self.assertAlmostEqual(float(half), expected, places=2)

  def test_all_masked_is_zero_not_nan(self):
    loss = keras_metrics.MaskedCrossentropy(masked_tokens=[0])
    self.assertEqual(float(loss(tf.zeros([2, 3], tf.int64),
                                tf.zeros([2, 3, 4]))), 0.0)


if __name__ == '__main__':
  absltest.main()
