from absl.testing import absltest
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


if __name__ == '__main__':
  absltest.main()
