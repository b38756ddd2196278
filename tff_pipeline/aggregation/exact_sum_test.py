import itertools

from absl.testing import absltest
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_pipeline.aggregation import exact_sum
from workers import local_runtime as runtime

# Three float32 numbers whose float32 sum depends on the order:
# (1 + 2^-24) + 2^-24 rounds twice to 1, 1 + (2^-24 + 2^-24) = 1 + 2^-23.
_VALUES = np.array([1.0, 2.0**-24, 2.0**-24], np.float32)


class ExactSumTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    runtime.use_local_runtime(3)

  def test_float32_sums_depend_on_the_order(self):
    # The problem, in numpy: two orders, two float32 sums.
    a, b, c = _VALUES
    self.assertNotEqual((a + b) + c, a + (b + c))

  def test_sum_is_the_same_in_every_order_and_rounds_once(self):
    expected = np.float32(np.sum(_VALUES.astype(np.float64)))  # 1 + 2^-23.
    self.assertEqual(expected, np.float32(1.0 + 2.0**-23))
    value_type = tff.TensorType(np.float32, [2])
    process = exact_sum.ExactSumFactory().create(value_type)
    plain = tff.aggregators.SumFactory().create(value_type)
    plain_sums = set()
    for order in itertools.permutations(range(3)):
      clients = [np.array([_VALUES[i], -_VALUES[i]], np.float32)
                 for i in order]
      result = process.next(process.initialize(), clients).result
      np.testing.assert_array_equal(result, [expected, -expected])
      self.assertEqual(np.asarray(result).dtype, np.float32)
      plain_sums.add(float(plain.next(plain.initialize(), clients).result[0]))
    self.assertGreater(len(plain_sums), 1)  # TFF's float32 sum is not.

  def test_structures_and_other_dtypes(self):
    value_type = tff.types.to_type(
        (tff.TensorType(np.float32, [3]), tff.TensorType(np.int32, [])))
    process = exact_sum.ExactSumFactory().create(value_type)
    clients = [(np.full(3, 0.5, np.float32), np.int32(2)),
               (np.full(3, 0.25, np.float32), np.int32(5))]
    total = process.next(process.initialize(), clients).result
    np.testing.assert_array_equal(total[0], np.full(3, 0.75, np.float32))
    self.assertEqual(int(total[1]), 7)

  def test_weighted_mean_in_every_order(self):
    value_type = tff.TensorType(np.float32, [1])
    exact = exact_sum.exact_weighted_mean().create(
        value_type, tff.TensorType(np.float32))
    plain = tff.aggregators.MeanFactory().create(
        value_type, tff.TensorType(np.float32))
    weights = [np.float32(1)] * 3
    means = {'exact': set(), 'plain': set()}
    for order in itertools.permutations(range(3)):
      values = [np.array([_VALUES[i]]) for i in order]
      for name, process in (('exact', exact), ('plain', plain)):
        out = process.next(process.initialize(), values, weights).result
        means[name].add(float(np.asarray(out)[0]))
    self.assertLen(means['exact'], 1)
    self.assertGreater(len(means['plain']), 1)
    self.assertEqual(means['exact'].pop(),
                     float(np.float32(1.0 + 2.0**-23) / np.float32(3)))


if __name__ == '__main__':
  absltest.main()
