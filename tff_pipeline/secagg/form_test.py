import os
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top
from absl.testing import absltest
import numpy as np
from scipy import stats
import tensorflow as tf
import tensorflow_federated as tff

from workers import local_runtime as runtime
from tff_pipeline.secagg import quantized_sum as secagg
from tff_pipeline.secagg import form as secure_form
from workers import secure_round as secure_rounds
from workers import secagg_masks

_CLIP = 4.0
_IDS = [str(i) for i in range(1, 7)]
_KEYS = [f'{i}#0' for i in _IDS]


def _model_fn():
  model = tf.keras.Sequential([tf.keras.layers.InputLayer((4,)),
                               tf.keras.layers.Dense(3)])
  return tff.learning.models.from_keras_model(
      model, input_spec=(tf.TensorSpec([None, 4]),
                         tf.TensorSpec([None], tf.int32)),
      loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))


@tff.tensorflow.computation(np.str_)
def _dataset(key):
  # Client i: features all i, label i % 3: different updates per client.
  value = tf.strings.to_number(tf.strings.split(key, '#')[0])
  label = tf.cast(value, tf.int32) % 3
  return tf.data.Dataset.from_tensors(
      (tf.ones([8, 4]) * value / 6.0, tf.fill([8], label))).repeat(2)


def _process(aggregator):
  process = tff.learning.algorithms.build_unweighted_fed_avg(
      _model_fn, tff.learning.optimizers.build_sgdm(0.5),
      model_aggregator=aggregator)
  return tff.simulation.compose_dataset_computation_with_learning_process(
      _dataset, process)


class SecureRoundTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    runtime.use_local_runtime(2)
    cls.secure = _process(secagg.mean_factory(_CLIP))
    cls.root = tempfile.mkdtemp()
    cls.form = secure_form.SecureForm(cls.secure.next, 10, cls.root)

  def _prepare(self, tag, participants, secret=None):
    pod = secagg_masks.PodKeys(secret or secagg_masks.new_secret(),
                               participants)
    pod.prepare_round(self.root, {
        'tag': tag, 'clients': participants, 'public_keys': pod.public_keys,
        'layout': self.form.layout.to_json()})

  def test_layout_holds_a_sum_of_ten_32_bit_values(self):
    # Dense 4x3 kernel and bias, 32-bit values, up to 10 participants.
    self.assertEqual(self.form.layout.sizes, (12, 3))
    self.assertEqual(self.form.layout.moduli, (2**36, 2**36))

  def test_secure_round_equals_plain_mean_within_quantization_bound(self):
    state = self.secure.initialize()
    secure_out, _ = secure_rounds.LocalSecureRound(self.form, self.root)(
        state, _KEYS, _IDS, 1)
    plain = _process(tff.aggregators.UnweightedMeanFactory(
        value_sum_factory=tff.aggregators.clipping_factory(
            _CLIP, tff.aggregators.SumFactory())))
    plain_state = plain.set_model_weights(
        plain.initialize(), self.secure.get_model_weights(state))
    plain_out = plain.next(plain_state, _KEYS)
    before = self.secure.get_model_weights(state).trainable
    bound = 0.5 * secagg.quantization_error_bound(_CLIP, 32, 6) / 6
    moved = 0.0
    for a, b, w in zip(
        self.secure.get_model_weights(secure_out.state).trainable,
        plain.get_model_weights(plain_out.state).trainable, before):
      np.testing.assert_allclose(a, b, rtol=0, atol=bound + 1e-7)
      moved = max(moved, float(np.abs(np.asarray(a) - w).max()))
    self.assertGreater(moved, 1e-3)  # The round did train.

  def test_masks_cancel_only_over_all_participants(self):
    state = self.secure.initialize()
    broadcast = self.form.prepare(state)
    self._prepare('t-all', _IDS)
    _, full = self.form.pod_round(broadcast, _KEYS, 't-all')
    _, part = self.form.pod_round(broadcast, _KEYS[:3], 't-all')
    full = np.concatenate([np.ravel(x) for x in full])
    part = np.concatenate([np.ravel(x) for x in part])
    # Unmasked: six values in [0, 2^32) each, far below the 2^36 modulus.
    self.assertLess(full.max(), 6 * 2**32)
    # Half the participants: masked, anywhere in [0, 2^36).
    self.assertGreater(part.max(), 6 * 2**32)

  def test_partial_sum_of_a_subset_is_uniform(self):
    # A bigger model so the statistics have enough coordinates.
    big = tff.learning.algorithms.build_unweighted_fed_avg(
        lambda: tff.learning.models.from_keras_model(
            tf.keras.Sequential([tf.keras.layers.InputLayer((4,)),
                                 tf.keras.layers.Dense(2000)]),
            input_spec=(tf.TensorSpec([None, 4]),
                        tf.TensorSpec([None], tf.int32)),
            loss=tf.keras.losses.SparseCategoricalCrossentropy(
                from_logits=True)),
        tff.learning.optimizers.build_sgdm(0.5),
        model_aggregator=secagg.mean_factory(_CLIP))
    comp = tff.simulation.compose_dataset_computation_with_learning_process(
        _dataset, big)
    form = secure_form.SecureForm(comp.next, 10, self.root)
    pod = secagg_masks.PodKeys(secagg_masks.new_secret(), _IDS)
    pod.prepare_round(self.root, {'tag': 't-big', 'clients': _IDS,
                                  'public_keys': pod.public_keys,
                                  'layout': form.layout.to_json()})
    broadcast = form.prepare(comp.initialize())
    _, part = form.pod_round(broadcast, _KEYS[:2], 't-big')
    kernel = np.ravel(part[0]) / form.layout.moduli[0]
    self.assertGreater(stats.kstest(kernel, 'uniform').pvalue, 1e-3)
    _, full = form.pod_round(broadcast, _KEYS, 't-big')
    unmasked = np.ravel(full[0]) / form.layout.moduli[0]
    self.assertLess(stats.kstest(unmasked, 'uniform').pvalue, 1e-10)

  def test_missing_mask_fails_naming_the_file(self):
    broadcast = self.form.prepare(self.secure.initialize())
    with self.assertRaisesRegex(Exception, r'secagg/t-none/1\.mask'):
      self.form.pod_round(broadcast, _KEYS[:1], 't-none')

  def test_round_tag_depends_on_round_attempt_and_participants(self):
    tags = {secure_rounds.round_tag(1, 1, ['a', 'b']),
            secure_rounds.round_tag(2, 1, ['a', 'b']),
            secure_rounds.round_tag(1, 2, ['a', 'b']),
            secure_rounds.round_tag(1, 1, ['a'])}
    self.assertLen(tags, 4)
    self.assertEqual(secure_rounds.round_tag(1, 1, ['b', 'a']),
                     secure_rounds.round_tag(1, 1, ['a', 'b']))
    for tag in tags:
      secagg_masks.check_tag(tag)

  def test_modulus_too_large_is_refused(self):
    self.assertEqual(secure_form.modulus_for_bitwidth(32, 1000), 2**42)
    with self.assertRaisesRegex(ValueError, 'lower --secagg_bits'):
      secure_form.modulus_for_bitwidth(48, 2**20)

  def test_computation_without_secure_sum_is_refused(self):
    with self.assertRaisesRegex(ValueError, 'no secure sum'):
      secure_form.SecureForm(_process(None).next, 10, self.root)


if __name__ == '__main__':
  absltest.main()
