import os
import shutil
import tempfile

from absl.testing import absltest
import numpy as np
import tensorflow as tf

from data_prep import shards
from tests import testutil
from tff_pipeline.learning import algorithms
from tff_pipeline.tasks import movielens as recommendation
from workers import local_runtime as runtime
from tff_pipeline.tasks import registry as tasks
from tff_pipeline import plan
from tff_pipeline import api


class PenaltyTest(absltest.TestCase):

  def test_gradient_is_that_of_the_explicit_penalty(self):
    table = tf.Variable(np.random.default_rng(0).normal(size=(6, 3)),
                        dtype=tf.float32)
    ids = tf.constant([4, 1, 4, 0])
    targets = tf.constant(np.random.default_rng(1).normal(size=(4, 3)),
                          dtype=tf.float32)
    l2 = 0.7

    with tf.GradientTape() as tape:
      rows = recommendation.gather_with_l2(table, ids, l2)
      loss = tf.reduce_mean(tf.reduce_sum((rows - targets)**2, axis=1))
    penalized = tape.gradient(loss, table)
    with tf.GradientTape() as tape:
      rows = tf.gather(table, ids)
      explicit = tf.reduce_mean(
          tf.reduce_sum((rows - targets)**2, axis=1) +
          l2 * tf.reduce_sum(rows**2, axis=1))
    expected = tape.gradient(explicit, table)

    np.testing.assert_allclose(tf.convert_to_tensor(penalized),
                               tf.convert_to_tensor(expected), rtol=1e-5)
    # Rows never looked up get no gradient; the forward value is unpenalized.
    np.testing.assert_array_equal(
        tf.convert_to_tensor(penalized).numpy()[[2, 3, 5]], 0)
    np.testing.assert_array_equal(
        recommendation.gather_with_l2(table, ids, l2), tf.gather(table, ids))

  def test_user_embedding_is_one_row_for_every_rating(self):
    layer = recommendation.UserEmbedding(4, l2=0.5, seed=3)
    users = layer(tf.constant([[7], [2], [9]], tf.int64))
    self.assertEqual(users.shape, (3, 4))
    np.testing.assert_array_equal(users[0], users[2])
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(tf.reduce_sum(layer(tf.constant([[1], [2]])), 1))
    grad = tape.gradient(loss, layer.embeddings)
    # d/du mean(sum(u)) = 1, plus the ridge term 2 * l2 * u.
    np.testing.assert_allclose(grad, 1.0 + 2 * 0.5 * layer.embeddings.numpy(),
                               rtol=1e-6)


class MovieLensFedReconTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls._data = os.path.join(testutil.shared_data_dir(), 'movielens-100k')
    if not os.path.exists(os.path.join(cls._data, 'u.data')):
      raise absltest.SkipTest(f'{cls._data} missing')
    runtime.use_local_runtime(10)
    cls._tmp = tempfile.mkdtemp()

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls._tmp)
    super().tearDownClass()

  def _config(self, name, **overrides):
    values = dict(task='movielens', data_dir=self._data, rounds=3,
                  eval_every=3, progress=False,
                  shard_dir=os.path.join(self._tmp, 'shards'),
                  output_dir=os.path.join(self._tmp, name))
    values.update(overrides)
    return plan.resolve_config({}, values)

  def test_user_embeddings_are_not_in_the_server_state(self):
    config = self._config('state')
    task = plan.load_task(config)
    process = plan.training_process(config, task)
    weights = process.get_model_weights(process.initialize())
    shapes = sorted(np.shape(w) for w in weights.trainable)
    self.assertEqual(shapes, [(1,), (1682, 1),
                              (1682, recommendation.EMBEDDING_DIM)])

  def test_trains_and_evaluates_held_out_users(self):
    result = api.run(self._config('train'))
    final = result.summary['final_eval']
    self.assertCountEqual(final, ['loss', 'rmse', 'accuracy'])
    self.assertLess(final['rmse'], 1.3)
    self.assertBetween(final['accuracy'], 0.2, 1.0)
    # u1.test covers 459 users, each with training ratings in u1.base.
    held_out = os.path.join(self._tmp, 'shards', shards.HELD_OUT_DIR)
    self.assertLen(os.listdir(os.path.join(held_out, 'clients')), 459)


if __name__ == '__main__':
  absltest.main()
