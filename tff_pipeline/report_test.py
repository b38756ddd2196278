import os
import shutil
import tempfile

from absl.testing import absltest

from tests import testutil
from tff_pipeline.learning import metrics_io
from tff_pipeline import report


class ReportTest(absltest.TestCase):

  def test_writes_png_curves(self):
    out = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, out)
    writer = metrics_io.MetricsWriter(out)
    for r in range(1, 6):
      row = {'round': r, 'round_seconds': 1.0,
             'train': {'loss': 1.0 / r, 'accuracy': 0.5 + r / 20}}
      if r % 2 == 0:
        row['eval'] = {'loss': 1.1 / r, 'accuracy': 0.45 + r / 20}
      writer.write(row)
    writer.close()
    paths = report.plot_curves(metrics_io.read_metrics(out), out)
    self.assertEqual([os.path.basename(p) for p in paths],
                     ['accuracy.png', 'loss.png'])
    for path in paths:
      with open(path, 'rb') as f:
        data = f.read()
      self.assertEqual(data[:8], b'\x89PNG\r\n\x1a\n')
      self.assertGreater(len(data), 5000)

  def test_cli_on_an_empty_folder_is_a_clear_error(self):
    out = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, out)
    result = testutil.run_module('tff_pipeline.report', out, timeout=120)
    self.assertEqual(result.returncode, 2)
    self.assertIn('error: no rounds in', result.stderr)
    self.assertNotIn('Traceback', result.stderr)


if __name__ == '__main__':
  absltest.main()
