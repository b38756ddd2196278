from absl.testing import absltest
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from workers import local_runtime as runtime
from workers import worker_process


class RuntimeTest(absltest.TestCase):

  def test_computations_run_on_our_worker(self):
    worker = worker_process.WorkerProcess().start()
    self.addCleanup(worker.stop)
    tff.framework.set_default_context(runtime.context_for_worker(worker))

    @tff.tensorflow.computation(tf.int32)
    def add_one(x):
      return x + 1

    @tff.federated_computation(tff.FederatedType(np.int32, tff.CLIENTS))
    def client_sum(values):
      return tff.federated_sum(tff.federated_map(add_one, values))

    self.assertEqual(add_one(41), 42)  # No CLIENTS argument: cardinality 0.
    self.assertEqual(client_sum([1, 2, 3]), 9)
    self.assertTrue(worker.alive())


if __name__ == '__main__':
  absltest.main()
