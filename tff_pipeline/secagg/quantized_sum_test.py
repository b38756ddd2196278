import math
import os
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top
from absl.testing import absltest
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from workers import local_runtime as runtime
from tff_pipeline.secagg import quantized_sum as secagg
from tff_pipeline.secagg import form as secure_form
from workers import secure_round as secure_rounds

_VALUE_TYPE = tff.StructWithPythonType(
    [tff.TensorType(np.float32, [50]), tff.TensorType(np.float32, [3])], list)


def _sum_of(factory, values, secure=True):
  """The factory's sum of `values`, run as SecAgg runs it: masked, modular.

  TFF's test runtime sums `federated_secure_sum_bitwidth` in the clear
  (secure=False); our round runner (tff_pipeline.secagg.form, SecAgg+) gives
  it real masks.
  """
  process = factory.create(_VALUE_TYPE)
  tables = [np.stack([v[i] for v in values]) for i in range(2)]

  @tff.tensorflow.computation(np.str_)
  def lookup(key):
    index = tf.strings.to_number(tf.strings.split(key, '#')[0], tf.int32)
    return [tf.constant(tables[0])[index], tf.constant(tables[1])[index]]

  @tff.federated_computation(process.initialize.type_signature.result,
                             tff.FederatedType(np.str_, tff.CLIENTS))
  def round_fn(state, keys):
    output = process.next(state, tff.federated_map(lookup, keys))
    return output.state, output.result

  ids = [str(i) for i in range(len(values))]
  if not secure:
    # TFF's test context replaces the secure intrinsics with plain sums.
    with tff.framework.get_context_stack().install(
        tff.backends.test.create_sync_test_cpp_execution_context()):
      output = round_fn(process.initialize(), [f'{i}#0' for i in ids])
    return [np.asarray(x) for x in output[1]]
  root = tempfile.mkdtemp()
  form = secure_form.SecureForm(round_fn, len(values), root)
  output, _ = secure_rounds.LocalSecureRound(form, root)(
      process.initialize(), [f'{i}#0' for i in ids], ids, 1)
  return [np.asarray(x) for x in output[1]]


class SecureQuantizedSumFactoryTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    runtime.use_local_runtime(2)

  def test_equals_plain_sum_within_quantization_bound(self):
    rng = np.random.default_rng(0)
    values = [[rng.uniform(-1, 1, 50).astype(np.float32),
               rng.uniform(-1, 1, 3).astype(np.float32)] for _ in range(7)]
    for bits in (16, 32):
      with self.subTest(bits=bits):
        summed = _sum_of(secagg.SecureQuantizedSumFactory(1.0, bits), values)
        bound = secagg.quantization_error_bound(1.0, bits, 7)
        for got, i in zip(summed, range(2)):
          plain = np.sum([v[i] for v in values], axis=0)
          np.testing.assert_allclose(got, plain, rtol=0, atol=bound + 1e-6)
    # 16 bits are visibly coarser than 32: the bound is not vacuous.
    coarse = _sum_of(secagg.SecureQuantizedSumFactory(1.0, 8), values)
    plain = np.sum([v[0] for v in values], axis=0)
    self.assertGreater(np.abs(coarse[0] - plain).max(), 1e-4)

  def test_values_beyond_the_bound_are_clipped(self):
    # Three parties: the fewest a secure sum may cover by default.
    values = [[np.full(50, 5.0, np.float32), np.full(3, -5.0, np.float32)]
              for _ in range(3)]
    summed = _sum_of(secagg.SecureQuantizedSumFactory(2.0), values)
    np.testing.assert_allclose(summed[0], 3 * 2.0, atol=1e-6)
    np.testing.assert_allclose(summed[1], 3 * -2.0, atol=1e-6)

  def test_rounding_is_unbiased(self):
    # 1/3 of a step between two grid points: stochastic rounding averages it.
    bound, bits = 1.0, 4
    step = 2 * bound / (2**bits - 1)
    value = -bound + step / 3
    values = [[np.full(50, value, np.float32), np.zeros(3, np.float32)]
              for _ in range(20)]
    summed = _sum_of(secagg.SecureQuantizedSumFactory(bound, bits), values)
    self.assertAlmostEqual(float(summed[0].mean()) / 20, value, delta=step / 10)

  def test_uses_the_secure_sum_intrinsic(self):
    process = secagg.SecureQuantizedSumFactory(1.0).create(_VALUE_TYPE)
    self.assertIn('federated_secure_sum_bitwidth',
                  process.next.to_building_block().compact_representation())

  def test_bad_parameters(self):
    with self.assertRaisesRegex(ValueError, 'bound'):
      secagg.SecureQuantizedSumFactory(0.0)
    with self.assertRaisesRegex(ValueError, 'bits'):
      secagg.SecureQuantizedSumFactory(1.0, 60)

  def test_dp_factory_wraps_the_secure_sum(self):
    factory = secagg.dp_factory(1.0, 5.0, 0.5)
    self.assertIsInstance(factory, tff.aggregators.DifferentiallyPrivateFactory)
    process = factory.create(_VALUE_TYPE)
    self.assertIn('federated_secure_sum_bitwidth',
                  process.next.to_building_block().compact_representation())


