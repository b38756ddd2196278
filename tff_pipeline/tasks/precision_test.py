"""bf16 copies compute in bfloat16 and keep float32 weights and outputs."""

from absl.testing import absltest
import numpy as np
import tensorflow as tf

from data_prep.errors import UserError
from tff_pipeline.tasks import images
from tff_pipeline.tasks import precision
from tff_pipeline.tasks import shakespeare


class MixedBfloat16Test(absltest.TestCase):

  def test_cnn(self):
    model = images.create_cnn(10, seed=3)
    mixed = precision.mixed_bfloat16(model)
    # Conv, conv, pool, dropout seed, dropout, flatten, dense, dropout in
    # bfloat16; the output dense in float32.
    self.assertEqual(
        [l.dtype_policy.name for l in mixed.layers
         if not isinstance(l, tf.keras.layers.InputLayer)],
        ['mixed_bfloat16'] * 8 + ['float32'])
    # Float32 variables (and the dropout seed's int64 step) as before.
    self.assertEqual([w.dtype for w in mixed.weights],
                     [w.dtype for w in model.weights])
    self.assertEqual({w.dtype for w in mixed.weights if w.dtype.is_floating},
                     {tf.float32})
    for a, b in zip(model.get_weights(), mixed.get_weights()):
      np.testing.assert_array_equal(a, b)
    x = tf.random.stateless_uniform([4, 28, 28], [1, 2])
    probabilities = mixed(x, training=False)
    self.assertEqual(probabilities.dtype, tf.float32)
    # bfloat16 keeps 8 bits of mantissa: about 2 decimal digits.
    np.testing.assert_allclose(probabilities, model(x, training=False),
                               atol=0.02)
    np.testing.assert_allclose(np.sum(probabilities, axis=1), 1.0, atol=1e-5)

  def test_char_lstm_logits_and_gradients_are_float32(self):
    model = shakespeare.create_char_lstm(seed=1)
    mixed = precision.mixed_bfloat16(model)
    self.assertEqual(mixed.layers[1].compute_dtype, 'bfloat16')  # LSTM.
    x = tf.constant(np.random.default_rng(0).integers(1, 90, (2, 80)))
    with tf.GradientTape() as tape:
      logits = mixed(x)
      loss = tf.reduce_mean(logits ** 2)
    self.assertEqual(logits.dtype, tf.float32)
    grads = tape.gradient(loss, mixed.trainable_variables)
    self.assertEqual({g.dtype for g in grads}, {tf.float32})
    np.testing.assert_allclose(logits, model(x), atol=0.05)

  def test_model_builder(self):
    build = lambda: images.create_2nn(10)
    self.assertIs(precision.model_builder(build, 'fp32'), build)
    self.assertEqual(precision.model_builder(build, 'bf16')().layers[1]
                     .compute_dtype, 'bfloat16')
    with self.assertRaisesRegex(UserError, r'--precision=fp16 is not one of'):
      precision.model_builder(build, 'fp16')


if __name__ == '__main__':
  absltest.main()
