import glob
import json
import os
import shutil
import tempfile

from absl.testing import absltest
import numpy as np

from tff_pipeline.learning import metrics_io


def tf_value(event):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.make_ndarray(event.tensor_proto)


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

  def test_flat_metrics_of_a_distributed_private_round(self):
    row = {'round': 3, 'round_seconds': 4.5, 'eval_seconds': 1.0,
           'clients': ['a', 'b', 'c'], 'participants': ['a', 'b'],
           'train': {'loss': 0.5, 'accuracy': 0.75, 'num_examples': 60},
           'eval': {'loss': 0.4, 'rmse': 0.9},
           'privacy': {'epsilon': 1.5, 'delta': 1e-5, 'accountant': 'rdp',
                       'epsilon_pld': 'inf'},
           'clip': 0.8,
           'failures': [{'pod': 'edge-1', 'error': 'timeout'}],
           'network': {'coordinator_bytes_sent': 1000,
                       'edge_server_bytes_received': 2500, 'attempts': 1},
           'pod_seconds': {'edge-0': 2.0}}
    self.assertEqual(metrics_io.flat_metrics(row), {
        'train/loss': 0.5, 'train/accuracy': 0.75, 'train/num_examples': 60.0,
        'eval/loss': 0.4, 'eval/rmse': 0.9,
        'privacy/epsilon': 1.5, 'privacy/delta': 1e-5,
        'network/coordinator_bytes_sent': 1000.0,
        'network/edge_server_bytes_received': 2500.0,
        'network/attempts': 1.0,
        'round_seconds': 4.5, 'eval_seconds': 1.0, 'clip': 0.8,
        'clients': 3.0, 'failures': 1.0, 'participants': 2.0})

  def test_tensorboard_holds_epsilon_failures_bytes_and_params(self):
    from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
    writer = metrics_io.MetricsWriter(self._dir, params={'rounds': 2})
    for r in (1, 2):
      writer.write(dict(_row(r), privacy={'epsilon': 0.5 * r},
                        failures=[], network={'coordinator_bytes_sent': 10}))
    writer.close()
    events = event_accumulator.EventAccumulator(
        os.path.join(self._dir, metrics_io.TENSORBOARD_DIR),
        size_guidance={event_accumulator.TENSORS: 0})
    events.Reload()
    tags = events.Tags()['tensors']
    for tag in ('train/loss', 'privacy/epsilon', 'failures',
                'network/coordinator_bytes_sent', 'round_seconds', 'params'):
      self.assertIn(tag, tags)
    epsilon = [(e.step, float(tf_value(e))) for e in
               events.Tensors('privacy/epsilon')]
    self.assertEqual(epsilon, [(1, 0.5), (2, 1.0)])

  def test_no_tensorboard_when_not_asked(self):
    writer = metrics_io.MetricsWriter(self._dir, tensorboard=False)
    writer.write(_row(1))
    writer.close()
    self.assertFalse(os.path.exists(
        os.path.join(self._dir, metrics_io.TENSORBOARD_DIR)))
    self.assertLen(metrics_io.read_metrics(self._dir), 1)

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
