"""MovieLens on the layered runtime: training and evaluation on the pods.

Federated Reconstruction's evaluation rebuilds each user's embedding from the
user's training ratings and scores the user's held-out ratings; both live on
the user's pod, so evaluation runs there too. Training with SecAgg sums the
item updates under the pods' masks. A small MovieLens folder (the first
users of the real 100K files) keeps it quick.
"""

from __future__ import annotations

import os
import shutil
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top
from absl import flags
from absl.testing import absltest
import numpy as np

from data_prep import shards
from tests import testutil
from tff_pipeline.core import config as config_lib
from tff_pipeline.tasks import movielens as recommendation
from workers import local_runtime as runtime
from tff_pipeline.tasks import registry as tasks
from workers import local_cluster
from tff_pipeline import plan
from tff_pipeline import api

_USERS = 40
_PODS, _EDGE_SERVERS = 4, 2


def _small_movielens(target: str) -> str:
  """u.data, u1.base and u1.test of users 1.._USERS of the shared copy."""
  source = os.path.join(testutil.shared_data_dir(), 'movielens-100k')
  if not os.path.exists(os.path.join(source, 'u1.base')):
    raise absltest.SkipTest(f'{source} missing')
  os.makedirs(target)
  for name in ('u.data', 'u1.base', 'u1.test'):
    with open(os.path.join(source, name), encoding='latin-1') as f:
      rows = [line for line in f if int(line.split('\t')[0]) <= _USERS]
    with open(os.path.join(target, name), 'w', encoding='latin-1') as f:
      f.writelines(rows)
  return target


def _weights(result: api.RunResult):
  return [np.asarray(w) for w in result.state.global_model_weights.trainable]


class MovieLensDistributedTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    flags.FLAGS.mark_as_parsed()
    runtime.use_local_runtime(4)
    cls.root = tempfile.mkdtemp(prefix='movielens-e2e-')
    cls.data = _small_movielens(os.path.join(cls.root, 'ml-100k'))
    cls.cluster = local_cluster.LocalCluster(
        plan.load_task(cls._config('unused')).manifest.shard_dir, _PODS,
        _EDGE_SERVERS,
        cluster_dir=os.path.join(cls.root, 'cluster')).start()

  @classmethod
  def tearDownClass(cls):
    cls.cluster.stop()
    shutil.rmtree(cls.root, ignore_errors=True)
    super().tearDownClass()

  @classmethod
  def _config(cls, name: str, **overrides) -> config_lib.TrainConfig:
    values = dict(task='movielens', data_dir=cls.data, clients_per_round=8,
                  rounds=2, eval_every=0, progress=False,
                  shard_dir=os.path.join(cls.root, 'shards'),
                  output_dir=os.path.join(cls.root, name))
    values.update(overrides)
    return plan.resolve_config({}, values)

  def _remote(self, name: str, **overrides) -> config_lib.TrainConfig:
    return self._config(name, executor='remote',
                        topology=self.cluster.topology_path, **overrides)

  def test_held_out_ratings_stay_with_their_users(self):
    manifest = shards.load_manifest(os.path.join(self.root, 'shards'))
    all_held_out = shards.load_held_out(manifest)
    placed = []
    for pod in self.cluster.topology.pods:
      pod_dir = os.path.join(self.cluster.cluster_dir, 'pods', pod.name)
      held_out = shards.load_held_out(shards.load_manifest(pod_dir))
      shards.verify_shards(held_out)
      self.assertContainsSubset(held_out.client_ids(),
                                shards.load_manifest(pod_dir).client_ids())
      placed += held_out.client_ids()
    self.assertCountEqual(placed, all_held_out.client_ids())
    # The coordinator holds no rating at all.
    coordinator = shards.load_manifest(self.cluster.topology.eval_data)
    self.assertIsNone(coordinator.eval)
    self.assertEqual(coordinator.client_ids(), [])

  def test_evaluation_on_the_pods_equals_local_evaluation(self):
    local = api.run(self._config('local'))
    remote = api.run(self._remote('remote'))
    for row in remote.rows:
      self.assertEqual(row['failures'], [])
    for a, b in zip(_weights(local), _weights(remote), strict=True):
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)
    local_eval = local.summary['final_eval']
    remote_eval = remote.summary['final_eval']
    self.assertCountEqual(remote_eval, ['loss', 'rmse', 'accuracy'])
    for name in local_eval:
      self.assertAlmostEqual(remote_eval[name], local_eval[name], delta=1e-4)

    # The same weights evaluated both ways, over exactly the held-out users.
    config = self._remote('eval-only')
    setup = plan.RemoteSetup(config)
    try:
      on_pods = setup.evaluator()
      in_process = recommendation.FedReconEvaluator(
          plan.load_task(self._config('unused')).manifest,
          self._config('unused').seed)
      self.assertEqual(on_pods.client_ids, in_process.client_ids)
      self.assertNotEmpty(on_pods.client_ids)
      weights = local.state.global_model_weights
      first, second = in_process.evaluate(weights), on_pods.evaluate(weights)
      for name in first:
        self.assertAlmostEqual(first[name], second[name], delta=1e-5)
    finally:
      setup.close()


  def test_secagg_on_the_pods_equals_local_secagg(self):
    # Item updates summed under SecAgg masks; user embeddings stay local.
    # Server SGD: Adam's first step g / (|g| + 1e-7) would blow the two
    # runs' different stochastic rounding (~1e-9) up to ~1e-5.
    sgd = dict(rounds=1, server_optimizer='sgd', server_learning_rate=1.0)
    local = api.run(self._config('secagg-local', aggregator='secagg',
                                           **sgd))
    remote = api.run(self._remote('secagg-remote',
                                            aggregator='secagg', **sgd))
    row = remote.rows[0]
    self.assertEqual(row['failures'], [])
    self.assertEqual(sorted(row['participants']), sorted(row['clients']))
    # Each run rounds the weighted updates to fixed point at random, its own
    # draws: item weights of ~0.1 agree to ~1e-6 (seen up to 3.7e-6). A
    # lost client or a wrong weight moves them by ~1e-3 (the plain mean's
    # model differs from secagg's by 2e-3 here).
    for a, b in zip(_weights(local), _weights(remote), strict=True):
      np.testing.assert_allclose(a, b, rtol=0, atol=2e-5)


if __name__ == '__main__':
  absltest.main()
