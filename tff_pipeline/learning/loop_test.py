import json
import os
import shutil
import tempfile

from absl.testing import absltest
import numpy as np

from tests import testutil
from workers import local_runtime as runtime
from data_prep.errors import UserError
from tff_pipeline import plan
from tff_pipeline import api
from tff_pipeline.learning import loop


class TrainingLoopTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    runtime.use_local_runtime()
    cls._dir = tempfile.mkdtemp()
    os.environ['TFF_PIPELINE_CACHE'] = os.path.join(cls._dir, 'cache')

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls._dir)
    super().tearDownClass()

  def _config(self, name, **overrides):
    values = dict(model='lr', num_clients=8, clients_per_round=3, rounds=3,
                  eval_every=2, partition='iid', progress=False,
                  output_dir=os.path.join(self._dir, name))
    values.update(overrides)
    return plan.resolve_config({}, values)

  def test_resume_equals_an_uninterrupted_run(self):
    full = api.run(self._config('full'))
    api.run(self._config('split', rounds=2))
    # A crash after round 2's metrics row but before its checkpoint would
    # leave an extra row; fake a torn row for round 3 as well.
    with open(os.path.join(self._dir, 'split', 'metrics.jsonl'), 'a') as f:
      f.write('{"round": 3, "round_sec')
    resumed = api.run(self._config('split', resume=True))
    self.assertEqual([r['round'] for r in resumed.rows], [3])
    self.assertEqual(resumed.summary['resumed_from_round'], 2)
    with open(os.path.join(self._dir, 'split', 'metrics.jsonl')) as f:
      rounds = [json.loads(line)['round'] for line in f]
    self.assertEqual(rounds, [1, 2, 3])
    self.assertEqual(full.rows[2]['clients'], resumed.rows[0]['clients'])
    for a, b in zip(full.state.global_model_weights.trainable,
                    resumed.state.global_model_weights.trainable):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    self.assertAlmostEqual(full.summary['final_eval']['accuracy'],
                           resumed.summary['final_eval']['accuracy'], places=4)

  def test_dp_rows_report_epsilon_spent_so_far(self):
    result = api.run(self._config(
        'dp', aggregator='dp_adaptive', client_sampling='poisson',
        clients_per_round=4, noise_multiplier=0.8, rounds=3))
    spent = [r['privacy'] for r in result.rows]
    self.assertEqual([p['rounds'] for p in spent], [1, 2, 3])
    epsilons = [p['epsilon'] for p in spent]
    self.assertEqual(epsilons, sorted(epsilons))
    self.assertLess(epsilons[0], epsilons[-1])
    self.assertEqual(spent[-1]['delta'], 1e-5)
    self.assertEqual(result.summary['privacy'], spent[-1])
    for row in result.rows:
      self.assertGreater(row['clip'], 0)

  def test_secagg_trains_locally(self):
    result = api.run(self._config('secagg', aggregator='secagg',
                                            rounds=2))
    before = result.rows[0]['train']['loss']
    self.assertTrue(np.isfinite(before))
    self.assertNotIn('privacy', result.rows[0])
    self.assertGreater(result.summary['final_eval']['accuracy'], 0.2)

  def test_eval_rows_and_learning(self):
    result = api.run(self._config('eval', rounds=4, eval_every=2))
    self.assertEqual([('eval' in r) for r in result.rows],
                     [False, True, False, True])
    self.assertGreater(result.summary['final_eval']['accuracy'], 0.5)

  def test_refuses_to_overwrite_a_run(self):
    api.run(self._config('once', rounds=1))
    with self.assertRaisesRegex(UserError, 'already holds a run; pass --resume'):
      api.run(self._config('once', rounds=1))

  def test_resume_with_other_training_flags_is_refused(self):
    api.run(self._config('changed', rounds=1))
    with self.assertRaisesRegex(UserError, r'client_learning_rate: 0.1 -> 0.2'):
      api.run(self._config('changed', rounds=2, resume=True,
                                     client_learning_rate=0.2))



class ShakespeareTrainingTest(absltest.TestCase):

  def test_char_lstm_learns_on_tinyshakespeare(self):
    path = os.path.join(testutil.shared_data_dir(), 'shakespeare',
                        'tinyshakespeare.txt')
    if not os.path.exists(path):
      self.skipTest(f'{path} missing')
    runtime.use_local_runtime(2)
    tmp = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, tmp)
    config = plan.resolve_config({}, dict(
        task='shakespeare', data_dir=path, num_clients=4, clients_per_round=2,
        rounds=2, eval_every=1, progress=False,
        shard_dir=os.path.join(tmp, 'shards'),
        output_dir=os.path.join(tmp, 'out')))
    result = api.run(config)
    # Uniform guessing over 90 ids has loss ln(90) = 4.50.
    self.assertLess(result.summary['final_eval']['loss'], 4.0)
    self.assertGreater(result.summary['final_eval']['accuracy'], 0.1)



class StackOverflowTrainingTest(absltest.TestCase):

  def test_both_tasks_train_with_vocabulary_tables_on_the_worker(self):
    path = os.path.join(testutil.shared_data_dir(), 'stackoverflow-sample',
                        'posts_questions.tsv')
    if not os.path.exists(path):
      self.skipTest(f'{path} missing')
    runtime.use_local_runtime(5)
    tmp = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, tmp)
    for task in ('stackoverflow_tag', 'stackoverflow_nwp'):
      config = plan.resolve_config({}, dict(
          task=task, data_dir=path, rounds=2, eval_every=1, progress=False,
          shard_dir=os.path.join(tmp, 'shards'),
          output_dir=os.path.join(tmp, task)))
      result = api.run(config)
      first, last = result.rows[0]['eval']['loss'], result.rows[-1]['eval']['loss']
      self.assertLess(last, first, task)  # Held-out loss goes down.


class IdsFieldTest(absltest.TestCase):

  def test_lists_up_to_the_limit_then_counts(self):
    self.assertEqual(loop.MAX_LISTED_IDS, 100)
    ids = [f'c{i}' for i in range(101)]
    self.assertEqual(loop.ids_field('clients', ids[:100]),
                     {'clients': ids[:100]})
    self.assertEqual(loop.ids_field('clients', ids), {'clients_count': 101})
    self.assertEqual(loop.ids_field('participants', []), {'participants': []})

  def test_report_fields_count_large_lists(self):

    class Report:
      failures = [{'pod': 'edge-1', 'kind': 'timeout',
                   'clients': [f'c{i}' for i in range(150)]},
                  {'pod': 'edge-2', 'kind': 'error', 'clients': ['c7']}]
      pod_seconds = {'edge-1': 1.5}
      participants = [f'c{i}' for i in range(300)]

      def network(self):
        return {'coordinator_sent': 10}

    fields = loop._report_fields(Report())  # pylint: disable=protected-access
    self.assertEqual(fields['participants_count'], 300)
    self.assertNotIn('participants', fields)
    self.assertEqual(fields['failures'][0]['clients_count'], 150)
    self.assertNotIn('clients', fields['failures'][0])
    self.assertEqual(fields['failures'][1]['clients'], ['c7'])
    self.assertLen(Report.failures[0]['clients'], 150)  # Not modified.


if __name__ == '__main__':
  absltest.main()
