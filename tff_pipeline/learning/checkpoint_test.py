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


if __name__ == '__main__':
  absltest.main()
