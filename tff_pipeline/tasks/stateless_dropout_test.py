import os
import subprocess
import sys

from absl.testing import absltest
import numpy as np
import tensorflow as tf

from tests import testutil
from tff_pipeline.tasks import images
from tff_pipeline.tasks import stateless_dropout


def _dropout_model(rate: float = 0.5, salt: int = 7) -> tf.keras.Model:
  inputs = tf.keras.layers.Input(shape=(1000,))
  seed = stateless_dropout.StepSeed()(inputs)
  outputs = stateless_dropout.StatelessDropout(rate, salt)([inputs, seed])
  return tf.keras.Model(inputs, outputs)


def _batch(seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).uniform(1, 2, (4, 1000)).astype(
      np.float32)


# Run in a child process with other thread settings: the masks must not
# depend on the process.
_CHILD = """
import sys
import numpy as np
import tensorflow as tf
from tff_pipeline.tasks import stateless_dropout_test as t
model = t._dropout_model()
out = np.concatenate([model(t._batch(), training=True).numpy()
                      for _ in range(2)])
np.save(sys.argv[1], out)
"""


class StatelessDropoutTest(absltest.TestCase):

  def test_inference_is_the_identity_and_does_not_step(self):
    model = _dropout_model()
    x = _batch()
    np.testing.assert_array_equal(model(x, training=False).numpy(), x)
    np.testing.assert_array_equal(model(x).numpy(), x)
    self.assertEqual(int(model.non_trainable_weights[0].numpy()), 0)

  def test_drops_at_the_rate_and_rescales_the_rest(self):
    rate = 0.25
    model = _dropout_model(rate=rate)
    x = np.ones((100, 1000), np.float32)
    out = model(x, training=True).numpy()
    dropped = np.mean(out == 0)
    # Binomial(100000, 0.25): sd 0.0014; 5 sd.
    self.assertBetween(dropped, rate - 0.007, rate + 0.007)
    np.testing.assert_allclose(out[out != 0], 1 / (1 - rate), rtol=1e-6)

  def test_masks_are_a_function_of_batch_and_step(self):
    x = _batch()
    a, b = _dropout_model(), _dropout_model()
    first = a(x, training=True).numpy()
    np.testing.assert_array_equal(first, b(x, training=True).numpy())
    self.assertEqual(int(a.non_trainable_weights[0].numpy()), 1)
    # The next step, another batch, another salt: other masks.
    self.assertFalse(np.array_equal(first == 0,
                                    a(x, training=True).numpy() == 0))
    self.assertFalse(np.array_equal(
        first == 0, _dropout_model()(_batch(1), training=True).numpy() == 0))
    self.assertFalse(np.array_equal(
        first == 0, _dropout_model(salt=8)(x, training=True).numpy() == 0))

  def test_assigning_the_broadcast_weights_restarts_the_steps(self):
    model = _dropout_model()
    x = _batch()
    initial = model.get_weights()
    first = model(x, training=True).numpy()
    model(x, training=True)
    model.set_weights(initial)  # What a client does with the server's model.
    np.testing.assert_array_equal(model(x, training=True).numpy(), first)

  def test_another_process_with_other_threads_draws_the_same_masks(self):
    out = os.path.join(self.create_tempdir().full_path, 'masks.npy')
    env = dict(os.environ, TF_NUM_INTRAOP_THREADS='1',
               TF_NUM_INTEROP_THREADS='1', TF_CPP_MIN_LOG_LEVEL='3',
               PYTHONPATH=testutil.REPO_ROOT)
    subprocess.run([sys.executable, '-c', _CHILD, out], check=True, env=env,
                   cwd=testutil.REPO_ROOT, timeout=300)
    model = _dropout_model()
    here = np.concatenate([model(_batch(), training=True).numpy()
                           for _ in range(2)])
    np.testing.assert_array_equal(np.load(out), here)

  def test_fingerprint_names_the_bytes(self):
    x = _batch()
    self.assertEqual(int(stateless_dropout.batch_fingerprint(x)),
                     int(stateless_dropout.batch_fingerprint(x.copy())))
    y = x.copy()
    y[3, 999] = np.nextafter(y[3, 999], np.float32(3))  # One ulp.
    self.assertNotEqual(int(stateless_dropout.batch_fingerprint(x)),
                        int(stateless_dropout.batch_fingerprint(y)))

  def test_cnn_trains_under_tf_function_and_exports_without_random_ops(self):
    model = images.create_cnn(10)
    x = tf.random.stateless_uniform([8, 28, 28, 1], [1, 2])

    @tf.function
    def train_step(x):
      return model(x, training=True)

    a = train_step(x).numpy()
    b = train_step(x).numpy()  # Step 2: other masks, other outputs.
    self.assertFalse(np.allclose(a, b))
    serving = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec([None, 28, 28, 1]))
    ops = {op.type for op in serving.graph.get_operations()}
    self.assertNoCommonElements(ops, {'Fingerprint', 'AssignAddVariableOp',
                                      'StatelessRandomUniformV2'})


if __name__ == '__main__':
  absltest.main()
