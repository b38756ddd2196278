import os
import shutil
import tempfile

from absl.testing import absltest
import numpy as np
import tensorflow_federated as tff

from tff_pipeline.learning import checkpoint
from data_prep.errors import UserError


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
