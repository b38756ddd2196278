import collections
import hashlib
import math
import os
import subprocess
import sys
import tempfile
from typing import NamedTuple

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top
from absl.testing import absltest
import numpy as np
from scipy import linalg
from scipy import stats
import tensorflow as tf
import tensorflow_federated as tff

from tff_pipeline.aggregation import ddp_accounting
from tff_pipeline.aggregation import distributed_dp
from workers import local_runtime as runtime
from tff_pipeline.secagg import form as secure_form
from workers import secure_round as secure_rounds
from workers.secagg import maskfile
from workers.secagg import messages

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
# False-failure rate of each statistical test below.
ALPHA = 1e-6

_CLIP = 1.0
_IDS = [str(i) for i in range(5)]
_KEYS = [f'{i}#0' for i in _IDS]
# 40,000 + 3 values: pads to D = 65,536, so one round gives 65,536 noise
# samples per coordinate-level statistic.
_VALUE_TYPE = tff.StructWithPythonType(
    [tff.TensorType(np.float32, [200, 200]), tff.TensorType(np.float32, [3])],
    list)


def _updates(seed=0):
  """Five client updates; norms 0.3 to 3 (so some are clipped)."""
  rng = np.random.default_rng(seed)
  out = []
  for norm in (0.3, 0.9, 1.0, 2.0, 3.0):
    v = rng.standard_normal(40_003)
    v *= norm / np.linalg.norm(v)
    out.append([v[:40_000].reshape(200, 200).astype(np.float32),
                v[40_000:].astype(np.float32)])
  return out


def _flat(value):
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in value])


def _clipped_mean(updates, denominator):
  total = 0
  for u in updates:
    flat = _flat(u)
    total = total + flat * min(1.0, _CLIP / np.linalg.norm(flat))
  return total / denominator


def _round_computation(process, updates):
  """(state, keys) -> (state, mean): client i's value is updates[i]."""
  tables = [np.stack([u[j] for u in updates]) for j in range(2)]

  @tff.tensorflow.computation(np.str_)
  def lookup(key):
    index = tf.strings.to_number(tf.strings.split(key, '#')[0], tf.int32)
    return [tf.constant(tables[0])[index], tf.constant(tables[1])[index]]

  @tff.federated_computation(process.initialize.type_signature.result,
                             tff.FederatedType(np.str_, tff.CLIENTS))
  def round_fn(state, keys):
    output = process.next(state, tff.federated_map(lookup, keys))
    return output.state, output.result

  return round_fn


def _chi2_interval(samples, variance):
  """(lo, hi) holding sum(x^2)/N with probability 1 - ALPHA if Var = variance.

  The samples have mean 0 (Skellam noise is symmetric), so N S^2 / variance
  with S^2 = sum(x^2) / N is chi-square with N degrees of freedom for
  Gaussian samples. The Skellam(mu) has excess kurtosis 1 / (2 mu): with mu
  in the hundreds or more that changes the variance of S^2 by under 0.3%.
  """
  n = samples.size
  return (variance * stats.chi2.ppf(ALPHA / 2, n) / n,
          variance * stats.chi2.isf(ALPHA / 2, n) / n)


