import os
import shutil
import tempfile

from absl.testing import absltest
import numpy as np

from tests import testutil
from tff_pipeline import algorithms
from tff_pipeline import config as config_lib
from tff_pipeline import recommendation
from tff_pipeline import runtime
from tff_pipeline import tasks
from tff_pipeline import training_loop


class MovieLensFedReconTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls._data = os.path.join(testutil.shared_data_dir(), 'movielens-100k')
    if not os.path.exists(os.path.join(cls._data, 'u.data')):
      raise absltest.SkipTest(f'{cls._data} missing')
    runtime.use_local_runtime(10)
    cls._tmp = tempfile.mkdtemp()

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls._tmp)
    super().tearDownClass()

  def _config(self, name, **overrides):
    values = dict(task='movielens', data_dir=self._data, rounds=3,
                  eval_every=3, progress=False,
                  shard_dir=os.path.join(self._tmp, 'shards'),
                  output_dir=os.path.join(self._tmp, name))
    values.update(overrides)
    return config_lib.resolve({}, values)

  def test_user_embeddings_are_not_in_the_server_state(self):
    config = self._config('state')
    task = tasks.load(config)
    process = algorithms.build_training_process(task, config)
    weights = process.get_model_weights(process.initialize())
    shapes = sorted(np.shape(w) for w in weights.trainable)
    self.assertEqual(shapes, [(1,), (1, 1), (1682, 1),
                              (1682, recommendation.EMBEDDING_DIM)])

  def test_trains_and_evaluates_held_out_users(self):
    result = training_loop.run(self._config('train'))
    final = result.summary['final_eval']
    self.assertCountEqual(final, ['loss', 'rmse', 'accuracy'])
    self.assertLess(final['rmse'], 1.3)
    self.assertBetween(final['accuracy'], 0.2, 1.0)
    by_user = [d for d in os.listdir(self._tmp) if 'eval-by-user' in d]
    self.assertLen(by_user, 1)
    # u1.test covers 459 users, each with training ratings in u1.base.
    self.assertLen(os.listdir(os.path.join(self._tmp, by_user[0], 'clients')),
                   459)


if __name__ == '__main__':
  absltest.main()
