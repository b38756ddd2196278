"""FedAvg weighs clients by the wrapped model's example counts."""

from absl.testing import absltest
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_pipeline.learning import example_weights
from workers import local_runtime as runtime

_SPEC = (tf.TensorSpec([None, 1], tf.float32), tf.TensorSpec([None, 1],
                                                             tf.float32))


def _keras_model():
  return tf.keras.Sequential([
      tf.keras.layers.Input(shape=(1,)),
      tf.keras.layers.Dense(1, use_bias=False, kernel_initializer='zeros')])


def _count_positive_targets(batch):
  return tf.math.count_nonzero(batch[1] > 0, dtype=tf.int64)


def _model_fn(wrap: bool):
  def model_fn():
    model = tff.learning.models.from_keras_model(
        _keras_model(), input_spec=_SPEC,
        loss=tf.keras.losses.MeanSquaredError())
    return (example_weights.counted(model, _count_positive_targets) if wrap
            else model)
  return model_fn


class CountedTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    runtime.use_local_runtime()  # Its worker dies with this process.

  def test_fedavg_weighs_by_the_count(self):
    # One batch per client; w0 = 0, loss mean((w x - y)^2), SGD lr 0.1:
    # w1 = 0.1 * mean(2 x y). Client a: 3 rows, 1 positive target;
    # client b: 1 row, 1 positive target.
    a = (np.array([[1.], [2.], [1.]], np.float32),
         np.array([[2.], [0.], [0.]], np.float32))
    b = (np.array([[1.]], np.float32), np.array([[3.]], np.float32))
    w_a = 0.1 * np.mean(2 * a[0] * a[1])
    w_b = 0.1 * np.mean(2 * b[0] * b[1])
    datasets = [tf.data.Dataset.from_tensors(a), tf.data.Dataset.from_tensors(b)]
    for wrap, weights in ((False, (3, 1)), (True, (1, 1))):
      process = tff.learning.algorithms.build_weighted_fed_avg(
          _model_fn(wrap), tff.learning.optimizers.build_sgdm(0.1),
          tff.learning.optimizers.build_sgdm(1.0))
      state = process.initialize()
      output = process.next(state, datasets)
      kernel = process.get_model_weights(output.state).trainable[0]
      expected = (weights[0] * w_a + weights[1] * w_b) / sum(weights)
      self.assertAlmostEqual(float(kernel[0, 0]), expected, places=5,
                             msg=f'wrap={wrap}')
      # The training metrics still count rows.
      self.assertEqual(
          output.metrics['client_work']['train']['num_examples'], 4)

  def test_forward_pass_delegates(self):
    model = _model_fn(True)()
    batch = (tf.constant([[1.], [2.]]), tf.constant([[1.], [-1.]]))
    output = model.forward_pass(batch)
    self.assertEqual(int(output.num_examples), 1)
    self.assertEqual(output.predictions.shape, (2, 1))
    self.assertLen(model.trainable_variables, 1)
    self.assertIn('loss', model.report_local_unfinalized_metrics())


if __name__ == '__main__':
  absltest.main()