class TransformsTest(absltest.TestCase):

  def test_hadamard_matches_scipy(self):
    # Sizes below, at and past the 16-wide blocks, and not a power of 16.
    for size in (1, 2, 8, 16, 32, 256, 2048):
      x = np.random.default_rng(size).standard_normal(size)
      np.testing.assert_allclose(
          distributed_dp.hadamard(tf.constant(x)).numpy(),
          linalg.hadamard(size) @ x / math.sqrt(size), rtol=0, atol=1e-12)

  def test_rotation_is_orthogonal_and_inverted(self):
    x = tf.constant(np.random.default_rng(1).standard_normal(1024))
    seed = tf.constant([3, 4], tf.int64)
    y = distributed_dp.rotate(x, seed)
    self.assertAlmostEqual(float(tf.norm(y)), float(tf.norm(x)), places=9)
    np.testing.assert_allclose(distributed_dp.unrotate(y, seed).numpy(),
                               x.numpy(), atol=1e-12)
    other = distributed_dp.rotate(x, tf.constant([3, 5], tf.int64))
    self.assertGreater(float(tf.norm(y - other)), 1.0)

  def test_conditional_round_bound_always_holds(self):
    rng = np.random.default_rng(2)
    v = rng.standard_normal(512) * 10
    floor = np.floor(v)
    norm_sq = float(np.sum(v * v))
    for bound in (int(norm_sq + 512 / 4 + 200), int(np.ceil(norm_sq))):
      for i in range(20):
        r = distributed_dp.conditional_round(
            tf.constant(v), tf.constant([i, 7], tf.int64), bound).numpy()
        self.assertLessEqual(int(np.sum(r * r)), bound)
        self.assertTrue(np.all((r == floor) | (r == floor + 1) |
                               (r == np.trunc(v))))
    # A bound below ||v||^2 (a caller's mistake) still holds: zeros.
    r = distributed_dp.conditional_round(
        tf.constant(v), tf.constant([0, 7], tf.int64), int(norm_sq / 2))
    self.assertEqual(int(tf.reduce_sum(tf.abs(r))), 0)

  def test_conditional_round_is_unbiased(self):
    v = np.random.default_rng(3).uniform(-3, 3, 256)
    draws = np.stack([distributed_dp.conditional_round(
        tf.constant(v), tf.constant([i, 1], tf.int64), 10**9).numpy()
                      for i in range(2000)])
    # Each coordinate: mean of 2000 Bernoulli(f) + floor; stddev <= 0.0112.
    # 5.5 stddevs on 256 coordinates: false failure < 1e-5.
    np.testing.assert_allclose(draws.mean(axis=0), v, atol=5.5 * 0.0112)

  def test_skellam_noise_variance(self):
    # 2^20 draws of Skellam(300): variance 600.
    x = distributed_dp.skellam_noise(tf.constant([5, 6], tf.int64), 2**20,
                                     tf.constant(300.0, tf.float64)).numpy()
    lo, hi = _chi2_interval(x, 600.0)
    self.assertBetween(float(np.mean(x.astype(np.float64)**2)), lo, hi)


class SetParticipantsTest(absltest.TestCase):

  def test_finds_the_aggregator_state(self):

    class State(NamedTuple):
      weights: list
      aggregator: dict

    agg = collections.OrderedDict([
        (distributed_dp.ROTATION_SEED_KEY, np.array([1, 2])),
        (distributed_dp.PARTICIPANTS_KEY, np.int32(0))])
    state = State([1.0], {'inner': agg, 'other': {'x': 1}})
    out = distributed_dp.set_participants(state, 7)
    self.assertEqual(out.aggregator['inner'][distributed_dp.PARTICIPANTS_KEY],
                     7)
    self.assertEqual(agg[distributed_dp.PARTICIPANTS_KEY], 0)  # Not mutated.
    self.assertIsInstance(out, State)
    self.assertEqual(out.aggregator['other'], {'x': 1})
    with self.assertRaises(ValueError):
      distributed_dp.set_participants(state, 0)


