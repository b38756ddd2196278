import io

from absl.testing import absltest

from tff_pipeline.learning import progress


class ProgressTest(absltest.TestCase):

  def test_format_seconds(self):
    self.assertEqual(progress.format_seconds(5), '5s')
    self.assertEqual(progress.format_seconds(125), '2m05s')
    self.assertEqual(progress.format_seconds(3725), '1h02m')

  def test_piped_output_has_one_line_per_round_with_eta(self):
    stream = io.StringIO()
    bar = progress.Progress(total_rounds=3, stream=stream)
    bar.update(1, {'loss': 1.5, 'accuracy': 0.25})
    bar.update(2, {'loss': 1.0, 'accuracy': 0.5}, {'loss': 0.9, 'accuracy': 0.6})
    lines = stream.getvalue().splitlines()
    self.assertLen(lines, 2)
    self.assertIn('round 1/3', lines[0])
    self.assertIn('loss 1.5000', lines[0])
    self.assertIn('ETA', lines[0])
    self.assertIn('eval acc 0.6000', lines[1])

  def test_dp_rows_without_training_metrics(self):
    stream = io.StringIO()
    bar = progress.Progress(total_rounds=2, stream=stream)
    bar.update(1, {})
    bar.update(2, {}, {'loss': 0.9, 'accuracy': 0.6})
    lines = stream.getvalue().splitlines()
    self.assertNotIn('loss', lines[0])
    self.assertIn('round 1/2', lines[0])
    self.assertIn('eval acc 0.6000', lines[1])

  def test_disabled_prints_nothing(self):
    stream = io.StringIO()
    progress.Progress(3, stream=stream, enabled=False).update(
        1, {'loss': 1.0, 'accuracy': 0.5})
    self.assertEqual(stream.getvalue(), '')


if __name__ == '__main__':
  absltest.main()
