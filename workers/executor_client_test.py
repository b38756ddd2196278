import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top
from absl.testing import absltest
import numpy as np
import tensorflow as tf  # pylint: disable=unused-import
import tensorflow_federated as tff
from tensorflow_federated.python.core.backends.native import compiler
from tensorflow_federated.python.core.impl.executors import value_serialization

from workers import executor_client
from workers import worker_process


def _serialized(comp):
  native = compiler.desugar_and_transform_to_native(comp)
  return value_serialization.serialize_value(native, native.type_signature)[0]


@tff.federated_computation(tff.FederatedType(np.float32, tff.CLIENTS))
def _client_sum(values):
  return tff.federated_sum(values)


@tff.tensorflow.computation(np.float32, np.float32)
def _add(a, b):
  return a + b


class ExecutorClientTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.worker = worker_process.WorkerProcess().start()
    self.addCleanup(self.worker.stop)
    self.client = executor_client.ExecutorClient(self.worker.target)
    self.addCleanup(self.client.close)
    self.sum_fn = _serialized(_client_sum)
    self.values_type = _client_sum.type_signature.parameter

  def _run_sum(self, values):
    arg, _ = value_serialization.serialize_value(values, self.values_type)
    result = self.client.run('sum', self.sum_fn, arg, len(values), timeout=60)
    value, _ = value_serialization.deserialize_value(
        executor_client.unplaced(result))
    return float(value)

  def test_runs_a_federated_computation_on_protos_repeatedly(self):
    self.assertEqual(self._run_sum([1.0, 2.0, 4.0]), 7.0)
    self.assertEqual(self._run_sum([0.5, 0.25, 0.25]), 1.0)  # Cached fn.
    self.assertEqual(self._run_sum([3.0]), 3.0)  # Another cardinality.

  def test_merge_all_folds_in_order(self):
    partials = [value_serialization.serialize_value(np.float32(x),
                                                    tff.TensorType(np.float32))[0]
                for x in (1.0, 2.0, 3.5)]
    merged = executor_client.merge_all(self.client, 'add', _serialized(_add),
                                       partials)
    self.assertEqual(float(value_serialization.deserialize_value(merged)[0]),
                     6.5)

  def test_dead_service_is_unavailable_and_recovers_after_restart(self):
    self.assertEqual(self._run_sum([1.0]), 1.0)
    self.worker.stop()
    with self.assertRaises(executor_client.ExecutorError) as raised:
      self._run_sum([1.0, 1.0])
    self.assertEqual(raised.exception.kind, 'unavailable')
    self.assertIn(self.worker.target, str(raised.exception))
    self.worker.start()  # Same port; the client's caches were reset.
    self.assertEqual(self._run_sum([1.0, 1.0]), 2.0)

  def test_deadline_is_a_timeout(self):
    self.assertEqual(self._run_sum([1.0]), 1.0)
    os.kill(self.worker.pid, 19)  # SIGSTOP: alive but silent.
    try:
      with self.assertRaises(executor_client.ExecutorError) as raised:
        arg, _ = value_serialization.serialize_value([1.0], self.values_type)
        self.client.run('sum', self.sum_fn, arg, 1, timeout=1.0)
    finally:
      os.kill(self.worker.pid, 18)  # SIGCONT
    self.assertEqual(raised.exception.kind, 'timeout')

  def test_not_held_marker_is_classified(self):
    self.assertIn('not held', executor_client.NOT_HELD_MARKER)


if __name__ == '__main__':
  absltest.main()
