import os
import sys

from absl.testing import absltest
import numpy as np
import tensorflow as tf

from data_prep import shards
from data_prep.errors import UserError
from tests import testutil
from tff_pipeline import plan

_USER_MODEL = """
import tensorflow as tf

def logits(input_shape, num_classes):
  return tf.keras.Sequential([tf.keras.layers.Input(shape=input_shape),
                              tf.keras.layers.Dense(num_classes)])
"""


class CsvTaskTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path
    self.csv = os.path.join(self.dir, 'data.csv')
    rng = np.random.default_rng(0)
    with open(self.csv, 'w', encoding='utf-8') as f:
      f.write('hospital,age,dose,outcome\n')
      for i in range(60):
        age, dose = rng.uniform(20, 80), rng.uniform(0, 5)
        f.write(f'h{i % 3},{age:.1f},{dose:.2f},{int(dose > 2.5)}\n')
    os.environ['TFF_PIPELINE_CACHE'] = os.path.join(self.dir, 'cache')

  def _config(self, **options):
    values = dict(task='csv', data_dir=self.csv, label_column='outcome',
                  output_dir=os.path.join(self.dir, 'run'))
    values.update(options)
    return plan.resolve_config({}, values)

  def test_client_column_implies_the_natural_partition(self):
    config = self._config(client_column='hospital', clients_per_round=3)
    self.assertEqual((config.partition, config.num_clients, config.model),
                     ('natural', 0, 'mlp'))
    task = plan.load_task(config)
    self.assertEqual(task.manifest.client_ids(), ['h0', 'h1', 'h2'])
    self.assertEqual(task.manifest.source['feature_names'], ['age', 'dose'])

  def test_without_it_the_rows_are_partitioned(self):
    config = self._config(partition='iid', num_clients=4, clients_per_round=2)
    self.assertLen(plan.load_task(config).manifest.clients, 4)

  def test_a_partition_with_a_client_column_is_refused(self):
    config = self._config(client_column='hospital', partition='iid')
    with self.assertRaisesRegex(UserError, 'drop --partition=iid'):
      plan.load_task(config)

  def test_features_are_standardized_with_the_training_statistics(self):
    task = plan.load_task(self._config(client_column='hospital',
                                       clients_per_round=3))
    manifest = task.manifest
    raw = np.concatenate([shards.read_numpy(manifest, c)['features']
                          for c in manifest.clients]).astype(np.float64)
    expected = (raw - raw.mean(axis=0)) / raw.std(axis=0)
    x = np.concatenate([
        task.parse_and_preprocess(tf.constant(list(
            tf.data.TFRecordDataset(manifest.path(c)).as_numpy_iterator())
        ))[0].numpy() for c in manifest.clients])
    np.testing.assert_allclose(x, expected, atol=1e-5)
    self.assertEqual(task.input_spec[0].shape.as_list(), [None, 2])
    self.assertEqual(task.model_builder()(x).shape, (len(x), 2))

  def test_label_column_decides_the_shards(self):
    with open(self.csv, 'a', encoding='utf-8') as f:
      f.write('h0,50,1.00,1\n')
    a = plan.data_key(self._config(client_column='hospital'))
    b = plan.data_key(self._config(client_column='hospital',
                                   label_column='dose'))
    self.assertNotEqual(a, b)

  def test_users_logits_model_gets_a_from_logits_loss(self):
    root = self.create_tempdir().full_path
    with open(os.path.join(root, 'csv_user_model.py'), 'w') as f:
      f.write(_USER_MODEL)
    sys.path.insert(0, root)
    self.addCleanup(sys.path.remove, root)
    task = plan.load_task(self._config(client_column='hospital',
                                       clients_per_round=3,
                                       model='csv_user_model:logits'))
    loss = task.loss_builder()
    self.assertTrue(loss.get_config()['from_logits'])
    self.assertEqual(task.model_builder().input_shape, (None, 2))

  def test_train_cli_names_the_bad_line(self):
    bad = os.path.join(self.dir, 'bad.csv')
    with open(bad, 'w', encoding='utf-8') as f:
      f.write('site,x,label\na,1,0\nb,oops,1\n')
    result = testutil.run_module(
        'tff_pipeline.train', '--task=csv', f'--data_dir={bad}',
        '--label_column=label', '--client_column=site',
        f'--output_dir={os.path.join(self.dir, "cli")}', timeout=300,
        env={'TFF_PIPELINE_CACHE': os.path.join(self.dir, 'cache')})
    self.assertEqual(result.returncode, 2, result.stderr[-2000:])
    errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
    self.assertEqual(errors, [
        f"error: {bad} line 3: feature column 'x' holds 'oops', not a "
        'number; fix the value or remove the line'])


if __name__ == '__main__':
  absltest.main()
