"""End-to-end tests of `python -m tff_pipeline.train` as a user runs it.

Every training run is the real CLI in a child Python (real Fashion-MNIST from
/usr/share/datasets, the local TFF C++ worker), with its shards, cache and
outputs in a per-test temporary folder. Independent runs go two at a time
(the machine has 2 cores and a child spends ~5 s importing TensorFlow).

Under Bazel the children import the runfiles copies of the modules
(testutil.REPO_ROOT is the runfiles root), so tests/BUILD lists every module
they run as a dep.
"""

from __future__ import annotations

from concurrent import futures
import glob
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable, Optional
import unittest

from absl.testing import absltest
import numpy as np

from data_prep import idx
from data_prep import image_datasets
from tests import testutil

_TIMEOUT = 600
_PARALLEL = 2
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# The contract of test (a): three rounds of logistic regression.
_SMALL = ('--num_clients=10', '--clients_per_round=3', '--rounds=3',
          '--model=lr', '--eval_every=2', '--progress=false')
_FASHION_FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}

FEDML_YAML = """\
common_args:
  training_type: "simulation"
  random_seed: 3
data_args:
  dataset: "fashion_mnist"
  partition_method: "hetero"
  partition_alpha: 0.5
model_args:
  model: "lr"
train_args:
  federated_optimizer: "FedAvg"
  client_num_in_total: 10
  client_num_per_round: 2
  comm_round: 2
  epochs: 1
  batch_size: 20
  client_optimizer: sgd
  learning_rate: 0.1
validation_args:
  frequency_of_the_test: 1
device_args:
  using_gpu: false
  gpu_mapping_file: config/gpu_mapping.yaml
comm_args:
  backend: "MPI"
tracking_args:
  enable_wandb: false
"""
# Deployment keys of FEDML_YAML that the warning must name.
# (enable_wandb: false is honoured, not ignored: no W&B run.)
_IGNORED_KEYS = ('common_args.training_type', 'device_args.using_gpu',
                 'device_args.gpu_mapping_file', 'comm_args.backend')


def _rows(output_dir: str) -> list[dict]:
  with open(os.path.join(output_dir, 'metrics.jsonl'), encoding='utf-8') as f:
    return [json.loads(line) for line in f]


def _summary(output_dir: str) -> dict:
  with open(os.path.join(output_dir, 'summary.json'), encoding='utf-8') as f:
    return json.load(f)


def _tail(text: str, lines: int = 30) -> str:
  return '\n'.join(text.splitlines()[-lines:])


def _stat(pid: int) -> Optional[tuple[str, int]]:
  """(state, parent pid) of a process, or None if it is gone."""
  try:
    with open(f'/proc/{pid}/stat', encoding='utf-8') as f:
      # The command name may hold spaces and parentheses; it ends at the
      # last ')'.
      fields = f.read().rsplit(')', 1)[1].split()
  except (FileNotFoundError, ProcessLookupError):
    return None
  return fields[0], int(fields[1])


def _live_workers() -> dict[int, int]:
  """{pid: parent pid} of every running TFF worker_binary (zombies excluded)."""
  workers = {}
  for entry in os.listdir('/proc'):
    if not entry.isdigit():
      continue
    try:
      with open(f'/proc/{entry}/cmdline', 'rb') as f:
        argv0 = f.read().split(b'\0', 1)[0]
    except OSError:
      continue
    if os.path.basename(argv0) != b'worker_binary':
      continue
    stat = _stat(int(entry))
    if stat is not None and stat[0] != 'Z':
      workers[int(entry)] = stat[1]
  return workers


def _child_env(extra: dict[str, str]) -> dict[str, str]:
  """The environment testutil.run_module gives its children."""
  env = dict(os.environ)
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  env['PYTHONPATH'] = testutil.REPO_ROOT + os.pathsep + env.get('PYTHONPATH', '')
  env.update(extra)
  return env


@unittest.skipUnless(
    os.path.isdir(testutil.FASHION_MNIST_DIR),
    f'needs Fashion-MNIST in {testutil.FASHION_MNIST_DIR} '
    '(apt-get install dataset-fashion-mnist)')
class TrainCliTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    # Under Bazel, inside the test's own TEST_TMPDIR (tempfile alone would
    # use /tmp: Bazel 4 does not set TMPDIR for tests).
    self._tmp = tempfile.mkdtemp(dir=os.environ.get('TEST_TMPDIR'))
    self.addCleanup(shutil.rmtree, self._tmp, ignore_errors=True)
    # Default shard folders (and anything else cached) stay in this test.
    self._env = {'TFF_PIPELINE_CACHE': self._path('cache')}

  def _path(self, *parts: str) -> str:
    return os.path.join(self._tmp, *parts)

  def _run(self, module: str, *args: str) -> subprocess.CompletedProcess:
    return testutil.run_module(module, *args, env=self._env, timeout=_TIMEOUT)

  def _train(self, *args: str) -> subprocess.CompletedProcess:
    return self._run('tff_pipeline.train', *args)

  def _start_train(self, log_name: str, *args: str) -> subprocess.Popen:
    """Starts the trainer without waiting; its output goes to a log file."""
    log = open(self._path(log_name), 'w', encoding='utf-8')
    self.addCleanup(log.close)
    process = subprocess.Popen(
        [sys.executable, '-m', 'tff_pipeline.train', *args],
        cwd=testutil.REPO_ROOT, env=_child_env(self._env),
        stdout=log, stderr=subprocess.STDOUT)

    def reap():
      if process.poll() is None:
        process.kill()
      process.wait()

    self.addCleanup(reap)
    return process

  def _log(self, log_name: str) -> str:
    with open(self._path(log_name), encoding='utf-8') as f:
      return _tail(f.read())

  def _in_parallel(self, *calls: Callable[[], subprocess.CompletedProcess]
                   ) -> list[subprocess.CompletedProcess]:
    with futures.ThreadPoolExecutor(max_workers=_PARALLEL) as pool:
      return [f.result() for f in [pool.submit(c) for c in calls]]

  def _assert_ok(self, result: subprocess.CompletedProcess) -> None:
    self.assertEqual(result.returncode, 0,
                     f'{result.args} failed:\n{_tail(result.stderr)}')

  def _assert_user_error(self, result: subprocess.CompletedProcess,
                         *mentions: str) -> None:
    """Exit 2, no traceback, and a last line `error: ...` naming `mentions`."""
    context = f'{result.args}:\n{_tail(result.stderr)}'
    self.assertEqual(result.returncode, 2, context)
    self.assertNotIn('Traceback', result.stderr, context)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    self.assertNotEmpty(lines, context)
    self.assertStartsWith(lines[-1], 'error: ', context)
    for mention in mentions:
      self.assertIn(mention, lines[-1], context)

  # (a) ---------------------------------------------------------------------

  def test_outputs_report_and_refusal_to_overwrite(self):
    out = self._path('run')
    result = self._train(*_SMALL, f'--shard_dir={self._path("shards")}',
                         f'--output_dir={out}')
    self._assert_ok(result)

    rows = _rows(out)
    self.assertEqual([r['round'] for r in rows], [1, 2, 3])
    for row in rows:
      self.assertIs(type(row['round']), int)
      self.assertIs(type(row['round_seconds']), float)
      self.assertGreater(row['round_seconds'], 0)
      self.assertLen(row['clients'], 3)
      self.assertIs(type(row['train']['loss']), float)
      self.assertIs(type(row['train']['accuracy']), float)
      self.assertBetween(row['train']['accuracy'], 0.0, 1.0)
    # Every --eval_every=2 rounds, and always after the last round.
    self.assertEqual([r['round'] for r in rows if 'eval' in r], [2, 3])
    for row in rows[1:]:
      self.assertCountEqual(row['eval'], ['loss', 'accuracy'])
      self.assertTrue(math.isfinite(row['eval']['loss']))
      self.assertGreater(row['eval']['loss'], 0.0)
      self.assertBetween(row['eval']['accuracy'], 0.0, 1.0)
    # Chance is 0.1; untrained or no-op training stays near it.
    self.assertGreater(rows[-1]['eval']['accuracy'], 0.3)

    summary = _summary(out)
    self.assertEqual(summary['final_eval'], rows[-1]['eval'])
    config = summary['config']
    expected = {'task': 'fashion_mnist', 'model': 'lr', 'num_clients': 10,
                'clients_per_round': 3, 'rounds': 3, 'eval_every': 2,
                'progress': False, 'output_dir': out,
                'shard_dir': self._path('shards')}
    self.assertEqual({k: config[k] for k in expected}, expected)
    # The full resolved config: defaults for everything not given.
    self.assertEqual((config['partition'], config['algorithm'],
                      config['client_batch_size']), ('dirichlet', 'fedavg', 20))
    self.assertEqual(summary['versions']['tensorflow_federated'], '0.87.0')
    self.assertGreater(summary['wall_seconds'], 0)

    events = glob.glob(os.path.join(out, 'tensorboard', 'events.out.tfevents*'))
    self.assertNotEmpty(events)
    event_bytes = b''
    for path in events:
      with open(path, 'rb') as f:
        event_bytes += f.read()
    for tag in (b'train/loss', b'train/accuracy', b'eval/accuracy'):
      self.assertIn(tag, event_bytes)
    self.assertTrue(os.path.isdir(os.path.join(out, 'checkpoints', 'round_3')))

    # The report, and a second run into the same folder without --resume.
    report, again = self._in_parallel(
        lambda: self._run('tff_pipeline.report', out),
        lambda: self._train(*_SMALL, f'--shard_dir={self._path("shards")}',
                            f'--output_dir={out}'))
    self._assert_ok(report)
    for name in ('accuracy.png', 'loss.png'):
      path = os.path.join(out, name)
      self.assertIn(path, report.stdout)
      with open(path, 'rb') as f:
        data = f.read()
      self.assertEqual(data[:8], _PNG_SIGNATURE, name)
      self.assertGreater(len(data), 5000, name)
    self._assert_user_error(again, '--resume', out)
    self.assertEqual(_rows(out), rows, 'the refused run touched metrics.jsonl')

  # (b) ---------------------------------------------------------------------

  def test_fedml_yaml_config_and_flag_override(self):
    path = self._path('fedml_config.yaml')
    with open(path, 'w', encoding='utf-8') as f:
      f.write(FEDML_YAML)
    from_yaml, overridden = self._path('yaml_run'), self._path('override')
    yaml_result, override_result = self._in_parallel(
        # Progress stays on (the default): piped, it prints plain lines.
        lambda: self._train(f'--config={path}', f'--output_dir={from_yaml}',
                            f'--shard_dir={self._path("shards_a")}'),
        lambda: self._train(f'--config={path}', f'--output_dir={overridden}',
                            f'--shard_dir={self._path("shards_b")}',
                            '--rounds=1', '--progress=false'))
    self._assert_ok(yaml_result)
    self._assert_ok(override_result)

    warnings = [line for line in yaml_result.stderr.splitlines()
                if line.startswith('warning:')]
    self.assertLen(warnings, 1, yaml_result.stderr)
    for key in _IGNORED_KEYS:
      self.assertIn(key, warnings[0])
    # Keys that were used are not reported as ignored.
    for key in ('comm_round', 'client_num_in_total', 'partition_method',
                'learning_rate', 'random_seed', 'enable_wandb'):
      self.assertNotIn(key, warnings[0])

    config = _summary(from_yaml)['config']
    expected = {'seed': 3, 'task': 'fashion_mnist', 'partition': 'dirichlet',
                'partition_alpha': 0.5, 'model': 'lr', 'algorithm': 'fedavg',
                'num_clients': 10, 'clients_per_round': 2, 'rounds': 2,
                'client_epochs': 1, 'client_batch_size': 20,
                'client_optimizer': 'sgd', 'client_learning_rate': 0.1,
                'eval_every': 1}
    self.assertEqual({k: config[k] for k in expected}, expected)
    rows = _rows(from_yaml)
    self.assertEqual([r['round'] for r in rows], [1, 2])
    self.assertEqual([r['round'] for r in rows if 'eval' in r], [1, 2])
    self.assertTrue(all(len(r['clients']) == 2 for r in rows))

    # --rounds=1 beats comm_round: 2; the rest still comes from the YAML.
    self.assertEqual([r['round'] for r in _rows(overridden)], [1])
    config = _summary(overridden)['config']
    self.assertEqual((config['rounds'], config['clients_per_round'],
                      config['seed']), (1, 2, 3))

  # (c) ---------------------------------------------------------------------

  def test_bad_input_is_one_error_line_and_exit_2(self):
    def yaml_file(name, text):
      path = self._path(name)
      with open(path, 'w', encoding='utf-8') as f:
        f.write(text)
      return path

    typo = yaml_file('typo.yaml', 'train_args:\n  comm_rund: 3\n')
    section = yaml_file('section.yaml', 'training_args:\n  comm_round: 3\n')
    # name -> (extra flags, what the error line must mention)
    cases = {
        'task': (['--task=cifar99'], ['cifar99']),
        'model': (['--model=resnet'], ['resnet']),
        'optimizer': (['--client_optimizer=rmsprop'], ['rmsprop']),
        'rounds': (['--rounds=-1'], ['--rounds', '-1']),
        'clients_per_round': (['--clients_per_round=20', '--num_clients=10'],
                              ['--clients_per_round=20', '--num_clients=10']),
        'data_dir': (['--data_dir=/nonexistent/dir'], ['/nonexistent/dir']),
        # The hint names the key meant.
        'yaml_typo': ([f'--config={typo}'], [typo, 'comm_rund', "'comm_round'"]),
        'yaml_section': ([f'--config={section}'], [section, 'training_args']),
    }

    def train(name, *flags):
      return lambda: self._train(*_SMALL, f'--output_dir={self._path(name)}',
                                 f'--shard_dir={self._path("shards_" + name)}',
                                 *flags)

    good_shards = self._path('good_shards')
    with futures.ThreadPoolExecutor(max_workers=_PARALLEL) as pool:
      prepared = pool.submit(
          self._run, 'data_prep.fashion_mnist', f'--output_dir={good_shards}',
          '--num_clients=10', '--partition=iid')
      results = {name: pool.submit(train(name, *flags))
                 for name, (flags, _) in cases.items()}
      self._assert_ok(prepared.result())
      # One shard with a flipped byte mid-file, one cut to half its size.
      for name, client, kind in (('corrupt', 'client_0003', 'corrupt'),
                                 ('truncated', 'client_0007', 'truncated')):
        shard_dir = self._path(f'{name}_shards')
        shutil.copytree(good_shards, shard_dir)
        shard = os.path.join(shard_dir, 'clients', f'{client}.tfrecord')
        size = os.path.getsize(shard)
        if kind == 'corrupt':
          with open(shard, 'r+b') as f:
            f.seek(size // 2)
            byte = f.read(1)
            f.seek(size // 2)
            f.write(bytes([byte[0] ^ 0xFF]))
        else:
          os.truncate(shard, size // 2)
        cases[name] = ([], [shard, kind])
        results[name] = pool.submit(
            self._train, *_SMALL, '--partition=iid',
            f'--shard_dir={shard_dir}', f'--output_dir={self._path(name)}')
      for name, (_, mentions) in cases.items():
        with self.subTest(name):
          self._assert_user_error(results[name].result(), *mentions)
          # Nothing is left behind that would block a corrected rerun.
          for left in ('config.json', 'metrics.jsonl'):
            self.assertFalse(
                os.path.exists(os.path.join(self._path(name), left)), left)

  # (d) ---------------------------------------------------------------------

  def test_resume_after_kill_9_equals_an_uninterrupted_run(self):
    shard_dir = self._path('shards')
    args = ('--model=cnn', '--num_clients=40', '--clients_per_round=2',
            '--rounds=5', '--eval_every=1', '--progress=false',
            f'--shard_dir={shard_dir}')
    killed_dir, reference_dir = self._path('killed'), self._path('reference')
    workers_before = set(_live_workers())

    victim = self._start_train('victim.log', *args, f'--output_dir={killed_dir}')
    reference = None
    round_2 = os.path.join(killed_dir, 'checkpoints', 'round_2')
    deadline = time.monotonic() + _TIMEOUT
    # round_2 appears by rename once complete (it is written as round_2_temp*).
    while not os.path.isdir(round_2):
      if victim.poll() is not None:
        self.fail(f'the run exited ({victim.returncode}) before round 2:\n'
                  + self._log('victim.log'))
      if reference is None and os.path.exists(
          os.path.join(shard_dir, 'manifest.json')):
        # The shards are complete (the folder is renamed into place with its
        # manifest): the uninterrupted run can share them.
        reference = self._start_train('reference.log', *args,
                                      f'--output_dir={reference_dir}')
      self.assertLess(time.monotonic(), deadline, 'no round 2 checkpoint')
      time.sleep(0.05)
    if reference is None:
      reference = self._start_train('reference.log', *args,
                                    f'--output_dir={reference_dir}')

    victim_workers = [pid for pid, parent in _live_workers().items()
                      if parent == victim.pid]
    self.assertLen(victim_workers, 1, 'expected one worker_binary child')
    victim.send_signal(signal.SIGKILL)
    victim.wait()

    def survivors() -> set[int]:
      # The victim's worker, and any new orphan (re-parented to init). Not
      # every new worker: under Bazel other tests run beside this one.
      return {pid for pid, parent in _live_workers().items()
              if pid in victim_workers or (
                  pid not in workers_before and parent in (1, victim.pid))}

    # PR_SET_PDEATHSIG: the kernel kills the worker with its parent (it may
    # stay a zombie if init does not reap it; zombies do not count).
    deadline = time.monotonic() + 10
    while survivors():
      self.assertLess(time.monotonic(), deadline,
                      f'worker_binary {survivors()} outlived its SIGKILLed '
                      f'parent (worker before the kill: {victim_workers})')
      time.sleep(0.1)

    resumed = self._train(*args, f'--output_dir={killed_dir}', '--resume')
    self._assert_ok(resumed)
    self.assertEqual(reference.wait(timeout=_TIMEOUT), 0,
                     self._log('reference.log'))

    resumed_rows, reference_rows = _rows(killed_dir), _rows(reference_dir)
    self.assertEqual([r['round'] for r in resumed_rows], [1, 2, 3, 4, 5])
    self.assertBetween(_summary(killed_dir)['resumed_from_round'], 2, 4)
    self.assertEqual([r['clients'] for r in resumed_rows],
                     [r['clients'] for r in reference_rows])
    for got, want in zip(resumed_rows, reference_rows):
      for group, metric in (('train', 'loss'), ('train', 'accuracy'),
                            ('eval', 'loss'), ('eval', 'accuracy')):
        np.testing.assert_allclose(
            got[group][metric], want[group][metric], rtol=1e-4,
            err_msg=f'round {got["round"]} {group}.{metric}')

    # The final server states hold the same model.
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    states = [tf.train.load_checkpoint(
        os.path.join(d, 'checkpoints', 'round_5', 'variables', 'variables'))
              for d in (killed_dir, reference_dir)]
    names = sorted(n for n in states[1].get_variable_to_shape_map()
                   if 'global_model_weights' in n)
    # The CNN's 4 kernels and 4 biases, and its dropout step (non-trainable).
    self.assertLen(names, 9)
    for name in names:
      np.testing.assert_allclose(states[0].get_tensor(name),
                                 states[1].get_tensor(name), rtol=0,
                                 atol=1e-5, err_msg=name)

  # (e) ---------------------------------------------------------------------

  def test_emnist_task_reads_transposed_emnist_files(self):
    # EMNIST-named idx files made of real Fashion-MNIST images, stored
    # transposed as EMNIST stores them.
    data_dir = self._path('emnist')
    os.makedirs(data_dir)
    originals = {}
    for split, count in (('train', 3000), ('test', 1000)):
      images_file, labels_file = _FASHION_FILES[split]
      images = idx.read_idx(
          os.path.join(testutil.FASHION_MNIST_DIR, images_file))[:count]
      labels = idx.read_idx(
          os.path.join(testutil.FASHION_MNIST_DIR, labels_file))[:count]
      stem = f'emnist-digits-{split}'
      idx.write_idx(os.path.join(data_dir, f'{stem}-images-idx3-ubyte.gz'),
                    images.transpose(0, 2, 1))
      idx.write_idx(os.path.join(data_dir, f'{stem}-labels-idx1-ubyte.gz'),
                    labels)
      originals[split] = images

    # The loader turns them upright again (a Fashion-MNIST image is not
    # symmetric, so a missing transposition would show).
    first = originals['train'][0]
    self.assertFalse(np.array_equal(first, first.T))
    loaded = image_datasets.load_split('emnist', data_dir, 'train')
    self.assertEqual(loaded.num_classes, 10)
    np.testing.assert_array_equal(loaded.images[0], first)

    out, shard_dir = self._path('out'), self._path('shards')
    # iid: a label-skewed split of only 3000 examples learns too slowly for a
    # clear margin in 3 rounds (0.49 with seed 0; iid gives 0.69).
    result = self._train('--task=emnist', f'--data_dir={data_dir}',
                         '--num_clients=10', '--clients_per_round=5',
                         '--partition=iid', '--rounds=3', '--model=lr',
                         '--eval_every=0', '--progress=false',
                         f'--shard_dir={shard_dir}', f'--output_dir={out}')
    self._assert_ok(result)
    summary = _summary(out)
    self.assertEqual((summary['config']['task'],
                      summary['config']['emnist_subset']), ('emnist', 'auto'))
    self.assertGreater(summary['final_eval']['accuracy'], 0.5)

    # What the trainer evaluated on is the upright test split.
    from data_prep import shards  # pylint: disable=g-import-not-at-top
    manifest = shards.load_manifest(shard_dir)
    self.assertEqual(manifest.num_classes, 10)
    held_out = shards.read_numpy(manifest, manifest.eval)
    np.testing.assert_array_equal(held_out['pixels'], originals['test'])


if __name__ == '__main__':
  absltest.main()
