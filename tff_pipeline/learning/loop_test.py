import dataclasses
import json
import math
import os
import shutil
import tempfile

from absl.testing import absltest
import dp_accounting
from dp_accounting import rdp
import numpy as np
import tensorflow as tf

from tests import testutil
from workers import local_runtime as runtime
from data_prep.errors import UserError
from tff_pipeline import plan
from tff_pipeline import api
from tff_pipeline.learning import algorithms
from tff_pipeline.learning import loop
from tff_pipeline.learning import sampling
from workers import coordinator as distributed


class _RunsInATempDir(absltest.TestCase):
  """Runs on the local runtime, outputs and shard cache in a temp dir."""

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


class TrainingLoopTest(_RunsInATempDir):

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
      # The secret Poisson sample draws nobody with probability 0.5^8 a
      # round; such a round trains nothing and has no clip.
      if row['clients_count']:
        self.assertGreater(row['clip'], 0)
      else:
        self.assertNotIn('clip', row)

  def test_secagg_trains_locally(self):
    result = api.run(self._config('secagg', aggregator='secagg',
                                            rounds=2))
    before = result.rows[0]['train']['loss']
    self.assertTrue(np.isfinite(before))
    self.assertNotIn('privacy', result.rows[0])
    self.assertGreater(result.summary['final_eval']['accuracy'], 0.2)

  def test_secagg_rounds_below_the_threshold_are_skipped_not_released(self):
    # Poisson sampling of 3 expected clients of 10 (seeded: no DP), threshold
    # 3: rounds that draw fewer are refused by the parties and release
    # nothing; the others train.
    result = api.run(self._config('secagg-skip', aggregator='secagg',
                                  num_clients=10, clients_per_round=3,
                                  client_sampling='poisson', rounds=6))
    self.assertEqual([r['round'] for r in result.rows], list(range(1, 7)))
    small = [r for r in result.rows if len(r['clients']) < 3]
    self.assertNotEmpty(small)  # Binomial(10, 0.3) < 3 in some of 6 rounds.
    for row in result.rows:
      if len(row['clients']) < 3:
        self.assertIn('fewer than the minimum 3', row['skipped'])
        self.assertEqual(row['train'], {})
        self.assertNotIn('participants', row)
      else:
        self.assertNotIn('skipped', row)
    # Fewer than the threshold per round is refused before training.
    with self.assertRaisesRegex(UserError, 'below --secagg_threshold=3'):
      api.run(self._config('secagg-two', aggregator='secagg',
                           clients_per_round=2, rounds=1))
    # With 3 per round the same run trains.
    trained = api.run(self._config('secagg-three', aggregator='secagg',
                                   clients_per_round=3, rounds=1))
    self.assertNotIn('skipped', trained.rows[0])
    self.assertEqual(trained.rows[0]['secagg']['threshold'], 2)

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


def _gdp_epsilon(mu: float, delta: float) -> float:
  """Exact epsilon of mu-GDP (Dong, Roth, Su 2019): T Gaussian mechanisms of
  noise multiplier z over the sensitivity are (sqrt(T) / z)-GDP."""
  from scipy import optimize  # pylint: disable=g-import-not-at-top
  from scipy import stats  # pylint: disable=g-import-not-at-top

  def excess(eps):
    return (stats.norm.cdf(-eps / mu + mu / 2) -
            math.exp(eps + stats.norm.logcdf(-eps / mu - mu / 2)) - delta)
  return optimize.brentq(excess, 0.0, mu * mu / 2 + 10 * mu + 50)


