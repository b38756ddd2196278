"""FedML's example configs train as they are, privacy intent included.

Each config has the structure of one of FedML's own examples (FedML-AI/FedML
python/examples/federate/: cross_silo/grpc_fedavg_mnist_lr_example,
cross_silo/light_sec_agg_example, privacy/mqtt_s3_fedavg_cdp_mnist_lr_example,
cross_device/mqtt_s3_fedavg_mnist_lr_example; tests/fedml_examples.py),
with tiny sizes and data_cache_dir pointing
at a small learnable MNIST written here as idx files. Each runs the real CLI
in a child whose stderr is a pipe (no terminal), as under `kubectl logs`:

- it trains; the resolved config holds the privacy intent (secagg, DP
  calibrated to the example's epsilon and delta);
- the FedML machinery keys are named in one warning, printed once;
- stderr has one progress line per round with loss, accuracy, epsilon and
  seconds, equal to metrics.jsonl;
- enable_wandb and --tracking=mlflow,wandb leave an MLflow run and a W&B
  offline run holding every round's metrics (epsilon included).
"""

from __future__ import annotations

from concurrent import futures
import glob
import json
import os
import re
import shutil
import tempfile

from absl.testing import absltest

from data_prep import idx
from tests import fedml_examples as examples
from tests import testutil
from tff_pipeline.learning import tracking

_TIMEOUT = 900
# A progress line, as tff_pipeline.learning.progress writes it without a
# terminal.
_LINE = re.compile(r'^round (\d+)/(\d+)  loss (\S+)  acc (\S+)(.*)  (\S+)s  '
                   r'ETA \S+$')
# DP runs withhold the clients' training metrics.
_DP_LINE = re.compile(r'^round (\d+)/(\d+)  (train metrics withheld \(DP\)|'
                      r'no client sampled)()(.*)  (\S+)s  ETA \S+$')


def _shrink(text: str, **values) -> str:
  """The example with some `key: value` lines changed (sizes, paths)."""
  for key, value in values.items():
    text, count = re.subn(rf'(\n\s+{key}:)[^\n]*', rf'\g<1> {value}', text)
    assert count >= 1, key
  return text


class FedmlConfigsTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp(dir=os.environ.get('TEST_TMPDIR'))
    cls.data = os.path.join(cls.tmp, 'mnist')
    os.makedirs(cls.data)
    for stem, n, seed in (('train', 600, 0), ('t10k', 200, 1)):
      images, labels = testutil.synthetic_images(n, seed=seed)
      idx.write_idx(os.path.join(cls.data, f'{stem}-images-idx3-ubyte.gz'),
                    images)
      idx.write_idx(os.path.join(cls.data, f'{stem}-labels-idx1-ubyte.gz'),
                    labels.astype('uint8'))
    configs = {
        'cross_silo': _shrink(
            examples.CROSS_SILO_MNIST_LR, data_cache_dir=cls.data,
            client_num_in_total=10, comm_round=3, enable_wandb='true'),
        'lightsecagg': _shrink(examples.LIGHTSECAGG, data_cache_dir=cls.data,
                               client_num_in_total=10,
                               client_num_per_round=3),
        'central_dp': _shrink(examples.CENTRAL_DP, data_cache_dir=cls.data,
                              client_num_in_total=20,
                              client_num_per_round=4, comm_round=3),
        'cross_device': _shrink(examples.CROSS_DEVICE_MNIST_LR,
                                data_cache_dir=cls.data),
    }
    flags = {'central_dp': ('--tracking=tensorboard,mlflow,wandb',)}
    env = {'TFF_PIPELINE_CACHE': os.path.join(cls.tmp, 'cache')}
    cls.results = {}
    with futures.ThreadPoolExecutor(max_workers=2) as pool:
      for name, text in configs.items():
        path = os.path.join(cls.tmp, f'{name}.yaml')
        with open(path, 'w', encoding='utf-8') as f:
          f.write(text)
        out = os.path.join(cls.tmp, name)
        cls.results[name] = (out, pool.submit(
            testutil.run_module, 'tff_pipeline.train', f'--config={path}',
            f'--output_dir={out}', *flags.get(name, ()), env=env,
            timeout=_TIMEOUT))
      cls.results = {n: (out, f.result())
                     for n, (out, f) in cls.results.items()}

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def _run(self, name):
    out, result = self.results[name]
    self.assertEqual(result.returncode, 0,
                     f'{name}:\n{result.stderr[-3000:]}')
    with open(os.path.join(out, 'summary.json'), encoding='utf-8') as f:
      summary = json.load(f)
    with open(os.path.join(out, 'metrics.jsonl'), encoding='utf-8') as f:
      rows = [json.loads(line) for line in f]
    return out, result.stderr, summary['config'], rows

  def test_every_example_trains(self):
    rounds = {'cross_silo': 3, 'lightsecagg': 2, 'central_dp': 3,
              'cross_device': 3}
    for name, count in rounds.items():
      with self.subTest(name):
        _, _, config, rows = self._run(name)
        self.assertEqual((config['task'], config['model'], config['rounds']),
                         ('mnist', 'lr', count))
        self.assertEqual([r['round'] for r in rows], list(range(1, count + 1)))
        self.assertIn('eval', rows[-1])

  def test_plain_fedavg_learns(self):
    _, _, config, rows = self._run('cross_silo')
    self.assertEqual(config['aggregator'], 'mean')
    # Chance is 0.1 on the synthetic digits.
    self.assertGreater(rows[-1]['eval']['accuracy'], 0.3)

  def test_lightsecagg_trains_with_secure_aggregation(self):
    _, _, config, rows = self._run('lightsecagg')
    self.assertEqual((config['aggregator'], config['algorithm']),
                     ('secagg', 'fedavg'))
    self.assertTrue(all(len(r['clients']) == 3 for r in rows))

  def test_central_dp_is_calibrated_to_the_examples_epsilon(self):
    _, _, config, rows = self._run('central_dp')
    self.assertEqual((config['aggregator'], config['target_epsilon'],
                      config['delta'], config['client_sampling']),
                     ('dp_fixed', 0.5, 0.1, 'poisson'))
    epsilons = [r['privacy']['epsilon'] for r in rows]
    self.assertEqual(epsilons, sorted(epsilons))
    self.assertLessEqual(epsilons[-1], 0.5)
    # The noise is calibrated with the RDP accountant: by it, the last round
    # spends the budget (the PLD accountant may report less).
    self.assertBetween(rows[-1]['privacy']['epsilon_rdp'], 0.45, 0.5 + 1e-9)
    self.assertGreater(rows[-1]['privacy']['noise_multiplier'], 0.5)

  def test_one_warning_printed_once(self):
    for name in self.results:
      with self.subTest(name):
        _, stderr, _, _ = self._run(name)
        warnings = [l for l in stderr.splitlines() if l.startswith('warning:')]
        self.assertLen(warnings, 1, stderr)
        for key in ('common_args.training_type', 'device_args.using_gpu',
                    'comm_args.backend', 'model_args.global_model_file_path',
                    'train_args.client_id_list'):
          self.assertEqual(stderr.count(key), 1, f'{key}:\n{stderr}')

  def test_one_progress_line_per_round_without_a_terminal(self):
    for name in self.results:
      with self.subTest(name):
        _, stderr, _, rows = self._run(name)
        private = 'privacy' in rows[0]
        pattern = _DP_LINE if private else _LINE
        lines = [pattern.match(l) for l in stderr.splitlines()
                 if l.startswith('round ')]
        self.assertLen(lines, len(rows), stderr)
        for line, row in zip(lines, rows):
          self.assertIsNotNone(line, stderr)
          self.assertEqual(int(line.group(1)), row['round'])
          self.assertEqual(int(line.group(2)), len(rows))
          if private:
            self.assertEqual(row['train'], {})
            self.assertEqual(line.group(3) == 'no client sampled',
                             row.get('participants_count', 0) == 0)
          else:
            self.assertEqual(line.group(3), f'{row["train"]["loss"]:.4f}')
            self.assertEqual(line.group(4),
                             f'{row["train"]["accuracy"]:.4f}')
          if 'privacy' in row:
            self.assertIn(f'eps {row["privacy"]["epsilon"]:.3f}',
                          line.group(5))
          self.assertAlmostEqual(
              float(line.group(6)),
              row['round_seconds'] + row.get('eval_seconds', 0.0), delta=0.06)

  def test_enable_wandb_leaves_an_offline_wandb_run(self):
    out, _, config, rows = self._run('cross_silo')
    self.assertEqual((config['tracking'], config['wandb_project'],
                      config['wandb_name']),
                     ('tensorboard,wandb', 'fedml',
                      'fedml_torch_fedavg_mnist_lr'))
    (run_file,) = glob.glob(os.path.join(out, 'wandb', 'offline-run-*',
                                         'run-*.wandb'))
    run = tracking.read_wandb_offline_run(run_file)
    self.assertEqual((run['run'].project, run['run'].display_name),
                     ('fedml', 'fedml_torch_fedavg_mnist_lr'))
    self.assertEqual([h['train/loss'] for h in run['history']],
                     [r['train']['loss'] for r in rows])
    self.assertEqual(run['history'][-1]['eval/accuracy'],
                     rows[-1]['eval']['accuracy'])
    self.assertFalse(os.path.exists(os.path.join(out, 'mlruns')))

  def test_mlflow_and_wandb_hold_epsilon_per_round(self):
    out, _, _, rows = self._run('central_dp')
    epsilons = [(r['round'], r['privacy']['epsilon']) for r in rows]
    mlflow_metrics = tracking.read_mlflow_metrics(out)
    self.assertEqual(mlflow_metrics['privacy/epsilon'], epsilons)
    # DP runs withhold training metrics (statistics of clients' data
    # outside epsilon); the central evaluation is released.
    self.assertNotIn('train/loss', mlflow_metrics)
    self.assertEqual([r['train'] for r in rows], [{}] * len(rows))
    self.assertEqual([v for _, v in mlflow_metrics['eval/accuracy']],
                     [r['eval']['accuracy'] for r in rows if 'eval' in r])
    (run_file,) = glob.glob(os.path.join(out, 'wandb', 'offline-run-*',
                                         'run-*.wandb'))
    history = tracking.read_wandb_offline_run(run_file)['history']
    self.assertEqual([(h['_step'], h['privacy/epsilon']) for h in history],
                     epsilons)
    self.assertNotEmpty(glob.glob(os.path.join(out, 'tensorboard', 'events*')))

  def test_report_plots_each_run_and_compares_them(self):
    outs = {name: self._run(name)[0] for name in self.results}
    compare = os.path.join(self.tmp, 'comparison')
    result = testutil.run_module('tff_pipeline.report', *outs.values(),
                                 f'--out_dir={compare}', timeout=_TIMEOUT)
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    written = set(result.stdout.split())
    for name, out in outs.items():
      for plot in ('accuracy', 'loss', 'round_seconds'):
        self.assertIn(os.path.join(out, f'{plot}.png'), written)
      self.assertEqual(os.path.join(out, 'epsilon.png') in written,
                       name == 'central_dp', name)
    for plot in ('accuracy', 'loss', 'round_seconds', 'epsilon'):
      path = os.path.join(compare, f'compare_{plot}.png')
      self.assertIn(path, written)
      with open(path, 'rb') as f:
        self.assertEqual(f.read(8), b'\x89PNG\r\n\x1a\n')


