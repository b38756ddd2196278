import os

from absl.testing import absltest
import numpy as np
import PIL.Image
import tensorflow as tf

from data_prep.errors import UserError
from tff_pipeline import plan


def _save(path: str, pixels: np.ndarray) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  PIL.Image.fromarray(pixels).save(path)


class ImageFolderTaskTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path
    os.environ['TFF_PIPELINE_CACHE'] = os.path.join(self.dir, 'cache')
    rng = np.random.default_rng(0)
    self.clients = os.path.join(self.dir, 'clients')
    self.pool = os.path.join(self.dir, 'pool')
    for i in range(12):
      pixels = rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)
      label = ('circle', 'square')[i % 2]
      _save(os.path.join(self.clients, f'site{i % 3}', label, f'{i}.png'),
            pixels)
      _save(os.path.join(self.pool, label, f'{i}.jpg'), pixels)

  def _config(self, data_dir, **options):
    values = dict(task='image_folder', data_dir=data_dir, clients_per_round=2,
                  eval_fraction=0.25,
                  output_dir=os.path.join(self.dir, 'run'))
    values.update(options)
    return plan.resolve_config({}, values)

  def test_client_folders_imply_natural_clients(self):
    config = self._config(self.clients)
    self.assertEqual((config.partition, config.num_clients, config.model),
                     ('natural', 0, 'cnn'))
    task = plan.load_task(config)
    self.assertEqual(task.manifest.client_ids(), ['site0', 'site1', 'site2'])
    x_spec, _ = task.input_spec
    self.assertEqual(x_spec.shape.as_list(), [None, 10, 10, 3])
    path = task.manifest.path(task.manifest.clients[0])
    x, y = next(iter(tf.data.TFRecordDataset(path).batch(3).map(
        task.parse_and_preprocess)))
    self.assertBetween(float(tf.reduce_max(x)), 0.5, 1.0)
    self.assertEqual(task.model_builder()(x).shape, (3, 2))
    self.assertEqual(y.dtype, tf.int64)

  def test_label_folders_take_a_partition(self):
    config = self._config(self.pool, partition='iid', num_clients=3,
                          image_size=8, model='2nn')
    task = plan.load_task(config)
    self.assertLen(task.manifest.clients, 3)
    self.assertEqual(task.input_spec[0].shape.as_list(), [None, 8, 8, 3])
    # 8*8*3 inputs -> 200 -> 200 -> 2.
    self.assertEqual(task.model_builder().count_params(),
                     192 * 200 + 200 + 200 * 200 + 200 + 200 * 2 + 2)

  def test_client_folders_refuse_another_partition(self):
    with self.assertRaisesRegex(UserError, 'drop --partition=iid'):
      plan.load_task(self._config(self.clients, partition='iid',
                                  num_clients=3))


if __name__ == '__main__':
  absltest.main()
