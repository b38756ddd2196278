import os

from absl.testing import absltest
import numpy as np
import tensorflow as tf

from data_prep import shards
from data_prep.errors import UserError
from tff_pipeline import plan
from tff_pipeline.tasks import arrays
from tff_pipeline.tasks import registry


def _model():
  return tf.keras.Sequential([tf.keras.layers.Input(shape=(3,)),
                              tf.keras.layers.Dense(4, activation='softmax')])


def _clients(seed=0):
  rng = np.random.default_rng(seed)
  return {'a': (rng.normal(size=(5, 3)), rng.integers(0, 4, 5)),
          'b': (rng.normal(size=(7, 3)).astype(np.float32),
                rng.integers(0, 3, 7))}


class ArrayTaskTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.root = self.create_tempdir().full_path

  def _task(self, name='toy', clients=None, **kwargs):
    return arrays.ArrayTask(
        name, _model, _clients() if clients is None else clients,
        eval_data=(np.zeros((2, 3)), np.array([0, 3])),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(),
        metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name='accuracy')],
        shard_root=self.root, **kwargs)

  def test_arrays_become_shards_that_parse_back(self):
    task = self._task()
    manifest = task.manifest
    self.assertEqual(manifest.client_ids(), ['a', 'b'])
    self.assertEqual(manifest.num_classes, 4)  # Largest label 3.
    clients = _clients()
    for info in manifest.clients:
      rows = shards.read_numpy(manifest, info)
      x, y = clients[info.client_id]
      np.testing.assert_allclose(rows['x'], x.astype(np.float32))
      np.testing.assert_array_equal(rows['y'], y)
    self.assertEqual(task.defaults['clients_per_round'], 2)

  def test_same_data_reuses_other_data_rebuilds(self):
    first = self._task()
    mtime = os.stat(os.path.join(first.manifest.shard_dir,
                                 'manifest.json')).st_mtime_ns
    again = self._task()
    self.assertEqual(again.manifest.shard_dir, first.manifest.shard_dir)
    self.assertEqual(os.stat(os.path.join(
        again.manifest.shard_dir, 'manifest.json')).st_mtime_ns, mtime)
    other = self._task(clients=_clients(seed=1))
    self.assertNotEqual(other.manifest.shard_dir, first.manifest.shard_dir)

  def test_each_model_gets_its_own_metrics(self):
    task = self._task()
    a, b = task.metrics(task.manifest), task.metrics(task.manifest)
    self.assertIsNot(a[0], b[0])
    a[0].update_state([1], [[0.0, 1.0, 0.0, 0.0]])
    self.assertEqual(float(b[0].result()), 0.0)

  def test_bad_arrays(self):
    with self.assertRaisesRegex(UserError, r"clients\['a'\]: x has 2 rows"):
      self._task(clients={'a': (np.zeros((2, 3)), np.zeros(1, np.int64))})
    with self.assertRaisesRegex(UserError, "unlike the first client"):
      self._task(clients={'a': (np.zeros((2, 3)), np.zeros(2, np.int64)),
                          'b': (np.zeros((2, 4)), np.zeros(2, np.int64))})
    with self.assertRaisesRegex(UserError, 'no clients'):
      self._task(clients={})

  def test_registered_family_resolves_and_binds(self):
    task = self._task(name='toy_registered')
    self.assertEqual(registry.register(task), 'toy_registered')
    self.assertEqual(registry.register(task), 'toy_registered')  # Again: ok.
    with self.assertRaisesRegex(UserError, 'already registered'):
      registry.register(self._task(name='toy_registered',
                                   clients=_clients(seed=2)))
    with self.assertRaisesRegex(UserError, 'already registered'):
      registry.register(self._task(name='mnist'))
    with self.assertRaisesRegex(UserError, 'is not a task family'):
      registry.register(object())
    config = plan.resolve_config({}, {'task': 'toy_registered',
                                      'output_dir': self.root})
    self.assertEqual((config.model, config.partition, config.num_clients,
                      config.clients_per_round), ('model_fn', 'natural', 0, 2))
    bound = plan.load_task(config)
    x, y = bound.input_spec
    self.assertEqual((x.shape.as_list(), x.dtype), ([None, 3], tf.float32))
    self.assertEqual(y.dtype, tf.int64)


if __name__ == '__main__':
  absltest.main()
