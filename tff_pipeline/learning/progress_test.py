import io
import os
import re

from absl.testing import absltest

from tff_pipeline.learning import progress


class _Terminal(io.StringIO):

  def isatty(self):
    return True


class ProgressTest(absltest.TestCase):

  def test_format_seconds(self):
    self.assertEqual(progress.format_seconds(5), '5s')
    self.assertEqual(progress.format_seconds(125), '2m05s')
    self.assertEqual(progress.format_seconds(3725), '1h02m')

  def test_piped_output_has_one_line_per_round(self):
    stream = io.StringIO()
    bar = progress.Progress(total_rounds=3, stream=stream)
    bar.update({'round': 1, 'round_seconds': 2.04,
                'train': {'accuracy': 0.25, 'loss': 1.5, 'num_examples': 40}})
    bar.update({'round': 2, 'round_seconds': 1.5, 'eval_seconds': 0.5,
                'train': {'loss': 1.0, 'accuracy': 0.5},
                'eval': {'loss': 0.9, 'accuracy': 0.6}})
    bar.update({'round': 3, 'round_seconds': 1.0, 'train': {'loss': 0.8}})
    lines = stream.getvalue().splitlines()
    self.assertLen(lines, 3)
    self.assertEqual(lines[0].split('  ETA')[0],
                     'round 1/3  loss 1.5000  acc 0.2500  2.0s')
    self.assertIn('eval acc 0.6000', lines[1])
    self.assertIn('  2.0s  ETA', lines[1])
    self.assertNotIn('num_examples', stream.getvalue())
    # The last evaluation stays on the line until the next one.
    self.assertIn('eval acc 0.6000', lines[2])
    self.assertTrue(lines[2].endswith('ETA 0s'), lines[2])

  def test_epsilon_failures_and_other_tasks_metrics(self):
    stream = io.StringIO()
    bar = progress.Progress(total_rounds=40, stream=stream)
    bar.update({'round': 7, 'round_seconds': 4.8,
                'train': {'loss': 0.9, 'rmse': 0.95},
                'eval': {'loss': 0.88, 'rmse': 0.94, 'accuracy': 0.41},
                'privacy': {'epsilon': 1.23456, 'delta': 1e-5},
                'failures': [{'pod': 'edge-3', 'error': 'timeout'}]})
    bar.update({'round': 8, 'round_seconds': 0.1, 'train': {},
                'privacy': {'epsilon': 'inf', 'delta': 1e-5},
                'failures': []})
    first, second = stream.getvalue().splitlines()
    self.assertEqual(first.split('  ETA')[0],
                     'round 7/40  loss 0.9000  rmse 0.9500  eval rmse 0.9400  '
                     'acc 0.4100  eps 1.235  failures 1  4.8s')
    self.assertIn('no client sampled', second)
    self.assertIn('eps inf  failures 0', second)

  def test_recall_at_5_is_shown(self):
    stream = io.StringIO()
    progress.Progress(2, stream=stream).update(
        {'round': 1, 'round_seconds': 1.0,
         'train': {'loss': 2.0, 'recall_at_5': 0.3, 'accuracy': 0.1}})
    self.assertIn('recall@5 0.3000', stream.getvalue())

  def test_terminal_line_is_rewritten_in_place(self):
    stream = _Terminal()
    bar = progress.Progress(total_rounds=2, stream=stream)
    for round_num in (1, 2):
      bar.update({'round': round_num, 'round_seconds': 1.0,
                  'train': {'loss': 1.0, 'accuracy': 0.5}})
    text = stream.getvalue()
    self.assertEqual(text.count('\r\033[K'), 2)
    self.assertTrue(text.endswith('\n'))
    self.assertEqual(text.count('\n'), 1)

  def test_dp_rows_without_training_metrics(self):
    stream = io.StringIO()
    bar = progress.Progress(total_rounds=3, stream=stream)
    private = {'privacy': {'epsilon': 0.5, 'delta': 1e-5}, 'train': {}}
    bar.update({'round': 1, 'participants_count': 9, **private})
    bar.update({'round': 2, 'participants_count': 11,
                'eval': {'loss': 0.9, 'accuracy': 0.6}, **private})
    bar.update({'round': 3, 'participants_count': 0, **private})
    lines = stream.getvalue().splitlines()
    self.assertNotIn('loss', lines[0])
    self.assertIn('round 1/3  train metrics withheld (DP)  eps 0.500',
                  lines[0])
    self.assertIn('eval acc 0.6000', lines[1])
    self.assertIn('no client sampled', lines[2])

  def test_disabled_prints_nothing(self):
    stream = io.StringIO()
    progress.Progress(3, stream=stream, enabled=False).update(
        {'round': 1, 'round_seconds': 1.0,
         'train': {'loss': 1.0, 'accuracy': 0.5}})
    self.assertEqual(stream.getvalue(), '')

  def test_kubernetes_coordinator_keeps_the_lines_on(self):
    # `kubectl logs -f job/coordinator` shows these lines only if the
    # coordinator's training config leaves progress on.
    import yaml  # pylint: disable=g-import-not-at-top
    root = os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    path = os.path.join(root, 'k8s', 'base', 'train.yaml')
    if not os.path.exists(path):
      self.skipTest(f'{path} is not in this test\'s files')
    with open(path, encoding='utf-8') as f:
      text = f.read()
    progress_setting = (yaml.safe_load(text).get('tracking_args') or {}).get(
        'progress', True)
    self.assertIs(progress_setting, True)
    self.assertIsNone(re.search(r'progress:\s*false', text))


if __name__ == '__main__':
  absltest.main()
