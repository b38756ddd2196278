"""A chunked round gives the model of one call over all its clients."""

from absl.testing import absltest
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_pipeline.aggregation import exact_sum
from tff_pipeline.learning import rounds


def _process() -> tff.learning.templates.LearningProcess:
  """FedAvg of a small softmax model; a client's data derives from its key."""

  def model_fn():
    keras_model = tf.keras.Sequential([
        tf.keras.layers.Input((4,)),
        tf.keras.layers.Dense(3, kernel_initializer='zeros')])
    return tff.learning.models.from_keras_model(
        keras_model,
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        input_spec=(tf.TensorSpec([None, 4], tf.float32),
                    tf.TensorSpec([None], tf.int64)))

  fed_avg = tff.learning.algorithms.build_weighted_fed_avg(
      model_fn,
      client_optimizer_fn=tff.learning.optimizers.build_sgdm(0.5),
      server_optimizer_fn=tff.learning.optimizers.build_sgdm(1.0, 0.9),
      model_aggregator=exact_sum.exact_weighted_mean())

  @tff.tensorflow.computation(tf.string)
  def client_data(key):
    seed = tf.strings.to_hash_bucket_fast(key, 2**30)
    size = 3 + seed % 6  # Clients of different weights.
    x = tf.random.stateless_normal(tf.stack([size, 4]), tf.stack([seed, 1]))
    y = tf.cast(tf.argmax(x[:, :3], axis=1), tf.int64)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(2)

  return tff.simulation.compose_dataset_computation_with_learning_process(
      client_data, fed_avg)


class ChunkedRoundTest(absltest.TestCase):

  def test_same_model_and_metrics_as_one_call(self):
    process = _process()
    keys = [f'client-{i}' for i in range(7)]
    state = process.initialize()
    whole = process.next(state, keys)
    chunked = rounds.ChunkedRound(process, max_clients=3)
    for _ in range(2):  # The compiled form is reused.
      in_chunks, report = chunked(state, keys, keys, 1)
      self.assertIsNone(report)
      ours = process.get_model_weights(in_chunks.state).trainable
      theirs = process.get_model_weights(whole.state).trainable
      self.assertGreater(np.max(np.abs(theirs[0])), 0)  # It trained.
      for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)
      train = in_chunks.metrics['client_work']['train']
      expected = whole.metrics['client_work']['train']
      self.assertEqual(train['num_examples'], expected['num_examples'])
      self.assertAlmostEqual(train['loss'], expected['loss'], places=6)
    # Then the next round starts from the chunked state alike.
    second, _ = chunked(in_chunks.state, keys[:5], keys[:5], 2)
    again = process.next(whole.state, keys[:5])
    np.testing.assert_array_equal(
        process.get_model_weights(second.state).trainable[0],
        process.get_model_weights(again.state).trainable[0])

  def test_bad_chunk(self):
    with self.assertRaises(ValueError):
      rounds.ChunkedRound(_process(), max_clients=0)


if __name__ == '__main__':
  absltest.main()
