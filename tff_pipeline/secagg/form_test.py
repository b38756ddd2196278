import os
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top
from absl.testing import absltest
import numpy as np
from scipy import stats
import tensorflow as tf
import tensorflow_federated as tff

from data_prep.errors import UserError
from tff_pipeline.secagg import form as secure_form
from tff_pipeline.secagg import quantized_sum as secagg
from workers import local_runtime as runtime
from workers import secure_round as secure_rounds
from workers.secagg import maskfile
from workers.secagg import messages
from workers.secagg import prg

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


def _tag(round_num: int = 1) -> str:
  return messages.RoundId(messages.new_run_nonce(), round_num, 1).tag


class PackingTest(absltest.TestCase):

  def test_tensorflow_packing_is_prg_pack(self):
    # Two implementations of one layout: TF's (pods, edge servers) and
    # numpy's (the coordinator's unmasking).
    rng = np.random.default_rng(0)
    for bits in (1, 7, 8, 16, 32, 36, 39, 61, 62):
      for length in (1, 63, 64, 65, 1000):
        with self.subTest(bits=bits, length=length):
          values = rng.integers(0, 2**bits, length, dtype=np.uint64)
          words = secure_form.pack_words(
              tf.constant(values.astype(np.int64)), bits).numpy()
          packed = words.astype('<i8').tobytes()[:(length * bits + 7) // 8]
          self.assertEqual(packed, prg.pack(values, bits))
          back = secure_form.unpack_words(tf.constant(words), bits, length)
          np.testing.assert_array_equal(back.numpy().astype(np.uint64),
                                        values)


class SecureFormTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    runtime.use_local_runtime(2)
    cls.secure = _process(secagg.mean_factory(_CLIP))
    cls.root = tempfile.mkdtemp()
    cls.form = secure_form.SecureForm(cls.secure.next, 10, cls.root)

  def _plain_sums(self, form, broadcast, keys):
    """Each secure leaf summed mod its modulus, from `work` directly."""
    total = None
    for key in keys:
      work = form.mrf.work(key, broadcast)
      flat = np.concatenate([np.ravel(np.asarray(v)).astype(np.uint64)
                             for v in secure_form._flat_values([work[1], work[2],
                                                              work[3]])])
      total = flat if total is None else total + flat
    return total

  def test_layout_holds_a_sum_of_ten_32_bit_values_in_one_field(self):
    # Dense 4x3 kernel and bias, 32-bit values, up to 10 participants.
    self.assertEqual(self.form.layout.sizes, (12, 3))
    self.assertEqual(self.form.layout.moduli, (2**36, 2**36))
    self.assertEqual((self.form.bits, self.form.length), (36, 15))

  def test_secure_round_equals_plain_mean_within_quantization_bound(self):
    state = self.secure.initialize()
    secure_out, report = secure_rounds.LocalSecureRound(self.form, self.root)(
        state, _KEYS, _IDS, 1)
    self.assertEqual(report.participants, _IDS)
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

  def test_pod_round_adds_its_one_mask_and_packs_the_sum(self):
    broadcast = self.form.prepare(self.secure.initialize())
    tag = _tag()
    modulus = 2**self.form.bits
    mask = np.random.default_rng(1).integers(0, modulus, self.form.length,
                                             dtype=np.uint64)
    path = maskfile.write(self.root, tag, mask)
    _, words = self.form.pod_round(broadcast, _KEYS[:3], tag)
    masked = self.form.unpack(words)
    plain = self._plain_sums(self.form, broadcast, _KEYS[:3])
    # `work` rounds stochastically: each client's value differs by at most
    # one step between two calls. A wrong mask would be off by ~2^36.
    unmasked = ((masked - mask) % np.uint64(modulus)).astype(np.int64)
    self.assertLessEqual(np.abs(unmasked - plain.astype(np.int64)).max(), 3)
    # Packed at 36 bits: 15 values in one group of 64 -> 36 words.
    self.assertEqual(np.asarray(words).shape, (36,))
    # One mask, one input: the file is emptied as it is read.
    self.assertEqual(os.path.getsize(path), 0)
    with self.assertRaisesRegex(Exception, 'wrong size'):
      self.form.pod_round(broadcast, _KEYS[:3], tag)

  def test_merge_adds_masked_sums(self):
    broadcast = self.form.prepare(self.secure.initialize())
    modulus = np.uint64(2**self.form.bits)
    rng = np.random.default_rng(2)
    partials, masks = [], []
    for keys in (_KEYS[:2], _KEYS[2:]):
      tag = _tag()
      masks.append(rng.integers(0, int(modulus), self.form.length,
                                dtype=np.uint64))
      maskfile.write(self.root, tag, masks[-1])
      partials.append(self.form.pod_round(broadcast, keys, tag))
    merged = self.form.merge_partials(*partials)
    total = self.form.unpack(merged[1])
    plain = self._plain_sums(self.form, broadcast, _KEYS)
    unmasked = ((total - masks[0] - masks[1]) % modulus).astype(np.int64)
    self.assertLessEqual(np.abs(unmasked - plain.astype(np.int64)).max(), 6)

  def test_masked_sum_is_uniform_and_the_unmasked_one_is_not(self):
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
    broadcast = form.prepare(comp.initialize())
    modulus = 2**form.bits
    kernel = form.layout.sizes[0]
    results = {}
    for name, mask in (
        ('masked', np.random.default_rng(3).integers(
            0, modulus, form.length, dtype=np.uint64)),
        ('unmasked', np.zeros(form.length, np.uint64))):
      tag = _tag()
      maskfile.write(self.root, tag, mask)
      _, words = form.pod_round(broadcast, _KEYS[:2], tag)
      results[name] = form.unpack(words)[:kernel] / modulus
    self.assertGreater(stats.kstest(results['masked'], 'uniform').pvalue,
                       1e-3)
    self.assertLess(stats.kstest(results['unmasked'], 'uniform').pvalue,
                    1e-10)

  def test_hostile_or_missing_tags_name_no_other_file(self):
    broadcast = self.form.prepare(self.secure.initialize())
    # A file a hostile tag would reach, were it used as a path.
    outside = os.path.join(self.root, 'secret', maskfile.MASK_FILE)
    os.makedirs(os.path.dirname(outside), exist_ok=True)
    maskfile.write(self.root, _tag(), np.zeros(self.form.length, np.uint64))
    with open(outside, 'wb') as f:
      f.write(np.zeros(self.form.length, '<i8').tobytes())
    for tag in ('../secret', f'{"0" * 32}-r1-a1/../../secret', 'r1-a1', ''):
      with self.subTest(tag=tag):
        with self.assertRaisesRegex(Exception, 'bad round tag'):
          self.form.pod_round(broadcast, _KEYS[:1], tag)
    self.assertEqual(os.path.getsize(outside), self.form.length * 8)
    missing = _tag()
    with self.assertRaisesRegex(Exception, f'secagg/{missing}/pod.mask'):
      self.form.pod_round(broadcast, _KEYS[:1], missing)

  def test_tff_secure_aggregator_runs_through_the_form(self):
    # tff.learning.secure_aggregator's bounds adapt, but its bitwidths are
    # constants, so MapReduceForm splits it and SecAgg+ masks it. (TFF's
    # own C++ runtime cannot run its secure sums at all.) In round 1 it is
    # the weighted mean of updates clipped to L2 norm 1 (its initial
    # clipping estimate; zeroing at 21 and the per-coordinate bound of 100
    # do not act here), which TFF's plain aggregators compute.
    def build(aggregator):
      return tff.simulation.compose_dataset_computation_with_learning_process(
          _dataset, tff.learning.algorithms.build_weighted_fed_avg(
              _model_fn, tff.learning.optimizers.build_sgdm(0.5),
              model_aggregator=aggregator))

    process = build(tff.learning.secure_aggregator())
    form = secure_form.SecureForm(process.next, 10, self.root)
    self.assertEqual({m.bit_length() - 1 for m in form.layout.moduli},
                     {5, 36})  # Counts of 1 bit and values of 32, n <= 10.
    state = process.initialize()
    secure_out, _ = secure_rounds.LocalSecureRound(form, self.root)(
        state, _KEYS, _IDS, 1)
    plain = build(tff.aggregators.clipping_factory(
        1.0, tff.aggregators.MeanFactory()))
    reference = plain.next(plain.set_model_weights(
        plain.initialize(), process.get_model_weights(state)), _KEYS)
    moved = 0.0
    for a, b, w in zip(
        process.get_model_weights(secure_out.state).trainable,
        plain.get_model_weights(reference.state).trainable,
        process.get_model_weights(state).trainable):
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
      moved = max(moved, float(np.abs(np.asarray(a) - w).max()))
    self.assertGreater(moved, 1e-3)

  def test_non_power_of_two_modulus_is_refused(self):

    @tff.federated_computation(tff.FederatedType(np.int32, tff.SERVER),
                               tff.FederatedType(np.str_, tff.CLIENTS))
    def comp(state, keys):
      ones = tff.federated_map(
          tff.tensorflow.computation(lambda k: tf.constant(1, tf.int32),
                                     np.str_), keys)
      return state, tff.backends.mapreduce.federated_secure_modular_sum(
          ones, 1000)

    with self.assertRaisesRegex(UserError, 'not a power of two'):
      secure_form.SecureForm(comp, 10, self.root)

  def test_modulus_too_large_is_refused(self):
    self.assertEqual(secure_form.modulus_for_bitwidth(32, 1000), 2**42)
    with self.assertRaisesRegex(ValueError, 'lower --secagg_bits'):
      secure_form.modulus_for_bitwidth(48, 2**20)

  def test_computation_without_secure_sum_is_refused(self):
    with self.assertRaisesRegex(ValueError, 'no secure sum'):
      secure_form.SecureForm(_process(None).next, 10, self.root)


if __name__ == '__main__':
  absltest.main()
