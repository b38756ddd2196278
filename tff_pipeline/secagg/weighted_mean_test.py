import os
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top
from absl.testing import absltest
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_pipeline.secagg import form as secure_form
from tff_pipeline.secagg import weighted_mean
from workers import local_runtime as runtime
from workers import secure_round as secure_rounds

_VALUE_TYPE = tff.StructWithPythonType(
    [tff.TensorType(np.float32, [50]), tff.TensorType(np.float32, [3])], list)


def _run(factory, values, weights, rounds=1):
  """The factory's outputs over `rounds` rounds, each run through SecAgg+.

  TFF's own runtime sums `federated_secure_sum_bitwidth` in the clear; here
  the form and LocalSecureRound give it real masks.
  """
  process = factory.create(_VALUE_TYPE, tff.TensorType(np.float32))
  tables = [np.stack([v[i] for v in values]) for i in range(2)]
  weight_table = np.asarray(weights, np.float32)

  @tff.tensorflow.computation(np.str_)
  def lookup(key):
    index = tf.strings.to_number(tf.strings.split(key, '#')[0], tf.int32)
    return ([tf.constant(tables[0])[index], tf.constant(tables[1])[index]],
            tf.constant(weight_table)[index])

  @tff.federated_computation(process.initialize.type_signature.result,
                             tff.FederatedType(np.str_, tff.CLIENTS))
  def round_fn(state, keys):
    client = tff.federated_map(lookup, keys)
    output = process.next(state, client[0], client[1])
    # MapReduceForm takes (state, output) computations.
    return output.state, (output.result, output.measurements)

  root = tempfile.mkdtemp()
  form = secure_form.SecureForm(round_fn, len(values), root)
  runner = secure_rounds.LocalSecureRound(form, root)
  ids = [str(i) for i in range(len(values))]
  state, outputs = process.initialize(), []
  for round_num in range(1, rounds + 1):
    output, _ = runner(state, [f'{i}#0' for i in ids], ids, round_num)
    state = output[0]
    outputs.append(([np.asarray(x) for x in output[1][0]], output[1][1]))
  return outputs


def _weighted_mean(values, weights):
  return [sum(w * v[i] for v, w in zip(values, weights)) / sum(weights)
          for i in range(2)]


class SecureWeightedMeanTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    runtime.use_local_runtime(2)
    rng = np.random.default_rng(0)
    cls.values = [[rng.normal(0, 0.3, 50).astype(np.float32),
                   rng.normal(0, 0.3, 3).astype(np.float32)]
                  for _ in range(6)]
    cls.weights = [600.0, 37.0, 1.0, 250.0, 999.0, 80.0]

  def test_equals_the_weighted_mean_within_the_quantization_bound(self):
    factory = weighted_mean.SecureWeightedMeanFactory(max_weight=1000.0,
                                                      initial_clip=1.0)
    (mean, measured), = _run(factory, self.values, self.weights)
    # Round 1's clip: 2 x 1 + 1 = 3, above every norm here (~2.2).
    self.assertEqual(float(measured['clip']), 3.0)
    self.assertEqual(int(measured['clipped']), 0)
    self.assertEqual(int(measured['capped']), 0)
    expected = _weighted_mean(self.values, self.weights)
    bound = weighted_mean.quantization_error_bound(
        1000.0, 3.0, 32, 6) / sum(self.weights)
    for got, want in zip(mean, expected):
      np.testing.assert_allclose(got, want, rtol=0, atol=bound + 1e-6)
    # Not the unweighted mean: the weights matter.
    unweighted = _weighted_mean(self.values, [1.0] * 6)
    self.assertGreater(np.abs(mean[0] - unweighted[0]).max(), 0.05)

  def test_weights_above_the_cap_are_capped(self):
    factory = weighted_mean.SecureWeightedMeanFactory(max_weight=100.0,
                                                      initial_clip=1.0)
    (mean, measured), = _run(factory, self.values, self.weights)
    self.assertEqual(int(measured['capped']), 3)  # 600, 250 and 999.
    capped = [min(w, 100.0) for w in self.weights]
    expected = _weighted_mean(self.values, capped)
    bound = weighted_mean.quantization_error_bound(
        100.0, 3.0, 32, 6) / sum(capped)
    for got, want in zip(mean, expected):
      np.testing.assert_allclose(got, want, rtol=0, atol=bound + 1e-6)

  def test_an_outlier_is_clipped_and_the_clip_adapts_above_the_norms(self):
    values = [list(v) for v in self.values]
    values[1] = [v * 3 for v in values[1]]  # Norm ~6.5, above 3.
    factory = weighted_mean.SecureWeightedMeanFactory(max_weight=1000.0,
                                                      initial_clip=1.0)
    outputs = _run(factory, values, self.weights, rounds=3)
    (mean, measured) = outputs[0]
    self.assertEqual(int(measured['clipped']), 1)
    norm = np.sqrt(sum(np.sum(v.astype(np.float64)**2) for v in values[1]))
    clipped = [list(v) for v in values]
    clipped[1] = [v * 3.0 / norm for v in values[1]]
    expected = _weighted_mean(clipped, self.weights)
    bound = weighted_mean.quantization_error_bound(
        1000.0, 3.0, 32, 6) / sum(self.weights)
    for got, want in zip(mean, expected):
      np.testing.assert_allclose(got, want, rtol=0, atol=bound + 1e-5)
    # Every norm was above the estimate (1): it grows x 10^0.98 at once,
    # and the clip (2 x estimate + 1 = 20.1) is above every norm from
    # round 2 on: nothing clipped, the weighted mean again.
    self.assertAlmostEqual(float(outputs[1][1]['clip']),
                           2 * 10**0.98 + 1, places=3)
    expected = _weighted_mean(values, self.weights)
    for later_mean, later in outputs[1:]:
      self.assertGreater(float(later['clip']), norm)
      self.assertEqual(int(later['clipped']), 0)
      for got, want in zip(later_mean, expected):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)

  def test_uses_only_secure_sums_for_the_update_and_the_weight(self):
    process = weighted_mean.SecureWeightedMeanFactory(1000.0).create(
        _VALUE_TYPE, tff.TensorType(np.float32))
    text = process.next.to_building_block().compact_representation()
    self.assertIn('federated_secure_sum_bitwidth', text)
    # The only plain sum is the participant count (one int32).
    self.assertEqual(text.count('federated_sum'), 1)

  def test_bad_parameters(self):
    with self.assertRaisesRegex(ValueError, 'max_weight'):
      weighted_mean.SecureWeightedMeanFactory(0.5)
    with self.assertRaisesRegex(ValueError, 'bits'):
      weighted_mean.SecureWeightedMeanFactory(10.0, bits=60)
    with self.assertRaisesRegex(ValueError, 'initial_clip'):
      weighted_mean.SecureWeightedMeanFactory(10.0, initial_clip=0.0)


if __name__ == '__main__':
  absltest.main()