class FedmlConfigErrorsTest(absltest.TestCase):

  def test_what_we_cannot_honour_is_one_error_line_and_exit_2(self):
    tmp = self.create_tempdir().full_path
    cases = {
        'ldp': (examples.CENTRAL_DP.replace('dp_solution_type: cdp',
                                            'dp_solution_type: ldp'),
                'dp_args.dp_solution_type=ldp'),
        'section': (examples.CROSS_SILO_MNIST_LR.replace(
            'environment_args:', 'enviroment_args:'), "'enviroment_args'"),
        # FedML's LightSecAgg example samples 2 clients a round; SecAgg+
        # releases no sum over fewer than 3 parties by default.
        'secagg_pair': (examples.LIGHTSECAGG, 'client_num_per_round'),
    }
    with futures.ThreadPoolExecutor(max_workers=2) as pool:
      results = {}
      for name, (text, _) in cases.items():
        path = os.path.join(tmp, f'{name}.yaml')
        with open(path, 'w', encoding='utf-8') as f:
          f.write(text)
        results[name] = pool.submit(
            testutil.run_module, 'tff_pipeline.train', f'--config={path}',
            f'--output_dir={tmp}/{name}', timeout=_TIMEOUT)
      for name, (_, mention) in cases.items():
        with self.subTest(name):
          result = results[name].result()
          self.assertEqual(result.returncode, 2, result.stderr)
          lines = [l for l in result.stderr.splitlines() if l.strip()]
          # A key the YAML names: the file; a value out of range: the flag.
          self.assertStartsWith(lines[-1], 'error: config file ' if (
              name != 'secagg_pair') else 'error: --clients_per_round=2 ')
          self.assertIn(mention, lines[-1])
          self.assertNotIn('Traceback', result.stderr)


if __name__ == '__main__':
  absltest.main()
