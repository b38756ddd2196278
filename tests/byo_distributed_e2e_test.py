"""Your own data on the layered runtime: same model as the local runtime.

`--task=csv` (a client column), `--task=image_folder` (client folders; the
CNN, whose dropout is stateless) and `--task=cifar10` (files in the
published binary format) each train 2 rounds on 2 pods under 1 edge server,
and must give the local runtime's model and held-out metrics.
"""

from __future__ import annotations

import os
import shutil
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top
from absl import flags
from absl.testing import absltest
import numpy as np
import PIL.Image

from data_prep import testing
from tff_pipeline import api
from tff_pipeline import plan
from workers import local_cluster
from workers import local_runtime as runtime


def _write_data(root: str) -> dict[str, dict]:
  """Each task's training options, on small files written here."""
  rng = np.random.default_rng(0)
  csv = os.path.join(root, 'sites.csv')
  with open(csv, 'w', encoding='utf-8') as f:
    f.write('site,a,b,c,label\n')
    for i in range(120):
      a, b, c = rng.normal(size=3)
      f.write(f'site{i % 4},{a:.4f},{b:.4f},{c:.4f},'
              f'{"yes" if a + b > c else "no"}\n')
  folders = os.path.join(root, 'photos')
  for i in range(36):
    label = i % 2
    pixels = rng.integers(0, 100, (8, 8, 3), dtype=np.uint8)
    pixels[:, :, label] += 120
    path = os.path.join(folders, f'site{i % 3}', ('red', 'green')[label],
                        f'{i}.png')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    PIL.Image.fromarray(pixels).save(path)
  cifar = os.path.join(root, 'cifar')
  testing.write_cifar10_binary(cifar,
                               testing.synthetic_cifar10_batches(per_batch=20))
  return {
      'csv': dict(task='csv', data_dir=csv, label_column='label',
                  client_column='site', clients_per_round=4),
      'image_folder': dict(task='image_folder', data_dir=folders,
                           eval_fraction=0.25, clients_per_round=3,
                           client_batch_size=4),
      'cifar10': dict(task='cifar10', data_dir=cifar, num_clients=4,
                      partition='iid', clients_per_round=4,
                      client_batch_size=5),
  }


class YourDataDistributedTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    flags.FLAGS.mark_as_parsed()
    runtime.use_local_runtime(4)
    cls.root = tempfile.mkdtemp(prefix='byo-e2e-')
    cls.options = _write_data(cls.root)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root, ignore_errors=True)
    super().tearDownClass()

  def _config(self, task: str, name: str, **overrides):
    values = dict(self.options[task], rounds=2, eval_every=0, progress=False,
                  shard_dir=os.path.join(self.root, f'{task}-shards'),
                  output_dir=os.path.join(self.root, task, name))
    values.update(overrides)
    return plan.resolve_config({}, values)

  def test_two_rounds_on_pods_equal_the_local_ones(self):
    for task in self.options:
      with self.subTest(task=task):
        cluster = local_cluster.LocalCluster(
            plan.load_task(self._config(task, 'unused')).manifest.shard_dir,
            2, 1, cluster_dir=os.path.join(self.root, task, 'cluster')).start()
        try:
          local = api.run(self._config(task, 'local'))
          remote = api.run(self._config(task, 'remote', executor='remote',
                                        topology=cluster.topology_path))
        finally:
          cluster.stop()
        for row in remote.rows:
          self.assertEqual(row['failures'], [])
          self.assertGreater(row['train']['num_examples'], 0)
        self.assertEqual([r['clients'] for r in remote.rows],
                         [r['clients'] for r in local.rows])
        for a, b in zip(local.state.global_model_weights.trainable,
                        remote.state.global_model_weights.trainable,
                        strict=True):
          np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0,
                                     atol=1e-5)
        for name, value in local.summary['final_eval'].items():
          self.assertAlmostEqual(remote.summary['final_eval'][name], value,
                                 delta=1e-5, msg=name)
        self.assertIsNotNone(remote.exported)


if __name__ == '__main__':
  absltest.main()
