import os
import shutil
import tempfile

from absl.testing import absltest
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tests import testutil
from tff_pipeline.tasks import registry as tasks
from data_prep.errors import UserError
from tff_pipeline import model_export
from tff_pipeline import plan


class TasksTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls._dir = tempfile.mkdtemp()
    os.environ['TFF_PIPELINE_CACHE'] = cls._dir

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls._dir)
    super().tearDownClass()

  def _config(self, **overrides):
    values = dict(num_clients=5, clients_per_round=2, partition='iid',
                  output_dir='/tmp/unused')
    values.update(overrides)
    return plan.resolve_config({}, values)

  def test_fashion_mnist_task_parses_and_preprocesses_shards(self):
    task = plan.load_task(self._config(model='lr'))
    self.assertEqual(task.manifest.num_classes, 10)
    self.assertEqual(len(task.manifest.client_ids()), 5)
    x_spec, y_spec = task.input_spec
    self.assertEqual(x_spec.shape.as_list(), [None, 28, 28, 1])
    self.assertEqual(y_spec.dtype, tf.int64)
    path = task.manifest.path(task.manifest.clients[0])
    x, y = next(iter(tf.data.TFRecordDataset(path).batch(4).map(
        task.parse_and_preprocess)))
    self.assertEqual(x.shape, (4, 28, 28, 1))
    self.assertBetween(float(tf.reduce_max(x)), 0.5, 1.0)
    self.assertGreaterEqual(float(tf.reduce_min(x)), 0.0)
    self.assertEqual(task.model_builder()(x).shape, (4, 10))

  def test_bf16_trains_in_bfloat16_and_serves_float32(self):
    task = plan.load_task(self._config(model='cnn', precision='bf16'))
    trained = task.model_builder()
    self.assertEqual(trained.layers[1].compute_dtype, 'bfloat16')
    trained.set_weights([w + np.float32(0.01) if w.dtype.kind == 'f' else w
                         for w in trained.get_weights()])
    weights = tff.learning.models.ModelWeights.from_model(trained)
    model_dir = os.path.join(self._dir, 'bf16-model')
    exported = model_export.export_model(task, weights, model_dir)
    self.assertIsNone(exported.tflite_problem)  # TFLite has no bfloat16.
    served = model_export.keras_model(task, weights)
    self.assertEqual({l.compute_dtype for l in served.layers}, {'float32'})
    x = np.random.default_rng(0).uniform(0, 1, (5, 28, 28, 1)).astype(
        np.float32)
    np.testing.assert_allclose(model_export.tflite_predict(model_dir, x),
                               served(x, training=False), atol=1e-5)
    # Same weights: the bfloat16 model predicts alike to its precision.
    np.testing.assert_allclose(served(x, training=False),
                               trained(x, training=False), atol=0.02)

  def test_shards_are_reused_for_the_same_request(self):
    first = plan.load_task(self._config(model='lr'))
    mtime = os.path.getmtime(os.path.join(first.manifest.shard_dir,
                                          'manifest.json'))
    second = plan.load_task(self._config(model='cnn'))  # Model does not matter.
    self.assertEqual(first.manifest.shard_dir, second.manifest.shard_dir)
    self.assertEqual(mtime, os.path.getmtime(
        os.path.join(second.manifest.shard_dir, 'manifest.json')))
    other = plan.default_shard_dir(self._config(partition='dirichlet'))
    self.assertNotEqual(other, first.manifest.shard_dir)

  def test_unknown_task(self):
    with self.assertRaisesRegex(UserError, '--task=nope is not supported'):
      plan.resolve_config({}, {'task': 'nope'})
    with self.assertRaisesRegex(UserError, "did you mean 'mnist'"):
      plan.resolve_config({}, {'task': 'mnst'})



