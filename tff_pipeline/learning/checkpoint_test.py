import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import yaml

from absl.testing import absltest
import numpy as np
import tensorflow_federated as tff

from data_prep.errors import UserError
from tests import testutil
from tff_pipeline.learning import checkpoint


def _coordinator_script() -> str:
  """The coordinator container's shell script from k8s/base/coordinator.yaml."""
  path = os.path.join(testutil.REPO_ROOT, 'k8s', 'base', 'coordinator.yaml')
  with open(path, encoding='utf-8') as f:
    job = next(d for d in yaml.safe_load_all(f) if d and d['kind'] == 'Job')
  container = job['spec']['template']['spec']['containers'][0]
  return container['command'][2]


def _resume_decision(runs: str) -> str:
  """What the Kubernetes coordinator would run for the run in `runs`."""
  script = _coordinator_script().replace('/runs/', runs + '/')
  # Instead of training: print the arguments it would train with.
  script = re.sub(r'exec python -m tff_pipeline\.train', 'echo train', script)
  return subprocess.run(['sh', '-c', script], env=dict(
      os.environ, RUN_NAME='run'), capture_output=True, text=True,
                        check=True).stdout


def _state(value: float):
  return tff.learning.templates.LearningAlgorithmState(
      global_model_weights=tff.learning.models.ModelWeights(
          trainable=[np.full([2, 3], value, np.float32)], non_trainable=[]),
      distributor=(), client_work=(), aggregator=(),
      finalizer=[np.int64(7)])


class RoundCheckpointsTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self._dir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self._dir)

  def test_save_and_load_latest(self):
    ckpt = checkpoint.RoundCheckpoints(self._dir, keep=2)
    self.assertIsNone(ckpt.latest_round())
    for r in (1, 2, 3):
      ckpt.save(_state(float(r)), r)
    state, round_num = ckpt.load_latest(_state(0.0))
    self.assertEqual(round_num, 3)
    np.testing.assert_array_equal(
        state.global_model_weights.trainable[0], np.full([2, 3], 3.0))
    self.assertEqual(sorted(os.listdir(self._dir)), ['round_2', 'round_3'])

  def test_half_written_temp_folder_is_ignored(self):
    ckpt = checkpoint.RoundCheckpoints(self._dir)
    ckpt.save(_state(1.0), 1)
    os.makedirs(os.path.join(self._dir, 'round_2_temp1234'))  # A crash mid-save.
    self.assertEqual(ckpt.latest_round(), 1)

  def test_no_checkpoint_is_a_user_error(self):
    with self.assertRaisesRegex(UserError, 'no checkpoint'):
      checkpoint.RoundCheckpoints(self._dir).load_latest(_state(0.0))

  def test_temp_folder_of_a_killed_save_is_removed_at_start(self):
    os.makedirs(os.path.join(self._dir, 'round_1_temp4321', 'variables'))
    ckpt = checkpoint.RoundCheckpoints(self._dir)
    self.assertEqual(os.listdir(self._dir), [])
    self.assertIsNone(ckpt.latest_round())

  def test_kill_during_the_first_checkpoint_then_kubernetes_restarts(self):
    # A process saving a large state is SIGKILLed while TFF writes the
    # temporary folder of round 1.
    script = textwrap.dedent(f"""
        import numpy as np, tensorflow_federated as tff
        from tff_pipeline.learning import checkpoint
        state = tff.learning.templates.LearningAlgorithmState(
            global_model_weights=tff.learning.models.ModelWeights(
                trainable=[np.ones([2000, 2000], np.float32)] * 8,
                non_trainable=[]),
            distributor=(), client_work=(), aggregator=(), finalizer=())
        checkpoint.RoundCheckpoints({self._dir!r}).save(state, 1)
        print('saved', flush=True)
        """)
    process = subprocess.Popen([sys.executable, '-c', script],
                               cwd=testutil.REPO_ROOT, stdout=subprocess.PIPE,
                               text=True, env=dict(
                                   os.environ, PYTHONPATH=testutil.REPO_ROOT))
    deadline = time.monotonic() + 120
    while not glob.glob(os.path.join(self._dir, 'round_1_temp*')):
      self.assertIsNone(process.poll(), 'finished before it could be killed')
      self.assertLess(time.monotonic(), deadline)
      time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    self.assertEqual(glob.glob(os.path.join(self._dir, 'round_1')), [])
    self.assertNotEmpty(glob.glob(os.path.join(self._dir, 'round_1_temp*')))
    # The Kubernetes Job's restart: no complete round, so no --resume (which
    # would fail on every restart until backoffLimit); the run starts over.
    runs = tempfile.mkdtemp()
    os.makedirs(os.path.join(runs, 'run'))
    shutil.copytree(self._dir, os.path.join(runs, 'run', 'checkpoints'))
    decision = _resume_decision(runs)
    self.assertIn('train', decision)
    self.assertNotIn('--resume', decision)
    self.assertNotEmpty(glob.glob(os.path.join(runs, 'run.incomplete-*')))
    # With a complete round it resumes.
    ckpt = checkpoint.RoundCheckpoints(os.path.join(runs, 'run', 'checkpoints'))
    ckpt.save(_state(1.0), 1)
    os.makedirs(os.path.join(runs, 'run', 'checkpoints', 'round_2_temp1111'))
    self.assertIn('--resume', _resume_decision(runs))
    self.assertEqual(checkpoint.RoundCheckpoints(
        os.path.join(runs, 'run', 'checkpoints')).latest_round(), 1)

  def test_corrupted_latest_version_falls_back_to_the_previous_one(self):
    ckpt = checkpoint.RoundCheckpoints(self._dir, keep=3)
    for r in (1, 2):
      ckpt.save(_state(float(r)), r)
    for path in glob.glob(os.path.join(self._dir, 'round_2', 'variables',
                                       'variables.data*')):
      with open(path, 'r+b') as f:
        f.truncate(3)
    with self.assertLogs(level='WARNING') as logs:
      state, round_num = ckpt.load_latest(_state(0.0))
    self.assertEqual(round_num, 1)
    np.testing.assert_array_equal(
        state.global_model_weights.trainable[0], np.full([2, 3], 1.0))
    self.assertIn('round_2', '\n'.join(logs.output))

  def test_no_loadable_checkpoint_is_a_user_error(self):
    ckpt = checkpoint.RoundCheckpoints(self._dir)
    ckpt.save(_state(1.0), 1)
    shutil.rmtree(os.path.join(self._dir, 'round_1', 'variables'))
    with self.assertRaisesRegex(UserError, 'no checkpoint .* loads'):
      ckpt.load_latest(_state(0.0))


  def test_rows_are_saved_with_their_state_and_pruned_with_it(self):
    ckpt = checkpoint.RoundCheckpoints(self._dir, keep=2)
    for r in (1, 2, 3):
      ckpt.save(_state(float(r)), r,
                row={'round': r, 'loss': np.float32(0.5), 'n': np.int64(r)})
    self.assertIsNone(ckpt.saved_row(1))
    self.assertEqual(ckpt.saved_row(3), {'round': 3, 'loss': 0.5, 'n': 3})
    self.assertEqual(sorted(os.listdir(self._dir)),
                     ['round_2', 'round_3', 'row_2.json', 'row_3.json'])
    self.assertEqual(ckpt.latest_round(), 3)  # Row files are not versions.

  def test_sampler_key_is_secret_and_kept(self):
    ckpt = checkpoint.RoundCheckpoints(self._dir)
    key = ckpt.sampler_key(create=True)
    self.assertLen(key, 32)
    path = os.path.join(self._dir, checkpoint.SAMPLER_KEY_FILE)
    self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
    self.assertEqual(checkpoint.RoundCheckpoints(self._dir).sampler_key(
        create=False), key)
    # A new run makes a new key.
    self.assertNotEqual(ckpt.sampler_key(create=True), key)

  def test_resuming_without_the_key_is_a_user_error(self):
    with self.assertRaisesRegex(UserError, 'sampler key.*another --output_dir'):
      checkpoint.RoundCheckpoints(self._dir).sampler_key(create=False)

if __name__ == '__main__':
  absltest.main()
