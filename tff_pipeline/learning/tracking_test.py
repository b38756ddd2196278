"""MLflow and W&B runs, offline, read back with the libraries' own readers."""

import glob
import json
import os
import sys
import time
from unittest import mock

from absl.testing import absltest

from data_prep.errors import UserError
from tff_pipeline.learning import tracking


def _rows():
  """Rows shaped like a distributed DP run's metrics.jsonl."""
  return [{'round': r, 'round_seconds': 2.0 + r, 'clients': ['a', 'b'],
           'train': {'loss': 1.0 / r, 'accuracy': 0.25 * r,
                     'num_examples': 40},
           'privacy': {'epsilon': 0.5 * r, 'delta': 1e-5,
                       'accountant': 'rdp'},
           'failures': [{'pod': 'edge-1', 'error': 'x'}] * (r - 1),
           'network': {'coordinator_bytes_sent': 1000 * r,
                       'edge_server_bytes_received': 5000 * r}}
          for r in (1, 2, 3)]


class TrackingTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.out = self.create_tempdir().full_path
    self.model = os.path.join(self.out, 'model')
    os.makedirs(os.path.join(self.model, 'variables'))
    with open(os.path.join(self.model, 'saved_model.pb'), 'wb') as f:
      f.write(b'model')
    self.summary = os.path.join(self.out, 'summary.json')
    with open(self.summary, 'w') as f:
      json.dump({'final_eval': {'accuracy': 0.75}}, f)

  def _track(self, names, rows, resume=False, **params):
    trackers = tracking.build(names, self.out, {'rounds': 3, **params},
                              project='fedml', run_name='', resume=resume)
    for row in rows:
      trackers.log_round(row)
    trackers.close(artifacts=[self.model, self.summary])

  def test_mlflow_file_store_holds_params_metrics_and_artifacts(self):
    from mlflow.tracking import MlflowClient  # pylint: disable=g-import-not-at-top
    self._track(['tensorboard', 'mlflow'], _rows(), aggregator='dp_fixed')
    self.assertFalse(os.path.exists(os.path.join(self.out, 'wandb')))
    metrics = tracking.read_mlflow_metrics(self.out)
    self.assertEqual(metrics['privacy/epsilon'], [(1, 0.5), (2, 1.0),
                                                  (3, 1.5)])
    self.assertEqual(metrics['failures'], [(1, 0.0), (2, 1.0), (3, 2.0)])
    self.assertEqual(metrics['network/edge_server_bytes_received'],
                     [(1, 5000.0), (2, 10000.0), (3, 15000.0)])
    self.assertEqual(metrics['train/loss'][2], (3, 1.0 / 3))
    self.assertEqual([s for s, _ in metrics['round_seconds']], [1, 2, 3])

    client = MlflowClient(tracking_uri='file:' + os.path.join(self.out,
                                                               'mlruns'))
    experiment = client.get_experiment_by_name('fedml')
    (run,) = client.search_runs([experiment.experiment_id])
    self.assertEqual(run.data.params, {'rounds': '3',
                                       'aggregator': 'dp_fixed'})
    self.assertEqual(run.info.run_name, os.path.basename(self.out))
    self.assertEqual(run.info.status, 'FINISHED')
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    self.assertEqual(artifacts, {'model', 'summary.json'})
    model_files = {a.path for a in client.list_artifacts(run.info.run_id,
                                                         'model')}
    self.assertIn('model/saved_model.pb', model_files)

  def test_mlflow_resume_continues_the_run(self):
    from mlflow.tracking import MlflowClient  # pylint: disable=g-import-not-at-top
    rows = _rows()
    self._track(['mlflow'], rows[:2])
    self._track(['mlflow'], rows[2:], resume=True)
    client = MlflowClient(tracking_uri='file:' + os.path.join(self.out,
                                                               'mlruns'))
    runs = client.search_runs(
        [client.get_experiment_by_name('fedml').experiment_id])
    self.assertLen(runs, 1)
    self.assertEqual(tracking.read_mlflow_metrics(self.out)['privacy/epsilon'],
                     [(1, 0.5), (2, 1.0), (3, 1.5)])

  def test_wandb_offline_run_holds_params_metrics_and_artifacts(self):
    self._track(['wandb'], _rows(), aggregator='secagg')
    self.assertFalse(os.path.exists(os.path.join(self.out, 'mlruns')))
    (run_file,) = glob.glob(os.path.join(self.out, 'wandb',
                                         'offline-run-*', 'run-*.wandb'))
    run = tracking.read_wandb_offline_run(run_file)
    self.assertEqual(run['run'].project, 'fedml')
    self.assertEqual(run['run'].display_name, os.path.basename(self.out))
    self.assertEqual(run['config']['aggregator'], 'secagg')
    self.assertEqual(run['config']['rounds'], 3)
    history = run['history']
    self.assertEqual([h['_step'] for h in history], [1, 2, 3])
    self.assertEqual([h['privacy/epsilon'] for h in history], [0.5, 1.0, 1.5])
    self.assertEqual([h['failures'] for h in history], [0, 1, 2])
    self.assertEqual([h['network/coordinator_bytes_sent'] for h in history],
                     [1000, 2000, 3000])
    artifacts = {name: (kind, files) for name, kind, files in run['artifacts']}
    self.assertEqual(artifacts['model'][0], 'model')
    self.assertIn('saved_model.pb', artifacts['model'][1])
    self.assertEqual(artifacts['summary_json'],
                     ('result', ['summary.json']))

  def test_wandb_resume_keeps_the_run_id(self):
    rows = _rows()
    self._track(['wandb'], rows[:2])
    with open(os.path.join(self.out, 'wandb', 'run_id')) as f:
      first = f.read()
    time.sleep(1.1)  # W&B names run folders by the second.
    self._track(['wandb'], rows[2:], resume=True)
    with open(os.path.join(self.out, 'wandb', 'run_id')) as f:
      self.assertEqual(f.read(), first)
    run_files = sorted(glob.glob(os.path.join(
        self.out, 'wandb', 'offline-run-*', f'run-{first}.wandb')))
    self.assertLen(run_files, 2)
    steps = [h['_step'] for path in run_files
             for h in tracking.read_wandb_offline_run(path)['history']]
    self.assertEqual(steps, [1, 2, 3])

  def test_a_missing_package_is_a_user_error(self):
    # As if wandb were not installed: importing it fails.
    with mock.patch.dict(sys.modules, {'wandb': None}):
      with self.assertRaisesRegex(UserError, '--tracking=wandb needs the '
                                  'wandb package'):
        tracking.build(['wandb'], self.out, {}, 'p', 'n', False)

  def test_nothing_for_tensorboard_alone(self):
    trackers = tracking.build(['tensorboard'], self.out, {}, 'p', 'n', False)
    self.assertEqual(trackers.trackers, [])
    trackers.close()


if __name__ == '__main__':
  absltest.main()