class ShakespeareTaskTest(absltest.TestCase):

  def test_tinyshakespeare_task_yields_masked_sequences(self):
    path = os.path.join(testutil.shared_data_dir(), 'shakespeare',
                        'tinyshakespeare.txt')
    if not os.path.exists(path):
      self.skipTest(f'{path} missing')
    tmp = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, tmp)
    config = plan.resolve_config({}, dict(task='shakespeare', data_dir=path,
                                         num_clients=6, clients_per_round=2,
                                         shard_dir=os.path.join(tmp, 's'),
                                         output_dir=tmp))
    self.assertEqual((config.model, config.partition), ('char_lstm', 'natural'))
    task = plan.load_task(config)
    self.assertLen(task.manifest.client_ids(), 6)
    path = task.manifest.path(task.manifest.clients[0])
    x, y = next(iter(task.batched(tf.data.TFRecordDataset(path), 8)))
    self.assertEqual(x.shape, (8, 80))
    # Targets are inputs shifted by one character.
    np.testing.assert_array_equal(x.numpy()[:, 1:], y.numpy()[:, :-1])
    logits = task.model_builder()(x)
    metric = task.metrics_builder()[0]
    metric.update_state(y, logits)
    self.assertBetween(float(metric.result()), 0.0, 1.0)

  def test_shakespeare_rejects_image_models_and_partitions(self):
    with self.assertRaisesRegex(UserError, 'does not fit --task=shakespeare'):
      plan.resolve_config({}, dict(task='shakespeare', model='cnn',
                                   output_dir='/tmp/x'))
    config = plan.resolve_config({}, dict(task='shakespeare', partition='iid',
                                         num_clients=10, output_dir='/tmp/x'))
    with self.assertRaisesRegex(UserError, 'natural clients'):
      plan.load_task(config)



class StackOverflowTasksTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self._path = os.path.join(testutil.shared_data_dir(), 'stackoverflow-sample',
                              'posts_questions.tsv')
    if not os.path.exists(self._path):
      self.skipTest(f'{self._path} missing')
    self._tmp = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self._tmp)

  def _task(self, name):
    config = plan.resolve_config({}, dict(
        task=name, data_dir=self._path, shard_dir=os.path.join(self._tmp, 's'),
        output_dir=self._tmp))
    return plan.load_task(config)

  def _first_batch(self, task):
    path = task.manifest.path(task.manifest.clients[0])
    return next(iter(task.batched(tf.data.TFRecordDataset(path), 4)))

  def test_tag_task(self):
    task = self._task('stackoverflow_tag')
    vocab, tags = task.manifest.source['vocab'], task.manifest.source['tags']
    x, y = self._first_batch(task)
    self.assertEqual(x.shape[1], len(vocab))
    self.assertEqual(y.shape[1], len(tags))
    np.testing.assert_allclose(tf.reduce_sum(x, axis=1).numpy(),
                               np.ones(x.shape[0]), rtol=1e-5)
    self.assertGreater(float(tf.reduce_sum(y)), 0)
    self.assertEqual(task.model_builder()(x).shape, y.shape)
    self.assertEqual([m.name for m in task.metrics_builder()],
                     ['accuracy', 'recall_at_5'])

  def test_nwp_task_shares_the_shards(self):
    tag = self._task('stackoverflow_tag')
    nwp = self._task('stackoverflow_nwp')
    self.assertEqual(tag.manifest.shard_dir, nwp.manifest.shard_dir)
    x, y = self._first_batch(nwp)
    self.assertEqual(x.shape[1], 20)
    np.testing.assert_array_equal(x.numpy()[:, 1:], y.numpy()[:, :-1])
    self.assertEqual(nwp.model_builder()(x).shape[-1],
                     len(nwp.manifest.source['vocab']) + 4)

  def test_needs_a_data_dir(self):
    config = plan.resolve_config({}, dict(task='stackoverflow_nwp',
                                         output_dir=self._tmp))
    with self.assertRaisesRegex(UserError, 'needs --data_dir'):
      plan.load_task(config)


if __name__ == '__main__':
  absltest.main()
