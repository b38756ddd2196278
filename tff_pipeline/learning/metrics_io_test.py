import glob
import json
import os
import shutil
import tempfile

from absl.testing import absltest
import numpy as np

from tff_pipeline.learning import metrics_io


def _row(r):
  return {'round': r, 'round_seconds': 1.5, 'train': {'loss': np.float32(0.5),
                                                      'accuracy': 0.75}}


class MetricsIoTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self._dir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self._dir)

  def test_rows_and_tensorboard_events(self):
    writer = metrics_io.MetricsWriter(self._dir)
    writer.write(_row(1))
    writer.write(dict(_row(2), eval={'loss': 0.4, 'accuracy': 0.8}))
    writer.close()
    rows = metrics_io.read_metrics(self._dir)
    self.assertEqual([r['round'] for r in rows], [1, 2])
    self.assertAlmostEqual(rows[0]['train']['loss'], 0.5)
    self.assertEqual(rows[1]['eval']['accuracy'], 0.8)
    self.assertNotEmpty(glob.glob(os.path.join(
        self._dir, metrics_io.TENSORBOARD_DIR, 'events.out.tfevents*')))

  def test_resume_drops_rows_after_the_checkpoint_and_a_torn_line(self):
    writer = metrics_io.MetricsWriter(self._dir)
    for r in (1, 2, 3):
      writer.write(_row(r))
    writer.close()
    with open(os.path.join(self._dir, metrics_io.METRICS_FILE), 'a') as f:
      f.write('{"round": 4, "roun')  # Killed mid-write.
    self.assertLen(metrics_io.read_metrics(self._dir), 3)
    metrics_io.MetricsWriter(self._dir, keep_through_round=2).close()
    self.assertEqual([r['round'] for r in metrics_io.read_metrics(self._dir)],
                     [1, 2])

  def test_summary_is_json(self):
    path = metrics_io.write_summary(self._dir, {'x': np.float64(1.0),
                                                'v': metrics_io.library_versions()})
    with open(path) as f:
      summary = json.load(f)
    self.assertEqual(summary['x'], 1.0)
    self.assertEqual(summary['v']['tensorflow_federated'], '0.87.0')


if __name__ == '__main__':
  absltest.main()
