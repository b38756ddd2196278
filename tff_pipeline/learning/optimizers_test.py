from absl.testing import absltest
from absl.testing import parameterized
import tensorflow as tf

from tff_pipeline.learning import optimizers
from data_prep.errors import UserError


class OptimizersTest(parameterized.TestCase):

  @parameterized.parameters('sgd', 'sgdm', 'adam', 'yogi', 'adagrad')
  def test_each_optimizer_descends(self, name):
    optimizer = optimizers.build(name, learning_rate=0.1)
    weights = (tf.constant([3.0]),)
    state = optimizer.initialize((tf.TensorSpec([1], tf.float32),))
    for _ in range(5):  # Minimize w^2.
      state, weights = optimizer.next(state, weights, (2.0 * weights[0],))
    self.assertLess(abs(float(weights[0][0])), 3.0)

  def test_sgd_has_no_momentum_and_sgdm_has(self):
    def two_steps(name):
      optimizer = optimizers.build(name, learning_rate=1.0, momentum=0.5)
      state = optimizer.initialize((tf.TensorSpec([1], tf.float32),))
      weights = (tf.constant([0.0]),)
      for _ in range(2):
        state, weights = optimizer.next(state, weights, (tf.constant([1.0]),))
      return float(weights[0][0])
    self.assertAlmostEqual(two_steps('sgd'), -2.0)
    self.assertAlmostEqual(two_steps('sgdm'), -2.5)

  def test_unknown_name(self):
    with self.assertRaisesRegex(UserError, "unknown optimizer 'rmsprop'"):
      optimizers.build('rmsprop', 0.1)


if __name__ == '__main__':
  absltest.main()