class PrivateRunTest(_RunsInATempDir):
  """DP runs: secret sampling, counts not ids, nothing outside the ledger."""

  def _config(self, name, **overrides):
    values = dict(model='lr', num_clients=20, clients_per_round=5, rounds=3,
                  eval_every=1, partition='iid', progress=False,
                  aggregator='dp_fixed', noise_multiplier=1.0,
                  output_dir=os.path.join(self._dir, name))
    values.update(overrides)
    return plan.resolve_config({}, values)

  def _released_bytes(self, output_dir):
    """Every released output of a run (not its checkpoints)."""
    found = {}
    for root, dirs, files in os.walk(output_dir):
      dirs[:] = [d for d in dirs if d != api.CHECKPOINT_DIR]
      for name in files:
        with open(os.path.join(root, name), 'rb') as f:
          found[os.path.relpath(os.path.join(root, name), output_dir)] = (
              f.read())
    return found

  def test_rows_carry_counts_and_no_client_metrics(self):
    result = api.run(self._config('counts'))
    self.assertEqual(result.task.manifest.client_ids(),
                     sorted(result.task.manifest.client_ids()))
    for row in result.rows:
      self.assertNotIn('clients', row)
      self.assertNotIn('participants', row)
      self.assertIsInstance(row['clients_count'], int)
      # Loss, accuracy and example counts are sums over the clients without
      # noise: withheld, not released.
      self.assertEqual(row['train'], {})
      self.assertTrue(row['privacy']['amplified'])
      self.assertIn('accuracy', row['eval'])  # Central test split: released.
    self.assertEqual(result.summary['final_train'], {})
    released = self._released_bytes(self._config('counts').output_dir)
    self.assertIn('metrics.jsonl', released)
    self.assertTrue(any(n.startswith('tensorboard') for n in released))
    for name, content in released.items():
      for client in result.task.manifest.client_ids():
        self.assertNotIn(client.encode(), content, name)
      if name.startswith('tensorboard'):
        self.assertNotIn(b'train/', content, name)
    key = os.path.join(self._dir, 'counts', api.CHECKPOINT_DIR, 'sampler.key')
    self.assertEqual(os.stat(key).st_mode & 0o777, 0o600)

  def test_failures_carry_counts_and_no_ids(self):
    report = distributed.RoundReport(failures=[{
        'pod': 'edge-3', 'kind': 'error', 'clients': ['client_0007', 'c_1'],
        'error': 'cannot read clients/client_0007.tfrecord'}])
    report.participants = ['client_0001']
    sampled = ['client_0001', 'client_0007', 'c_1']
    fields = loop._report_fields(  # pylint: disable=protected-access
        report, -1, sampled)
    self.assertEqual(fields['failures'], [{
        'pod': 'edge-3', 'kind': 'error', 'clients_count': 2,
        'error': 'cannot read clients/<client>.tfrecord'}])
    self.assertEqual(fields['participants_count'], 1)
    self.assertNotIn('participants', fields)
    released = loop._report_fields(  # pylint: disable=protected-access
        report, loop.MAX_LISTED_IDS, sampled)
    self.assertEqual(released['failures'], report.failures)
    self.assertEqual(released['participants'], ['client_0001'])

  def test_sample_is_secret_not_a_function_of_the_seed(self):
    ids = [f'client_{i:03d}' for i in range(200)]
    key = sampling.new_secret_key()

    def draws(config, key):
      schedule = plan.schedule(config, ids, 1, key)
      return [schedule.sample(r) for r in range(1, 11)]

    config = self._config('seeds')
    reseeded = dataclasses.replace(config, seed=12345)
    self.assertEqual(draws(config, key), draws(reseeded, key))
    self.assertNotEqual(draws(config, key),
                        draws(config, sampling.new_secret_key()))
    # Nor is it the seeded sampler's draw.
    self.assertNotEqual(draws(config, key)[0], sampling.sample(
        'poisson', ids, 5, config.seed, 1))
    with self.assertRaisesRegex(ValueError, 'secret key'):
      plan.schedule(config, ids, 1)

  def test_logged_participants_report_the_unamplified_epsilon(self):
    logged = api.run(self._config('logged', log_participants=True))
    for row in logged.rows:
      self.assertIsInstance(row['clients'], list)
      spent = row['privacy']
      self.assertFalse(spent['amplified'])
      self.assertIn('--log_participants', spent['note'])
      # Independent: r Gaussian mechanisms at z = 1 (add/remove, sensitivity
      # C) are sqrt(r)-GDP; accountants bound it from above, PLD closely.
      exact = _gdp_epsilon(math.sqrt(row['round']) / 1.0, 1e-5)
      self.assertBetween(spent['epsilon'], exact * (1 - 1e-6), exact * 1.01)
      # Against the amplified one, from dp-accounting by hand (q = 5/20).
      accountant = rdp.RdpAccountant()
      accountant.compose(dp_accounting.SelfComposedDpEvent(
          dp_accounting.PoissonSampledDpEvent(
              0.25, dp_accounting.GaussianDpEvent(1.0)), row['round']))
      self.assertGreater(spent['epsilon'], accountant.get_epsilon(1e-5))
    self.assertFalse(logged.summary['privacy']['amplified'])

  def test_killed_and_resumed_equals_uninterrupted(self):
    # No noise, so that the model is a function of the samples: a resumed run
    # that drew other clients would end elsewhere.
    full = api.run(self._config('uninterrupted', noise_multiplier=0.0,
                                rounds=4))
    split = os.path.join(self._dir, 'killed')
    shutil.copytree(os.path.join(self._dir, 'uninterrupted'), split)
    # As a kill right after round 2's checkpoint leaves it: states and saved
    # rows through round 2, metrics.jsonl through round 1.
    checkpoints = os.path.join(split, api.CHECKPOINT_DIR)
    for name in ('round_3', 'round_4', 'row_3.json', 'row_4.json'):
      path = os.path.join(checkpoints, name)
      (shutil.rmtree if os.path.isdir(path) else os.remove)(path)
    for name in ('summary.json',):
      os.remove(os.path.join(split, name))
    with open(os.path.join(split, 'metrics.jsonl')) as f:
      first = f.readline()
    with open(os.path.join(split, 'metrics.jsonl'), 'w') as f:
      f.write(first)
    resumed = api.run(self._config('killed', noise_multiplier=0.0, rounds=4,
                                   resume=True))
    self.assertEqual([r['round'] for r in resumed.rows], [3, 4])
    with open(os.path.join(split, 'metrics.jsonl')) as f:
      rows = [json.loads(line) for line in f]
    self.assertEqual([r['round'] for r in rows], [1, 2, 3, 4])
    for got, want in zip(rows, full.rows):
      self.assertEqual(got['clients_count'], want['clients_count'])
      self.assertEqual(got['privacy'], want['privacy'])
      self.assertAlmostEqual(got['eval']['loss'], want['eval']['loss'],
                             places=4)
    for a, b in zip(full.state.global_model_weights.trainable,
                    resumed.state.global_model_weights.trainable):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

  def test_distributed_dp_trains_through_the_secure_round(self):
    config = self._config('ddp', aggregator='distributed_dp',
                          target_epsilon=8.0, clients_per_round=10)
    result = api.run(config)
    spent = [row['privacy'] for row in result.rows]
    self.assertEqual([p['rounds'] for p in spent], [1, 2, 3])
    self.assertEqual(spent[-1]['mechanism'], 'distributed_skellam')
    self.assertLessEqual(spent[-1]['epsilon'], 8.0)
    self.assertGreater(spent[-1]['epsilon'], 7.0)  # Calibrated, not padded.
    self.assertGreater(spent[-1]['epsilon_coordinator'],
                       spent[-1]['epsilon'])
    mechanism = plan.distributed_mechanism(config, 20, 784 * 10 + 10)
    self.assertEqual(spent[-1]['bits'], mechanism.bits)
    self.assertEqual(spent[-1]['noise_multiplier'],
                     mechanism.noise_multiplier)
    for row in result.rows:
      self.assertEqual(row['train'], {})
      self.assertNotIn('clients', row)
      self.assertTrue(np.isfinite(row['eval']['loss']))
    initial = algorithms.initial_state(
        plan.training_process(config, result.task), result.task)
    moved = [np.abs(a - b).max() for a, b in zip(
        initial.global_model_weights.trainable,
        result.state.global_model_weights.trainable)]
    self.assertGreater(max(moved), 0)


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
    # DP runs (limit -1) never list them, however few.
    self.assertEqual(loop.ids_field('clients', ids[:1], -1),
                     {'clients_count': 1})

  def test_report_fields_count_large_lists(self):

    class Report:
      failures = [{'pod': 'edge-1', 'kind': 'timeout',
                   'clients': [f'c{i}' for i in range(150)]},
                  {'pod': 'edge-2', 'kind': 'error', 'clients': ['c7']}]
      pod_seconds = {'edge-1': 1.5}
      participants = [f'c{i}' for i in range(300)]

      def network(self):
        return {'coordinator_sent': 10}

    fields = loop._report_fields(  # pylint: disable=protected-access
        Report(), loop.MAX_LISTED_IDS, Report.participants)
    self.assertEqual(fields['participants_count'], 300)
    self.assertNotIn('participants', fields)
    self.assertEqual(fields['failures'][0]['clients_count'], 150)
    self.assertNotIn('clients', fields['failures'][0])
    self.assertEqual(fields['failures'][1]['clients'], ['c7'])
    self.assertLen(Report.failures[0]['clients'], 150)  # Not modified.

  def test_secagg_summary_names_parties_up_to_the_limit(self):

    class Report:
      failures = []
      pod_seconds = {}
      participants = None

      def __init__(self, parties):
        self.secagg = {'threshold': 7, 'survivors': parties,
                       'dropped': {parties[0]: 'unmask'}}

      def network(self):
        return {}

    few = [f'c{i}' for i in range(100)]
    fields = loop._report_fields(  # pylint: disable=protected-access
        Report(few), loop.MAX_LISTED_IDS, few)
    self.assertEqual(fields['secagg']['survivors'], few)
    many = [f'c{i}' for i in range(101)]
    fields = loop._report_fields(  # pylint: disable=protected-access
        Report(many), loop.MAX_LISTED_IDS, many)
    self.assertEqual(fields['secagg'], {'threshold': 7, 'survivors': 101,
                                        'dropped': {'unmask': 1}})


if __name__ == '__main__':
  absltest.main()
