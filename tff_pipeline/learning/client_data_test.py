import os
import shutil
import tempfile

from absl.testing import absltest
import numpy as np
import tensorflow as tf

from data_prep import images as image_prep
from data_prep import shards
from tests import testutil
from tff_pipeline.learning import client_data


def _batched(dataset, batch_size):
  def parse(serialized):
    batch = shards.parse_batch(serialized, image_prep.FEATURES_SPEC)
    return batch['pixels'], batch['label']
  return dataset.batch(batch_size).map(parse)


class ClientDataTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self._dir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self._dir)
    images, labels = testutil.synthetic_images(30)
    self._labels = labels
    shards.write_shards(
        os.path.join(self._dir, 's'), 'fashion_mnist', image_prep.FEATURES_SPEC,
        [('client_x', {'pixels': images, 'label': labels})], None, 10,
        {'method': 'iid', 'alpha': None, 'num_clients': 1, 'seed': 0}, {})

  def _dataset(self, key, epochs=2, batch_size=8):
    return client_data.client_dataset(
        tf.constant(key), os.path.join(self._dir, 's'), _batched, epochs,
        batch_size, shuffle_buffer=30)

  def test_batches_cover_every_example_each_epoch(self):
    batches = list(self._dataset(client_data.client_key('client_x', 5)))
    self.assertEqual([int(tf.shape(y)[0]) for _, y in batches],
                     [8] * 7 + [4])
    labels = np.concatenate([y.numpy() for _, y in batches])
    self.assertCountEqual(labels[:30].tolist(), self._labels.tolist())
    self.assertCountEqual(labels[30:].tolist(), self._labels.tolist())

  def test_epochs_are_reshuffled_and_seed_decides_order(self):
    labels = lambda k: np.concatenate(
        [y.numpy() for _, y in self._dataset(k, batch_size=30)])
    first = labels(client_data.client_key('client_x', 5))
    self.assertFalse(np.array_equal(first[:30], first[30:]))
    np.testing.assert_array_equal(first, labels(client_data.client_key('client_x', 5)))
    self.assertFalse(np.array_equal(first, labels(client_data.client_key('client_x', 6))))

  def test_client_without_a_shard_here_fails_naming_it_not_held(self):
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError,
                                f'{client_data.NOT_HELD_MARKER}.*client_y'):
      list(self._dataset(client_data.client_key('client_y', 1)))

  def test_client_id_of_a_key(self):
    self.assertEqual(client_data.client_id_of(
        client_data.client_key('client_x', 42)), 'client_x')

  def test_shuffle_seed_is_a_pure_function_of_seed_round_client(self):
    seed = client_data.shuffle_seed
    self.assertEqual(seed(0, 3, 'a'), seed(0, 3, 'a'))
    self.assertLen({seed(0, 3, 'a'), seed(1, 3, 'a'), seed(0, 4, 'a'),
                    seed(0, 3, 'b')}, 4)


if __name__ == '__main__':
  absltest.main()
