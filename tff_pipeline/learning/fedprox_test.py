from absl.testing import absltest
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_pipeline.learning import fedprox


class ProximalOptimizerTest(absltest.TestCase):

  def _run(self, mu, steps=3):
    optimizer = fedprox.ProximalOptimizer(
        tff.learning.optimizers.build_sgdm(learning_rate=0.1), mu)
    weights = (tf.constant([1.0, -2.0]),)
    specs = (tf.TensorSpec([2], tf.float32),)
    state = optimizer.initialize(specs)
    trajectory = [weights[0].numpy()]
    for _ in range(steps):
      gradient = (tf.constant([1.0, 1.0]),)  # A constant pull in one direction.
      state, weights = optimizer.next(state, weights, gradient)
      trajectory.append(weights[0].numpy())
    return trajectory

  def test_mu_zero_is_plain_sgd(self):
    np.testing.assert_allclose(self._run(0.0)[-1], [1.0 - 0.3, -2.0 - 0.3],
                               rtol=1e-6)

  def test_proximal_term_pulls_back_to_the_start(self):
    mu, lr = 2.0, 0.1
    w = np.array([1.0, -2.0])
    start = w.copy()
    for _ in range(3):
      w = w - lr * (1.0 + mu * (w - start))
    got = self._run(mu)
    np.testing.assert_allclose(got[-1], w, rtol=1e-6)
    # Closer to the start than without the proximal term.
    self.assertLess(np.linalg.norm(got[-1] - got[0]),
                    np.linalg.norm(self._run(0.0)[-1] - got[0]))

  def test_negative_mu_rejected(self):
    with self.assertRaises(ValueError):
      fedprox.ProximalOptimizer(tff.learning.optimizers.build_sgdm(0.1), -1.0)


if __name__ == '__main__':
  absltest.main()
