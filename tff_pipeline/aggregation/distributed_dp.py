"""Distributed DP: every participant noises its own update before SecAgg.

The distributed Skellam mechanism (Agarwal, Kairouz, Liu, NeurIPS 2021,
arXiv 2110.04995) on the pipeline of Kairouz, Liu, Steinke (ICML 2021, arXiv
2102.06387), as a `tff.aggregators.UnweightedAggregationFactory`:

  client (`work` of the round's MapReduceForm, on the pods): clip to L2 norm
    C -> randomized Hadamard rotation (seed public, one per round) -> scale
    -> conditional randomized rounding (||r||^2 <= B always) -> plus its
    noise share, Skellam(lambda / n) per coordinate -> modulo 2^bits;
  secure sum: `federated_secure_modular_sum` modulo 2^bits (real masks from
    `tff_pipeline.secure_round`), so the coordinator learns only the sum;
  server: centre, unscale, rotate back, divide by the expected clients.

Exact noise: client i adds N_i ~ Skellam(lambda / n)^D, n the round's
participants (D the padded dimension); the sum the coordinator unmasks
carries sum_i N_i ~ Skellam(lambda)^D, i.e. per model coordinate a discrete
noise of variance 2 lambda / s^2 = (noise_multiplier * clip)^2 in model units
(after the orthogonal rotation back, the coordinates of that noise are
uncorrelated, each with that variance). The mean divides it by the expected
clients per round. Parameters, sensitivity and epsilon: ddp_accounting.

n must be set in the server state before each round (`set_participants`):
the aggregator refuses to run a round without it, and the state goes back to
"unset" after every round, so a runner that forgets cannot run with a stale
n (a too-large n would shrink every share and the total noise with it).

Randomness. The rotation seed is public (part of the broadcast). Rounding and
noise use stateless TF samplers keyed per client and call by `_os_seed`:
fresh /dev/urandom bytes on the client's machine, folded into TF's own
per-process seed, and never `tf.random.set_seed` (a run's public --seed must
not fix the noise). The samplers themselves (Philox) are not cryptographic;
see docs/privacy.md. `seed=` (tests only) makes rounding and noise a
function of (seed, the client's update, round).
"""

from __future__ import annotations

import collections
import math
import secrets
from typing import Any, Optional

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_pipeline.aggregation import ddp_accounting

ROTATION_SEED_KEY = 'ddp_rotation_seed'
PARTICIPANTS_KEY = 'ddp_participants'
_INT64 = np.iinfo(np.int64)
_URANDOM = '/dev/urandom'
_HADAMARD_RADIX = 16