def _kairouz_bound(bits: int, dim: int) -> float:
  """Kairouz et al. (ICML 2021) Theorem 1 with beta = e^-1/2, by hand.

  For x with ||x|| <= h (integer units, h = (2^bits - 1) / 2), one
  randomized rounding r has, with probability >= 1 - beta,
  ||r||^2 <= h^2 + d/4 + sqrt(2 ln(1/beta)) (h + sqrt(d)/2), and always
  ||r|| <= h + sqrt(d).
  """
  h = (2**bits - 1) / 2
  return min((h + math.sqrt(dim))**2,
             h * h + dim / 4 + 1.0 * (h + math.sqrt(dim) / 2))


class DpRoundingTest(absltest.TestCase):
  """Quantization must not break the DP sensitivity (issue 12, item 4)."""

  def test_inflation_by_hand(self):
    for bits, dim in ((8, 1_199_882), (16, 1_199_882), (32, 199_210)):
      h = (2**bits - 1) / 2
      self.assertAlmostEqual(
          secagg.dp_sensitivity_inflation(bits, dim),
          math.sqrt(_kairouz_bound(bits, dim)) / h, places=12)
    # The example: 8 bits on the CNN.
    self.assertAlmostEqual(secagg.dp_sensitivity_inflation(8, 1_199_882),
                           4.415, places=3)
    self.assertLess(secagg.dp_sensitivity_inflation(32, 1_199_882) - 1, 1e-9)

  def _records(self, bits, dim, count, seed=0):
    """Records of norm exactly C = h in integer units, as v = u + h."""
    h = (2**bits - 1) / 2
    rng = np.random.default_rng(seed)
    for _ in range(count):
      u = rng.normal(size=dim)
      yield h + h * u / np.linalg.norm(u)

  def test_plain_rounding_lengthens_records_at_8_bits(self):
    # What the sensitivity used to assume: ||decoded|| <= C. Plain stochastic
    # rounding of a C-norm record at 8 bits on 100,000 values decodes to
    # about sqrt(h^2 + d/6) / h = 1.43 C.
    bits, dim = 8, 100_000
    h = (2**bits - 1) / 2
    rng = np.random.default_rng(1)
    for v in self._records(bits, dim, 3):
      low = np.floor(v)
      r = low + (rng.uniform(size=dim) < v - low)
      self.assertGreater(np.linalg.norm(r - h) / h, 1.3)

  def test_conditional_rounding_always_within_the_bound(self):
    for bits, dim in ((8, 100_000), (8, 16), (12, 5000)):
      h = (2**bits - 1) / 2
      bound = _kairouz_bound(bits, dim)
      norms = []
      for v in self._records(bits, dim, 40, seed=bits + dim):
        r = secagg._conditional_round(  # pylint: disable=protected-access
            tf.constant(v), h, secagg.rounded_norm_bound_squared(bits, dim)
        ).numpy()
        np.testing.assert_array_equal(r, np.round(r))  # On the grid.
        self.assertTrue(np.all(np.abs(r - v) < 1))
        norms.append(np.sum((r - h)**2))
      with self.subTest(bits=bits, dim=dim):
        self.assertLessEqual(max(norms), bound)

  def test_fallback_rounds_toward_zero_within_the_bound(self):
    # Rounding toward the encoding of zero (h, a half-integer: the grid
    # points nearest it are h -/+ 1/2), computed here by hand, never moves a
    # coordinate away from h by more than max(|v - h|, 1/2). As the bound,
    # its own squared norm: random draws (about ||v - h||^2 + d/6, sd ~ h)
    # fall about 10 sd short of it, so only the fallback fits.
    bits, dim = 8, 64
    h = (2**bits - 1) / 2
    v = next(self._records(bits, dim, 1, seed=5))
    toward = np.where(v >= h, np.floor(v), np.ceil(v))
    self.assertTrue(np.all(np.abs(toward - h) <=
                           np.maximum(np.abs(v - h), 0.5)))
    tight = float(np.sum((toward - h)**2))
    self.assertLess(tight, np.sum((v - h)**2) - 500)
    r = secagg._conditional_round(  # pylint: disable=protected-access
        tf.constant(v), h, tight).numpy()
    np.testing.assert_array_equal(r, toward)

  def test_dp_records_decode_within_the_sensitivity(self):
    # At 8 bits one client's decoded record (a sum of one) has norm <=
    # dp_sensitivity, though its coordinates move by up to a step each.
    # SecAgg+ releases no sum of one party, and masks cancel exactly
    # (tests above), so the record is taken from TFF's test runtime, which
    # sums the secure intrinsic in the clear.
    rng = np.random.default_rng(3)
    dim = 53
    for _ in range(5):
      x = rng.normal(size=dim)
      x /= np.linalg.norm(x)  # Norm C = 1.
      values = [[x[:50].astype(np.float32), x[50:].astype(np.float32)]]
      summed = _sum_of(secagg.SecureQuantizedSumFactory(1.0, 8, l2_clip=True),
                       values, secure=False)
      norm = np.linalg.norm(np.concatenate(summed))
      self.assertLessEqual(norm, secagg.dp_sensitivity(1.0, 8, dim) + 1e-6)


if __name__ == '__main__':
  tf.config.threading.set_inter_op_parallelism_threads(2)
  absltest.main()