class SecureRoundTest(absltest.TestCase):
  """The aggregator through secure_round's MapReduceForm path, real masks."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    runtime.use_local_runtime(2)
    cls.root = tempfile.mkdtemp()
    cls.updates = _updates()
    cls.expected = 5.0
    kwargs = dict(clip=_CLIP, noise_multiplier=0.2,
                  expected_clients=cls.expected, bits=18, seed=1234)
    cls.noisy = distributed_dp.DistributedDpFactory(**kwargs)
    cls.clean = distributed_dp.DistributedDpFactory(add_noise=False, **kwargs)
    cls.params = cls.noisy.params_for(40_003)
    cls.forms = {}
    for name, factory in (('noisy', cls.noisy), ('clean', cls.clean)):
      process = factory.create(_VALUE_TYPE)
      comp = _round_computation(process, cls.updates)
      cls.forms[name] = (process,
                         secure_form.SecureForm(comp, 10, cls.root))

  def _unmasked_sum(self, name, tag):
    """What the coordinator unmasks, and each client's share, of one round."""
    del tag  # A fresh SecAgg+ round tag each time.
    process, form = self.forms[name]
    state = distributed_dp.set_participants(process.initialize(), len(_IDS))
    broadcast = form.prepare(state)
    tag = messages.RoundId(messages.new_run_nonce(), 1, 1).tag
    modulus = np.uint64(form.layout.moduli[0])
    mask = np.random.default_rng().integers(0, int(modulus), form.length,
                                            dtype=np.uint64)
    maskfile.write(self.root, tag, mask)
    _, words = form.pod_round(broadcast, _KEYS, tag)
    # The masked sum less the mask: what SecAgg+ unmasks.
    unmasked = (form.unpack(words) - mask) % modulus
    shares = [np.asarray(secure_form._flat_values(
        form.mrf.work(key, broadcast))[-1]) for key in _KEYS]
    return unmasked.astype(np.int64), shares

  def test_layout_is_one_modular_vector(self):
    form = self.forms['noisy'][1]
    self.assertEqual(form.layout.sizes, (65_536,))
    self.assertEqual(form.layout.moduli, (2**18,))

  def test_unmasked_sum_is_clean_sum_plus_every_share_once(self):
    m = self.params.modulus
    noisy, shares = self._unmasked_sum('noisy', 't-noisy')
    clean, clean_shares = self._unmasked_sum('clean', 't-clean')
    # Masks cancel: the unmasked sums are the clients' shares summed mod M.
    np.testing.assert_array_equal(clean, np.mod(sum(clean_shares), m))
    np.testing.assert_array_equal(noisy, np.mod(sum(shares), m))
    # Each party's noise share: its noisy share less its clean one (same
    # seed, same rounding).
    noise = [np.mod(s - c, m) for s, c in zip(shares, clean_shares)]
    total = np.mod(noisy - clean, m)
    np.testing.assert_array_equal(total, np.mod(sum(noise), m))
    for j, share in enumerate(noise):
      self.assertTrue(np.any(share != 0))
      # One share missing, or counted twice, would not match.
      self.assertFalse(np.array_equal(total, np.mod(sum(noise) - share, m)))
      self.assertFalse(np.array_equal(total, np.mod(sum(noise) + share, m)))
      # Each party adds Skellam(lambda / n): variance 2 lambda / 5.
      centred = np.where(share >= m // 2, share - m, share).astype(np.float64)
      lo, hi = _chi2_interval(centred, 2 * self.params.lam / len(_IDS))
      self.assertBetween(float(np.mean(centred**2)), lo, hi, f'client {j}')

  def test_aggregate_noise_variance(self):
    # N = (unmasked noisy sum) - (unmasked clean sum), centred: the aggregate
    # noise. Intended: Skellam(lambda), variance 2 lambda per coordinate.
    m = self.params.modulus
    noisy, _ = self._unmasked_sum('noisy', 't-var-n')
    clean, _ = self._unmasked_sum('clean', 't-var-c')
    total = np.mod(noisy - clean, m)
    centred = np.where(total >= m // 2, total - m, total).astype(np.float64)
    lo, hi = _chi2_interval(centred, 2 * self.params.lam)
    measured = float(np.mean(centred**2))
    print(f'aggregate noise variance {measured:.1f}, intended '
          f'{2 * self.params.lam:.1f}, interval [{lo:.1f}, {hi:.1f}]')
    self.assertBetween(measured, lo, hi)

  def test_decoded_mean_is_clipped_mean_plus_noise(self):
    # Through LocalSecureRound (finish: decode on the unmasked sum).
    outputs = {}
    for name, (process, form) in self.forms.items():
      runner = secure_rounds.LocalSecureRound(form, self.root,
                                             distributed_dp.set_participants)
      (state, mean), _ = runner(process.initialize(), _KEYS, _IDS, 1)
      outputs[name] = _flat(mean)
      # The next round needs n again; the rotation moved on.
      self.assertEqual(state[distributed_dp.PARTICIPANTS_KEY], 0)
    target = _clipped_mean(self.updates, self.expected)
    p = self.params
    # Rounding: 5 clients' errors, each coordinate's in (-1, 1) with
    # variance <= 1/4, so ||e||^2 <= 5 D (by Hoeffding above 5 D / 4 +
    # 5 D / 4 with probability < exp(-2 (5 D / 4)^2 / (5 D)) ~ 0); in model
    # units ||e|| / s, and the mean divides by 5.
    bound = math.sqrt(5 * p.padded_dim / 2) / p.scale / self.expected
    self.assertLess(np.linalg.norm(outputs['clean'] - target), bound)
    # The noise: stddev z C / 5 per model coordinate (40,003 of them).
    noise = outputs['noisy'] - outputs['clean']
    lo, hi = _chi2_interval(noise, (0.2 * _CLIP / self.expected)**2)
    self.assertBetween(float(np.mean(noise**2)), lo, hi)
    # So the decoded mean is the clipped mean plus that noise, up to the
    # rounding bound (triangle inequality on the norms).
    d = noise.size
    error = np.linalg.norm(outputs['noisy'] - target)
    self.assertBetween(error, math.sqrt(lo * d) - bound,
                       math.sqrt(hi * d) + bound)

  def test_round_without_participants_is_refused(self):
    process, form = self.forms['noisy']
    with self.assertRaisesRegex(Exception, 'participant count is not set'):
      secure_rounds.LocalSecureRound(form, self.root)(
          process.initialize(), _KEYS, _IDS, 1)

  def test_noise_is_fresh_without_test_seed(self):
    factory = distributed_dp.DistributedDpFactory(
        clip=_CLIP, noise_multiplier=0.2, expected_clients=5, bits=18)
    process = factory.create(_VALUE_TYPE)
    form = secure_form.SecureForm(
        _round_computation(process, self.updates), 10, self.root)
    state = distributed_dp.set_participants(process.initialize(), 5)
    broadcast = form.prepare(state)
    first = np.asarray(secure_form._flat_values(
        form.mrf.work(_KEYS[0], broadcast))[-1])
    second = np.asarray(secure_form._flat_values(
        form.mrf.work(_KEYS[0], broadcast))[-1])
    self.assertFalse(np.array_equal(first, second))


class LearningProcessTest(absltest.TestCase):

  def test_fed_avg_runs_through_secure_round(self):
    runtime.use_local_runtime(2)

    def model_fn():
      model = tf.keras.Sequential([tf.keras.layers.InputLayer((4,)),
                                   tf.keras.layers.Dense(3)])
      return tff.learning.models.from_keras_model(
          model, input_spec=(tf.TensorSpec([None, 4]),
                             tf.TensorSpec([None], tf.int32)),
          loss=tf.keras.losses.SparseCategoricalCrossentropy(
              from_logits=True))

    @tff.tensorflow.computation(np.str_)
    def dataset(key):
      value = tf.strings.to_number(tf.strings.split(key, '#')[0])
      label = tf.cast(value, tf.int32) % 3
      return tf.data.Dataset.from_tensors(
          (tf.ones([8, 4]) * value / 6.0, tf.fill([8], label))).repeat(2)

    def build(aggregator):
      return tff.simulation.compose_dataset_computation_with_learning_process(
          dataset, tff.learning.algorithms.build_unweighted_fed_avg(
              model_fn, tff.learning.optimizers.build_sgdm(0.5),
              model_aggregator=aggregator))

    z = 0.01
    ddp = build(distributed_dp.DistributedDpFactory(
        clip=4.0, noise_multiplier=z, expected_clients=5, bits=20))
    root = tempfile.mkdtemp()
    form = secure_form.SecureForm(ddp.next, 10, root)
    state = ddp.initialize()
    output, _ = secure_rounds.LocalSecureRound(
        form, root, distributed_dp.set_participants)(state, _KEYS, _IDS, 1)
    plain = build(tff.aggregators.UnweightedMeanFactory(
        value_sum_factory=tff.aggregators.clipping_factory(
            4.0, tff.aggregators.SumFactory())))
    plain_out = plain.next(
        plain.set_model_weights(plain.initialize(),
                                ddp.get_model_weights(state)), _KEYS)
    before = _flat(ddp.get_model_weights(state).trainable)
    got = _flat(ddp.get_model_weights(output.state).trainable)
    want = _flat(plain.get_model_weights(plain_out.state).trainable)
    # Noise stddev z C / 5 per coordinate of the mean (server learning rate
    # 1); 6 stddevs on 15 coordinates: false failure < 1e-7. Rounding adds
    # about 3e-4.
    np.testing.assert_allclose(got, want, atol=6 * z * 4.0 / 5 + 1e-3)
    self.assertGreater(np.abs(got - before).max(), 1e-2)  # It trained.


class EntropyTest(absltest.TestCase):

  def test_noise_differs_across_processes_with_the_same_seed(self):
    # A run's --seed sets tf.random.set_seed; the noise must not follow it.
    script = (
        'import hashlib, tensorflow as tf\n'
        'from tff_pipeline.aggregation import ddp_accounting, distributed_dp\n'
        'tf.random.set_seed(0)\n'
        'p = ddp_accounting.SkellamParams(dim=64, clip=1.0, '
        'noise_multiplier=1.0, expected_clients=4, bits=16)\n'
        'f = tf.function(lambda x: distributed_dp.encode(\n'
        '    x, tf.constant([1, 2], tf.int64), tf.constant(4), p))\n'
        'out = f(tf.ones([64], tf.float64)).numpy()\n'
        'print(hashlib.sha256(out.tobytes()).hexdigest())\n')
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_CPP_MIN_LOG_LEVEL='3')
    digests = [subprocess.run(
        [sys.executable, '-c', script], env=env, capture_output=True,
        text=True, check=True).stdout.strip() for _ in range(2)]
    self.assertLen(digests[0], 64)
    self.assertNotEqual(digests[0], digests[1])


if __name__ == '__main__':
  absltest.main()