def hadamard(x: tf.Tensor) -> tf.Tensor:
  """H x / sqrt(D) for a vector of length D = 2^k (Sylvester order).

  The fast Walsh-Hadamard transform, in stages of up to 16 x 16 Hadamard
  blocks (H_D is a Kronecker product of them): about half the time of 2 x 2
  butterflies on 2^21 values (memory-bound). Orthogonal; its own inverse.
  """
  size = int(x.shape[0])
  if size & (size - 1):
    raise ValueError(f'length must be a power of two, got {size}')
  y, stride = tf.reshape(x, [1, size]), 1
  while stride < size:
    block = min(_HADAMARD_RADIX, size // stride)
    y = tf.einsum('ij,bjs->bis', _small_hadamard(block, x.dtype),
                  tf.reshape(y, [-1, block, stride]))
    stride *= block
  return tf.reshape(y, [size]) / math.sqrt(size)


def _small_hadamard(size: int, dtype) -> tf.Tensor:
  h = np.ones((1, 1))
  while h.shape[0] < size:
    h = np.block([[h, h], [h, -h]])
  return tf.constant(h, dtype)


def _signs(seed: tf.Tensor, size: int) -> tf.Tensor:
  bits = tf.random.stateless_uniform([size], seed=seed, minval=0, maxval=2,
                                     dtype=tf.int64)
  return tf.cast(2 * bits - 1, tf.float64)


def rotate(x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """H S x / sqrt(D), S the random signs of `seed`."""
  return hadamard(_signs(seed, int(x.shape[0])) * x)


def unrotate(y: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """The inverse of `rotate`: S H y / sqrt(D)."""
  return _signs(seed, int(y.shape[0])) * hadamard(y)


def conditional_round(v: tf.Tensor, seed: tf.Tensor,
                      bound_squared: int) -> tf.Tensor:
  """Randomized rounding of v, redrawn until ||r||^2 <= bound_squared.

  Each coordinate rounds up with probability equal to its fractional part.
  After `ddp_accounting.MAX_ROUNDING_TRIES` draws, rounds toward zero, which
  is within the bound whenever ||v||^2 is; failing that (never, if the caller
  respects ||v||^2 <= bound_squared), returns zeros. So the result always
  satisfies the bound: the sensitivity does not rest on a probability.
  """
  floor = tf.floor(v)
  frac = v - floor
  low = tf.cast(floor, tf.int64)
  bound = tf.constant(bound_squared, tf.int64)

  def draw(i):
    u = tf.random.stateless_uniform(
        tf.shape(v), seed=tf.random.experimental.stateless_fold_in(seed, i),
        dtype=tf.float64)
    return low + tf.cast(u < frac, tf.int64)

  def fits(r):
    return tf.reduce_sum(r * r) <= bound

  def again(i, r):
    return tf.logical_and(i < ddp_accounting.MAX_ROUNDING_TRIES,
                          tf.logical_not(fits(r)))

  _, r = tf.while_loop(again, lambda i, r: (i + 1, draw(i + 1)),
                       (tf.constant(1, tf.int64), draw(0)))
  toward_zero = tf.cast(tf.sign(v) * tf.floor(tf.abs(v)), tf.int64)
  r = tf.cond(fits(r), lambda: r, lambda: toward_zero)
  return tf.cond(fits(r), lambda: r, lambda: tf.zeros_like(r))


def skellam_noise(seed: tf.Tensor, size: int, lam: tf.Tensor) -> tf.Tensor:
  """`size` independent Poisson(lam) - Poisson(lam), int64."""
  draws = tf.random.stateless_poisson([2, size], seed=seed, lam=lam,
                                      dtype=tf.int64)
  return draws[0] - draws[1]


def _os_seed() -> tf.Tensor:
  """A fresh, secret stateless seed for one client's rounding and noise.

  TF's own randomness (a kernel with seeds (0, 0) picks its seed when built,
  whatever tf.random.set_seed says) comes from one std::mt19937_64 per
  process, seeded with 32 bits from /dev/urandom: too few to keep a noise
  share from a determined coordinator. So the seed also folds in 4 x 64 bits
  hashed from fresh /dev/urandom bytes (4 lines of the device, about 256
  bytes each), read on the client's machine at every call. If the device
  cannot be read, the round fails.
  """
  seed = tf.raw_ops.RandomUniformInt(
      shape=[2], minval=tf.constant(_INT64.min, tf.int64),
      maxval=tf.constant(_INT64.max, tf.int64), seed=0, seed2=0)
  lines = tf.data.TextLineDataset(
      _URANDOM, buffer_size=4096).take(4).batch(4).get_single_element()
  checked = tf.debugging.assert_equal(
      tf.size(lines), 4, message=f'distributed_dp: cannot read {_URANDOM}')
  with tf.control_dependencies([checked]):
    entropy = tf.bitcast(tf.fingerprint(tf.reshape(lines, [-1, 1])),
                         tf.int64)
  for i in range(4):
    seed = tf.random.experimental.stateless_fold_in(seed, entropy[i])
  return seed


def _test_seed(seed: int, x: tf.Tensor, rotation_seed: tf.Tensor) -> tf.Tensor:
  fingerprint = tf.bitcast(tf.fingerprint(tf.reshape(x, [1, -1]))[0],
                           tf.int64)
  key = tf.random.experimental.stateless_fold_in(
      tf.constant([seed, 0], tf.int64), fingerprint)
  return tf.random.experimental.stateless_fold_in(key, rotation_seed[1])


def encode(flat: tf.Tensor, rotation_seed: tf.Tensor, participants: tf.Tensor,
           params: ddp_accounting.SkellamParams, seed: Optional[int] = None,
           add_noise: bool = True) -> tf.Tensor:
  """One client's share: clip, rotate, scale, round, noise, mod 2^bits.

  Args:
    flat: The client's update, flattened (params.dim values).
    rotation_seed: The round's public seed, int64 [2].
    participants: n, the round's participants (> 0).
    params: The mechanism.
    seed: Tests only: derive rounding and noise from it.
    add_noise: Tests only: False leaves the noise out (same scale).

  Returns:
    int64 [params.padded_dim] in [0, 2^bits).
  """
  x = tf.cast(flat, tf.float64)
  # A non-finite update would make the clip and the rounding meaningless.
  x = tf.where(tf.reduce_all(tf.math.is_finite(x)), x, tf.zeros_like(x))
  norm = tf.norm(x)
  x = x * tf.minimum(tf.constant(1.0, tf.float64),
                     params.clip / tf.maximum(norm, 1e-300))
  x = tf.pad(x, [[0, params.padded_dim - params.dim]])
  v = params.scale * rotate(x, rotation_seed)
  private = (_os_seed() if seed is None else
             _test_seed(seed, x, rotation_seed))
  r = conditional_round(
      v, tf.random.experimental.stateless_fold_in(private, 1),
      params.l2_bound_squared)
  if add_noise:
    checked = tf.debugging.assert_positive(
        participants,
        message='distributed_dp: the round\'s participant count is not set; '
        'call distributed_dp.set_participants on the state before the round')
    with tf.control_dependencies([checked]):
      share = params.lam / tf.cast(participants, tf.float64)
    r = r + skellam_noise(
        tf.random.experimental.stateless_fold_in(private, 2),
        params.padded_dim, share)
  return tf.math.floormod(r, params.modulus)


def decode(summed: tf.Tensor, rotation_seed: tf.Tensor,
           params: ddp_accounting.SkellamParams) -> tf.Tensor:
  """The sum of the clients' clipped updates plus noise, flat, float64."""
  modulus = params.modulus
  centred = tf.where(summed >= modulus // 2, summed - modulus, summed)
  y = tf.cast(centred, tf.float64) / params.scale
  return unrotate(y, rotation_seed)[:params.dim]


class DistributedDpFactory(tff.aggregators.UnweightedAggregationFactory):
  """Mean of client updates under distributed Skellam DP (see module doc).

  The result is the noisy sum divided by `expected_clients` (not by the
  round's count, which would need another release).
  """

  def __init__(self, clip: float, noise_multiplier: float,
               expected_clients: float, bits: int, *,
               dim: Optional[int] = None,
               seed: Optional[int] = None, add_noise: bool = True):
    """Checks the settings.

    Args:
      clip: L2 clip C of each update.
      noise_multiplier: Aggregate noise standard deviation over C.
      expected_clients: Expected participants per round (the mean's
        denominator; sets the scale).
      bits: Secure sums add modulo 2^bits.
      dim: The model parameters the run's accounting assumed; `create`
        refuses a model of another size (None: not checked).
      seed: Tests only: reproducible rounding and noise (never in a run: the
        noise would be known to whoever knows the seed).
      add_noise: Tests only: False leaves every noise share out.

    Raises:
      UserError: bad settings (checked against a 1-parameter model here,
        against the real one in `create`).
    """
    self._clip = float(clip)
    self._noise_multiplier = float(noise_multiplier)
    self._expected = float(expected_clients)
    self._bits = int(bits)
    self._seed = seed
    self._add_noise = add_noise
    self._dim = dim
    self.params_for(dim or 1)

  def params_for(self, dim: int) -> ddp_accounting.SkellamParams:
    """The mechanism for a model of `dim` parameters."""
    return ddp_accounting.SkellamParams(
        dim=dim, clip=self._clip, noise_multiplier=self._noise_multiplier,
        expected_clients=self._expected, bits=self._bits)

  def create(self, value_type) -> tff.templates.AggregationProcess:
    specs = tff.types.type_to_tf_tensor_specs(value_type)
    flat_specs = tf.nest.flatten(specs)
    if not all(s.dtype.is_floating for s in flat_specs):
      raise TypeError(f'distributed_dp sums floats only, got {value_type}')
    sizes = [int(np.prod(s.shape, dtype=np.int64)) for s in flat_specs]
    if self._dim is not None and sum(sizes) != self._dim:
      raise ValueError(
          f'distributed_dp: the aggregated update has {sum(sizes)} '
          f'parameters, but its accounting assumed {self._dim}')
    params = self.params_for(sum(sizes))
    seed, add_noise, denominator = self._seed, self._add_noise, self._expected
    initial_seed = np.array(
        [seed if seed is not None else secrets.randbits(62), 0], np.int64)
    dim_padded = params.padded_dim

    @tff.tensorflow.computation
    def initial_state():
      return collections.OrderedDict([
          (ROTATION_SEED_KEY, tf.constant(initial_seed)),
          (PARTICIPANTS_KEY, tf.constant(0, tf.int32))])

    state_type = initial_state.type_signature.result

    @tff.tensorflow.computation(value_type, state_type)
    def client_share(value, state):
      flat = tf.concat([tf.reshape(tf.cast(v, tf.float64), [-1])
                        for v in tf.nest.flatten(value)], axis=0)
      return encode(flat, state[ROTATION_SEED_KEY], state[PARTICIPANTS_KEY],
                    params, seed=seed, add_noise=add_noise)

    @tff.tensorflow.computation(
        tff.TensorType(np.int64, [dim_padded]), state_type)
    def server_mean(summed, state):
      flat = decode(summed, state[ROTATION_SEED_KEY], params) / denominator
      pieces = tf.split(flat, sizes)
      return tf.nest.pack_sequence_as(specs, [
          tf.cast(tf.reshape(p, s.shape), s.dtype)
          for p, s in zip(pieces, flat_specs)])

    @tff.tensorflow.computation(state_type)
    def next_state(state):
      # A fresh rotation each round; n must be set again.
      return collections.OrderedDict([
          (ROTATION_SEED_KEY, state[ROTATION_SEED_KEY] +
           tf.constant([0, 1], tf.int64)),
          (PARTICIPANTS_KEY, tf.constant(0, tf.int32))])

    @tff.tensorflow.computation(tff.TensorType(np.int64, [dim_padded]))
    def measure(summed):
      # Post-processing of the noisy sum only.
      half = params.modulus // 2
      centred = tf.where(summed >= half, summed - params.modulus, summed)
      return collections.OrderedDict(
          range_used=tf.cast(tf.reduce_max(tf.abs(centred)), tf.float64) /
          half)

    @tff.federated_computation()
    def init_fn():
      return tff.federated_eval(initial_state, tff.SERVER)

    @tff.federated_computation(init_fn.type_signature.result,
                               tff.FederatedType(value_type, tff.CLIENTS))
    def next_fn(state, value):
      shares = tff.federated_map(
          client_share, (value, tff.federated_broadcast(state)))
      summed = tff.backends.mapreduce.federated_secure_modular_sum(
          shares, params.modulus)
      return tff.templates.MeasuredProcessOutput(
          state=tff.federated_map(next_state, state),
          result=tff.federated_map(server_mean, (summed, state)),
          measurements=tff.federated_map(measure, summed))

    return tff.templates.AggregationProcess(init_fn, next_fn)


def set_participants(state: Any, participants: int) -> Any:
  """`state` with every distributed_dp aggregator told the round's n.

  Works on any learning-process or aggregation-process state holding one
  (NamedTuples, dicts, lists, tuples). Returns `state` unchanged if there is
  none.

  Args:
    state: A process state.
    participants: The clients whose shares the round's sum will hold.
  """
  if participants < 1:
    raise ValueError(f'participants must be >= 1, got {participants}')

  def walk(node):
    if isinstance(node, dict):
      if PARTICIPANTS_KEY in node and ROTATION_SEED_KEY in node:
        new = type(node)(node)
        new[PARTICIPANTS_KEY] = np.int32(participants)
        return new
      return type(node)((k, walk(v)) for k, v in node.items())
    if isinstance(node, tuple) and hasattr(node, '_fields'):
      return type(node)(*[walk(v) for v in node])
    if isinstance(node, (list, tuple)):
      return type(node)(walk(v) for v in node)
    return node

  return walk(state)
