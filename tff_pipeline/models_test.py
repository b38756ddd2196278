from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
import tensorflow as tf

from tff_pipeline import models


class ModelsTest(parameterized.TestCase):

  @parameterized.parameters(
      ('cnn', 10, 1_199_882),  # TFF's EMNIST CNN summary, only_digits=True.
      ('cnn', 62, 1_206_590),
      ('2nn', 10, 199_210),  # TFF's two-hidden-layer model summary.
      ('lr', 10, 7_850),
  )
  def test_parameter_counts_match_tff_baselines(self, name, classes, params):
    self.assertEqual(models.IMAGE_MODELS[name](classes).count_params(), params)

  @parameterized.parameters('cnn', '2nn', 'lr')
  def test_outputs_are_class_probabilities(self, name):
    model = models.IMAGE_MODELS[name](10)
    out = model(tf.random.uniform([4, 28, 28, 1]), training=False).numpy()
    self.assertEqual(out.shape, (4, 10))
    np.testing.assert_allclose(out.sum(axis=1), np.ones(4), rtol=1e-5)

  def test_seed_fixes_initial_weights(self):
    a = models.create_cnn(10, seed=1).get_weights()
    b = models.create_cnn(10, seed=1).get_weights()
    c = models.create_cnn(10, seed=2).get_weights()
    for x, y in zip(a, b):
      np.testing.assert_array_equal(x, y)
    self.assertFalse(np.array_equal(a[0], c[0]))

  def test_weight_decay_adds_torch_style_l2(self):
    model = models.create_lr(10, weight_decay=0.2)
    expected = sum(0.1 * float(np.sum(w ** 2)) for w in model.get_weights())
    self.assertAlmostEqual(float(tf.add_n(model.losses)), expected, places=4)
    self.assertEmpty(models.create_lr(10).losses)



class CharLstmTest(absltest.TestCase):

  def test_shapes_and_parameter_count(self):
    model = models.create_char_lstm(90)
    logits = model(tf.zeros([2, 80], tf.int64))
    self.assertEqual(logits.shape, (2, 80, 90))
    lstm = lambda n_in: 4 * 256 * (n_in + 256 + 1)
    self.assertEqual(model.count_params(),
                     90 * 8 + lstm(8) + lstm(256) + 256 * 90 + 90)


if __name__ == '__main__':
  absltest.main()
