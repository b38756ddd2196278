"""The text tasks on the layered runtime: same model as the local runtime.

Shakespeare (tinyshakespeare roles) and both Stack Overflow tasks (the
100-question sample) each train on 2 pods under 1 edge server: their
preprocessing (character and word vocabularies, re-batching of sequences)
runs on the pods, and one round must give the local runtime's model.
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

from tests import testutil
from workers import local_runtime as runtime
from tff_pipeline.tasks import registry as tasks
from workers import local_cluster
from tff_pipeline import plan
from tff_pipeline import api

_SHARED = testutil.shared_data_dir()
_TASKS = {
    'shakespeare': os.path.join(_SHARED, 'shakespeare', 'tinyshakespeare.txt'),
    'stackoverflow_tag': os.path.join(_SHARED, 'stackoverflow-sample'),
    'stackoverflow_nwp': os.path.join(_SHARED, 'stackoverflow-sample'),
}


class TextTasksDistributedTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    flags.FLAGS.mark_as_parsed()
    runtime.use_local_runtime(4)
    cls.root = tempfile.mkdtemp(prefix='text-tasks-e2e-')

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root, ignore_errors=True)
    super().tearDownClass()

  def _config(self, task: str, name: str, **overrides):
    values = dict(task=task, data_dir=_TASKS[task], clients_per_round=4,
                  rounds=1, eval_every=0, progress=False,
                  shard_dir=os.path.join(self.root, f'{task}-shards'),
                  output_dir=os.path.join(self.root, task, name))
    values.update(overrides)
    return plan.resolve_config({}, values)

  def test_one_round_on_pods_equals_the_local_round(self):
    for task, data in _TASKS.items():
      if not os.path.exists(data):
        self.skipTest(f'{data} missing')
      with self.subTest(task=task):
        cluster = local_cluster.LocalCluster(
            plan.load_task(self._config(task, 'unused')).manifest.shard_dir, 2,
            1,
            cluster_dir=os.path.join(self.root, task, 'cluster')).start()
        try:
          local = api.run(self._config(task, 'local'))
          remote = api.run(self._config(
              task, 'remote', executor='remote',
              topology=cluster.topology_path))
        finally:
          cluster.stop()
        self.assertEqual(remote.rows[0]['failures'], [])
        self.assertGreater(
            remote.rows[0]['network']['coordinator_bytes_sent'], 0)
        # The pods read their clients' examples (and the same ones).
        self.assertGreater(remote.rows[0]['train']['num_examples'], 0)
        self.assertEqual(remote.rows[0]['train']['num_examples'],
                         local.rows[0]['train']['num_examples'])
        local_weights = local.state.global_model_weights.trainable
        remote_weights = remote.state.global_model_weights.trainable
        for a, b in zip(local_weights, remote_weights, strict=True):
          np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0,
                                     atol=1e-5)
        for name, value in local.summary['final_eval'].items():
          self.assertAlmostEqual(remote.summary['final_eval'][name], value,
                                 delta=1e-4, msg=name)


if __name__ == '__main__':
  absltest.main()
