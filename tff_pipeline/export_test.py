"""Every run's model/ predicts like its global model; the export CLI."""

import os
import tempfile

from absl import flags
from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
import tensorflow as tf

from tests import testutil
from tff_pipeline import api
from tff_pipeline import model_export


def _eval_batch(result: api.RunResult, size: int = 64) -> np.ndarray:
  task = result.task
  path = task.manifest.path(task.manifest.eval)
  x, _ = next(iter(task.batched(tf.data.TFRecordDataset(path), size)))
  return x.numpy()


def _check_export_predicts_like(test, model: tf.keras.Model, model_dir: str,
                                x: np.ndarray) -> np.ndarray:
  expected = model(x, training=False).numpy()
  served = model_export.load_saved_model(model_dir)(inputs=tf.constant(x))
  np.testing.assert_allclose(served['outputs'].numpy(), expected, atol=1e-5)
  np.testing.assert_allclose(model_export.tflite_predict(model_dir, x),
                             expected, atol=1e-5)
  test.assertFalse(np.allclose(expected, expected.mean(axis=0)))  # Not flat.
  return expected


class RunExportTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    flags.FLAGS.mark_as_parsed()
    # A new folder each time: runs refuse to overwrite earlier runs.
    cls.root = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir())
    os.environ['TFF_PIPELINE_CACHE'] = os.path.join(cls.root, 'cache')

  def _train(self, name, **options):
    values = dict(num_clients=60, partition='iid', clients_per_round=2,
                  rounds=1, eval_every=0, progress=False,
                  output_dir=os.path.join(self.root, name))
    values.update(options)
    return api.train(**values)

  @parameterized.parameters('cnn', '2nn', 'lr')
  def test_every_run_writes_a_model_that_predicts_like_the_global_one(
      self, model):
    result = self._train(f'fmnist-{model}', model=model)
    exported = result.exported
    self.assertIsNotNone(exported, result.summary['model'])
    self.assertEqual(exported.saved_model, os.path.join(
        self.root, f'fmnist-{model}', 'model', 'saved_model'))
    self.assertEqual(result.summary['model']['round'], 1)
    _check_export_predicts_like(self, result.model, os.path.dirname(
        exported.saved_model), _eval_batch(result))

  def test_csv_tasks_model(self):
    data = os.path.join(self.root, 'rows.csv')
    rng = np.random.default_rng(0)
    with open(data, 'w', encoding='utf-8') as f:
      f.write('site,a,b,c,y\n')
      for i in range(300):
        a, b, c = rng.normal(size=3)
        f.write(f's{i % 4},{a:.3f},{b:.3f},{c:.3f},{int(a + b > c)}\n')
    result = self._train('csv', task='csv', data_dir=data, label_column='y',
                         client_column='site', num_clients=0,
                         partition='natural', rounds=2)
    self.assertEqual(result.summary['config']['model'], 'mlp')
    _check_export_predicts_like(self, result.model, os.path.dirname(
        result.exported.saved_model), _eval_batch(result))

  def test_export_cli_from_an_earlier_checkpoint(self):
    output_dir = os.path.join(self.root, 'resumed')
    first = self._train('resumed', model='lr')
    x = _eval_batch(first)
    round_1 = first.model(x).numpy()
    second = self._train('resumed', model='lr', rounds=2, resume=True)
    self.assertFalse(np.allclose(second.model(x).numpy(), round_1))
    result = testutil.run_module('tff_pipeline.export', output_dir,
                                 '--round=1',
                                 env={'TFF_PIPELINE_CACHE':
                                      os.environ['TFF_PIPELINE_CACHE']})
    self.assertEqual(result.returncode, 0, result.stderr[-2000:])
    model_dir = os.path.join(output_dir, 'model_round_1')
    self.assertIn(f'model of round 1: {model_dir}/saved_model',
                  result.stdout)
    served = model_export.load_saved_model(model_dir)(inputs=tf.constant(x))
    np.testing.assert_allclose(served['outputs'].numpy(), round_1, atol=1e-6)
    np.testing.assert_allclose(model_export.tflite_predict(model_dir, x),
                               round_1, atol=1e-5)
    missing = testutil.run_module('tff_pipeline.export', output_dir,
                                  '--round=7')
    self.assertEqual(missing.returncode, 2)
    self.assertRegex(missing.stderr.strip().splitlines()[-1],
                     r'^error: no checkpoint of round 7 .*rounds 1, 2\)')


if __name__ == '__main__':
  absltest.main()
