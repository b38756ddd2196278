import ast
import os
import pathlib

from absl.testing import absltest
import numpy as np
import tensorflow as tf

from data_prep import shards
from data_prep import testing
from tff_pipeline import plan
from tff_pipeline.core import config as config_lib
from tff_pipeline.tasks import cifar10

_REPO = pathlib.Path(__file__).resolve().parents[2]


def _resnet18_parameters(num_classes: int = 10) -> int:
  """By hand: 3x3 convs without bias, GroupNorm gamma+beta per channel."""
  def conv(cin, cout, k):
    return k * k * cin * cout

  def norm(c):
    return 2 * c

  total = conv(3, 64, 3) + norm(64)  # Stem.
  cin = 64
  for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
    for block in range(2):
      total += conv(cin, cout, 3) + norm(cout) + conv(cout, cout, 3) + norm(cout)
      if block == 0 and (stride != 1 or cin != cout):
        total += conv(cin, cout, 1) + norm(cout)  # Projection shortcut.
      cin = cout
  return total + 512 * num_classes + num_classes  # Dense.


class ModelsTest(absltest.TestCase):

  def test_cnn_has_the_tutorials_122570_parameters(self):
    # TF's CNN tutorial summary: 896 + 18,496 + 36,928 + 65,600 + 650.
    self.assertEqual(cifar10.create_cnn().count_params(), 122_570)

  def test_resnet18_gn_parameter_count_by_hand(self):
    expected = _resnet18_parameters()
    # The 11,173,962 of the usual CIFAR ResNet-18 (BatchNorm's affine
    # parameters are GroupNorm's; running statistics are gone).
    self.assertEqual(expected, 11_173_962)
    model = cifar10.create_resnet18()
    self.assertEqual(model.count_params(), expected)
    self.assertEmpty(model.non_trainable_weights)
    kinds = {type(layer).__name__ for layer in model.layers}
    self.assertIn('GroupNormalization', kinds)
    self.assertNotIn('BatchNormalization', kinds)
    self.assertEqual({layer.groups for layer in model.layers
                      if type(layer).__name__ == 'GroupNormalization'}, {2})
    self.assertEqual(model(tf.zeros([2, 32, 32, 3])).shape, (2, 10))

  def test_written_only_against_the_task_interface(self):
    tree = ast.parse((_REPO / 'tff_pipeline/tasks/cifar10.py').read_text())
    ours = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module.startswith(
          ('tff_pipeline', 'data_prep', 'workers')):
        ours |= {f'{node.module}.{a.name}' for a in node.names}
    self.assertEqual(ours, {'tff_pipeline.tasks.base', 'data_prep.cifar10',
                            'data_prep.shards'})
    # The rest of the project knows it by its registry entry only.
    users = sorted(str(p.relative_to(_REPO)) for top in
                   ('tff_pipeline', 'workers', 'data_prep', 'bench')
                   for p in (_REPO / top).rglob('*.py')
                   if not p.name.endswith('_test.py') and
                   'import cifar10' in p.read_text() and
                   p.name != 'cifar10.py')
    self.assertEqual(users, ['tff_pipeline/tasks/registry.py'])


class TaskTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path
    os.environ['TFF_PIPELINE_CACHE'] = os.path.join(self.dir, 'cache')
    testing.write_cifar10_binary(
        self.dir, testing.synthetic_cifar10_batches(per_batch=20))

  def test_fedml_config_maps_to_cifar10_and_resnet18(self):
    path = os.path.join(self.dir, 'fedml.yaml')
    for model in ('resnet18', 'resnet18_gn'):
      with open(path, 'w') as f:
        f.write(f'data_args:\n  dataset: cifar10\n  data_cache_dir: {self.dir}\n'
                f'model_args:\n  model: {model}\n'
                'train_args:\n  client_num_in_total: 5\n'
                '  client_num_per_round: 2\n')
      config = plan.resolve_config(config_lib.parse_yaml(path).values,
                                   {'output_dir': self.dir})
      self.assertEqual((config.task, config.model, config.num_clients),
                       ('cifar10', 'resnet18', 5))

  def test_standardized_batches_and_the_model(self):
    config = plan.resolve_config({}, dict(
        task='cifar10', data_dir=self.dir, num_clients=4, clients_per_round=2,
        partition='iid', output_dir=self.dir))
    task = plan.load_task(config)
    self.assertEqual(task.input_spec[0].shape.as_list(), [None, 32, 32, 3])
    manifest = task.manifest
    x = np.concatenate([
        task.parse_and_preprocess(tf.constant(list(
            tf.data.TFRecordDataset(manifest.path(c)).as_numpy_iterator())
        ))[0].numpy() for c in manifest.clients])
    # The training pixels, standardized: mean 0, sd 1 per channel.
    np.testing.assert_allclose(x.mean(axis=(0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=(0, 1, 2)), 1, atol=1e-4)
    raw = np.concatenate([shards.read_numpy(manifest, c)['pixels']
                          for c in manifest.clients])
    np.testing.assert_allclose(
        x[0, 0, 0], (raw[0, 0, 0] / 255 - np.array(
            manifest.source['channel_mean'])) / np.array(
                manifest.source['channel_std']), rtol=1e-5)
    self.assertEqual(task.model_builder()(x[:3]).shape, (3, 10))


if __name__ == '__main__':
  absltest.main()
