import os
import shutil
import tempfile

from absl.testing import absltest

from tests import testutil
from tff_pipeline.learning import metrics_io
from tff_pipeline import report

_PNG = b'\x89PNG\r\n\x1a\n'


def _image_rows():
  rows = []
  for r in range(1, 6):
    row = {'round': r, 'round_seconds': 1.0 + r, 'clients': ['a'],
           'train': {'loss': 1.0 / r, 'accuracy': 0.5 + r / 20,
                     'num_examples': 40}}
    if r % 2 == 0:
      row['eval'] = {'loss': 1.1 / r, 'accuracy': 0.45 + r / 20}
      row['eval_seconds'] = 0.5
    rows.append(row)
  return rows


def _remote_dp_movielens_rows():
  """Rows shaped like a distributed DP MovieLens run's metrics.jsonl."""
  return [{'round': r, 'round_seconds': 4.0, 'clients': ['u1', 'u2'],
           'train': {'loss': 1.2 / r, 'rmse': 1.1 / r},
           'eval': {'loss': 1.0, 'rmse': 0.95, 'accuracy': 0.4},
           'privacy': {'epsilon': 0.25 * r, 'delta': 1e-5},
           'failures': [{'pod': 'edge-1', 'error': 'x'}] * (r % 2),
           'network': {'coordinator_bytes_sent': 2e6 * r,
                       'coordinator_bytes_received': 1e6,
                       'edge_server_bytes_sent': 3e6,
                       'edge_server_bytes_received': 4e6, 'attempts': 1}}
          for r in (1, 2, 3)]


class ReportTest(absltest.TestCase):

  def _dir(self):
    out = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, out)
    return out

  def _write(self, rows):
    out = self._dir()
    writer = metrics_io.MetricsWriter(out, tensorboard=False)
    for row in rows:
      writer.write(row)
    writer.close()
    return out

  def test_image_run_series(self):
    plots = report.run_series(_image_rows())
    self.assertEqual(list(plots), ['loss', 'accuracy', 'round_seconds'])
    self.assertEqual(plots['accuracy'], {
        'train (sampled clients)': ([1, 2, 3, 4, 5],
                                    [0.55, 0.6, 0.65, 0.7, 0.75]),
        'eval (held-out)': ([2, 4], [0.55, 0.65])})
    self.assertEqual(plots['round_seconds'], {
        'round': ([1, 2, 3, 4, 5], [2.0, 3.0, 4.0, 5.0, 6.0]),
        'evaluation': ([2, 4], [0.5, 0.5])})

  def test_distributed_private_recommendation_series(self):
    plots = report.run_series(_remote_dp_movielens_rows())
    self.assertEqual(set(plots), {'loss', 'rmse', 'accuracy', 'epsilon',
                                  'round_seconds', 'failures', 'bytes'})
    self.assertEqual(plots['epsilon'], {'ε at δ=1e-05': ([1, 2, 3],
                                                         [0.25, 0.5, 0.75])})
    self.assertEqual(plots['failures'],
                     {'pods or edge servers': ([1, 2, 3], [1.0, 0.0, 1.0])})
    self.assertEqual(plots['bytes']['coordinator sent'],
                     ([1, 2, 3], [2.0, 4.0, 6.0]))
    self.assertEqual(plots['bytes']['edge server received'],
                     ([1, 2, 3], [4.0, 4.0, 4.0]))
    self.assertNotIn('attempts', ' '.join(plots['bytes']))
    # Accuracy is only evaluated here (rating accuracy), never trained.
    self.assertEqual(list(plots['accuracy']), ['eval (held-out)'])

  def test_recall_at_5(self):
    rows = [{'round': 1, 'round_seconds': 1.0,
             'train': {'loss': 3.0, 'recall_at_5': 0.2, 'accuracy': 0.1}}]
    self.assertIn('recall_at_5', report.run_series(rows))

  def test_comparison_has_one_line_per_run(self):
    plots = report.comparison_series({'a': _image_rows(),
                                      'b': _remote_dp_movielens_rows()})
    self.assertEqual(plots['accuracy'], {'a': ([2, 4], [0.55, 0.65]),
                                         'b': ([1, 2, 3], [0.4, 0.4, 0.4])})
    self.assertEqual(list(plots['epsilon']), ['b'])
    self.assertEqual(plots['bytes']['b'], ([1, 2, 3], [10.0, 12.0, 14.0]))
    self.assertEqual(plots['round_seconds']['a'][1], [2.0, 3.0, 4.0, 5.0, 6.0])

  def test_cli_plots_runs_and_their_comparison(self):
    image, remote = self._write(_image_rows()), self._write(
        _remote_dp_movielens_rows())
    compare = os.path.join(self._dir(), 'cmp')
    result = testutil.run_module('tff_pipeline.report', image, remote,
                                 f'--out_dir={compare}', timeout=300)
    self.assertEqual(result.returncode, 0, result.stderr)
    written = result.stdout.split()
    expected = ([os.path.join(image, f'{n}.png') for n in
                 ('loss', 'accuracy', 'round_seconds')] +
                [os.path.join(remote, f'{n}.png') for n in
                 ('loss', 'rmse', 'accuracy', 'epsilon', 'round_seconds',
                  'failures', 'bytes')] +
                [os.path.join(compare, f'compare_{n}.png') for n in
                 ('loss', 'accuracy', 'round_seconds', 'rmse', 'epsilon',
                  'failures', 'bytes')])
    self.assertCountEqual(written, expected)
    for path in written:
      with open(path, 'rb') as f:
        data = f.read()
      self.assertEqual(data[:8], _PNG, path)
      self.assertGreater(len(data), 5000, path)

  def test_a_real_distributed_runs_files(self):
    run_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           'testdata', 'remote_run')
    rows = metrics_io.read_metrics(run_dir)
    self.assertLen(rows, 5)
    plots = report.run_series(rows)
    self.assertEqual(set(plots), {'loss', 'accuracy', 'round_seconds',
                                  'failures', 'bytes'})
    self.assertEqual(plots['failures'],
                     {'pods or edge servers': ([1, 2, 3, 4, 5], [0.0] * 5)})
    self.assertEqual(plots['bytes']['coordinator sent'],
                     ([1, 2, 3, 4, 5],
                      [r['network']['coordinator_bytes_sent'] / 1e6
                       for r in rows]))
    self.assertEqual(plots['accuracy']['eval (held-out)'],
                     ([5], [rows[4]['eval']['accuracy']]))
    out = self._dir()
    paths = report.draw(plots, out)
    self.assertLen(paths, 5)
    for path in paths:
      with open(path, 'rb') as f:
        self.assertEqual(f.read(8), _PNG)

  def test_cli_on_an_empty_folder_is_a_clear_error(self):
    result = testutil.run_module('tff_pipeline.report', self._dir(),
                                 timeout=120)
    self.assertEqual(result.returncode, 2)
    self.assertIn('error: no rounds in', result.stderr)
    self.assertNotIn('Traceback', result.stderr)
    result = testutil.run_module('tff_pipeline.report', timeout=120)
    self.assertEqual(result.returncode, 2)
    self.assertIn('error: usage: python -m tff_pipeline.report RUN',
                  result.stderr)


if __name__ == '__main__':
  absltest.main()
