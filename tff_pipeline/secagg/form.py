"""The TFF side of rounds with real secure sums: TFF's MapReduceForm, masked.

TFF's runtimes compute `federated_secure_sum_bitwidth` as a plain sum, and its
mergeable form rejects it. Here a round computation (`process.next`) is split
by `tff.backends.mapreduce.get_map_reduce_form_for_computation` into
`prepare` (server), `work` (one call per client, whose input is the client
key), the plain aggregation (`zero`/`accumulate`/`merge`/`report`), the
secure-summed tensors and `update` (server). From those we build the pieces
that SecAgg+ (`workers.secagg`, `workers.secure_round`) drives:

* `pod_round(broadcast@SERVER, keys@CLIENTS, tag@SERVER)`, run by a pod (a
  SecAgg party) on its clients: `work` per client, the modular sum of the
  clients' secure tensors, then the pod's ONE mask added mod 2^b (read from
  `secagg/<tag>/pod.mask`, written by the pod's own Python; see
  `workers.secagg.maskfile`), packed at b bits per element. The tag is
  checked inside TensorFlow before it becomes a path, and the mask file is
  emptied once read, so one mask serves one input.
* `merge_partials(a, b)`: TFF's `merge` plus addition of the packed masked
  sums (an edge server's sum of its pods; never unmasked there).
* `finish(state, accumulator, total)`: `report`, then `update` on the
  unmasked sum (mod 2^b, from the coordinator's SecAgg+ unmasking).

One field Z_{2^b} carries every secure tensor: each leaf's modulus is a power
of two (a sum of `bitwidth`-bit values over `max_participants` clients, or a
`federated_secure_modular_sum` modulus) and b is the largest; a leaf with a
smaller modulus m is reduced mod m on the pod and at every merge, so what
anyone sees of it is uniform mod m, and its unmasked sum is taken mod m.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.common_libs import structure
from tensorflow_federated.python.core.impl.types import computation_types
from tensorflow_federated.python.core.impl.types import type_conversions

from data_prep.errors import UserError
from workers.secagg import maskfile
from workers.secagg import messages
from workers.secagg import prg

# Masked values stay int64-safe in TensorFlow: a sum of two is below 2^63.
MAX_BITS = prg.MAX_BITS
# The round tag, checked in TensorFlow before it names a file (the same
# pattern as workers.secagg.messages.RoundId.parse_tag).
TAG_PATTERN = r'[0-9a-f]{32}-r(0|[1-9][0-9]{0,8})-a[1-9][0-9]?'


@dataclasses.dataclass(frozen=True)
class _Leaf:
  shape: tuple[int, ...]
  dtype: Any
  modulus: int

  @property
  def size(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64))


@dataclasses.dataclass(frozen=True)
class Layout:
  """The secure-summed tensors of a round, flattened: sizes and moduli."""
  sizes: tuple[int, ...]
  moduli: tuple[int, ...]

  @property
  def total(self) -> int:
    return sum(self.sizes)


def _tensor_leaves(type_spec) -> list[computation_types.TensorType]:
  if isinstance(type_spec, computation_types.TensorType):
    return [type_spec]
  leaves = []
  for _, element in structure.iter_elements(type_spec):
    leaves.extend(_tensor_leaves(element))
  return leaves


def _flat_values(value) -> list[Any]:
  """Leaves of a value in TFF's order (Structs, Python containers, tensors)."""
  if isinstance(value, structure.Struct):
    return [leaf for element in structure.iter_elements(value)
            for leaf in _flat_values(element[1])]
  if isinstance(value, dict):
    return [leaf for key in value for leaf in _flat_values(value[key])]
  if isinstance(value, (list, tuple)):
    return [leaf for element in value for leaf in _flat_values(element)]
  return [value]


def _pack(type_spec, flat: list[Any]):
  """Builds a value of `type_spec` from its leaves in order."""
  values = iter(flat)

  def build(t):
    if isinstance(t, computation_types.TensorType):
      return next(values)
    return structure.Struct([(name, build(e))
                             for name, e in structure.iter_elements(t)])

  return build(type_spec)


def modulus_for_bitwidth(bits: int, max_participants: int) -> int:
  """Smallest power of two that holds a sum of `max_participants` b-bit values."""
  modulus = 2**(bits + math.ceil(math.log2(max_participants + 1)))
  if modulus > 2**MAX_BITS:
    raise ValueError(f'{max_participants} participants of {bits}-bit values '
                     f'need more than {MAX_BITS} bits; lower --secagg_bits')
  return modulus


def _log2_exact(modulus: int, what: str) -> int:
  if modulus < 2 or modulus & (modulus - 1):
    raise UserError(f'{what}: secure modular sum modulus {modulus} is not a '
                    'power of two; SecAgg+ sums in Z_2^b, so use a modulus '
                    '2^k (e.g. the aggregator\'s bits setting)')
  return modulus.bit_length() - 1


# b-bit packing in TensorFlow, the same layout as workers.secagg.prg.pack:
# groups of 64 values fill exactly b little-endian 64-bit words.


def pack_words(flat: tf.Tensor, bits: int) -> tf.Tensor:
  """int64 values in [0, 2^bits) -> ceil(n/64)*bits int64 words."""
  n = flat.shape[0]
  groups = -(-n // 64)
  lanes = tf.reshape(tf.pad(flat, [[0, groups * 64 - n]]), [groups, 64])
  words: list[Any] = [None] * bits
  for i in range(64):
    word, shift = divmod(i * bits, 64)
    lane = lanes[:, i]
    part = tf.bitwise.left_shift(lane, tf.constant(shift, tf.int64))
    words[word] = part if words[word] is None else tf.bitwise.bitwise_or(
        words[word], part)
    if shift + bits > 64:
      carry = tf.bitwise.right_shift(lane, tf.constant(64 - shift, tf.int64))
      words[word + 1] = carry if words[word + 1] is None else (
          tf.bitwise.bitwise_or(words[word + 1], carry))
  return tf.reshape(tf.stack(words, axis=1), [-1])


def unpack_words(words: tf.Tensor, bits: int, n: int) -> tf.Tensor:
  """Inverse of `pack_words`: the first n values, int64 in [0, 2^bits)."""
  groups = -(-n // 64)
  grid = tf.reshape(words, [groups, bits])
  low_bits = tf.constant((1 << bits) - 1, tf.int64)
  lanes = []
  for i in range(64):
    word, shift = divmod(i * bits, 64)
    # TF's right shift of int64 is arithmetic: mask the sign copies away.
    lane = tf.bitwise.right_shift(grid[:, word], tf.constant(shift, tf.int64))
    if shift:
      lane = tf.bitwise.bitwise_and(
          lane, tf.constant((1 << (64 - shift)) - 1, tf.int64))
    if shift + bits > 64:
      lane = tf.bitwise.bitwise_or(lane, tf.bitwise.left_shift(
          grid[:, word + 1], tf.constant(64 - shift, tf.int64)))
    lanes.append(tf.bitwise.bitwise_and(lane, low_bits))
  return tf.reshape(tf.stack(lanes, axis=1), [-1])[:n]


class SecureForm:
  """The pieces of a secure round, built once per run."""

  def __init__(self, comp: tff.Computation, max_participants: int,
               mask_root: str):
    """Splits `comp`.

    Args:
      comp: The round computation, `(state@SERVER, keys@CLIENTS) -> output`.
      max_participants: Upper bound on clients per round (sets the moduli).
      mask_root: Where `pod_round` reads `secagg/<tag>/pod.mask`: '.' on a
        pod (the executor's working directory), a local folder otherwise.

    Raises:
      UserError: a secure modular sum whose modulus is not a power of two.
      ValueError: no secure sum at all, or sums too wide for 62 bits.
    """
    self.comp = comp
    mrf = tff.backends.mapreduce.get_map_reduce_form_for_computation(comp)
    self.mrf = mrf
    work_result = mrf.work.type_signature.result
    secure_types = [work_result[1], work_result[2], work_result[3]]
    bitwidths = _flat_values(mrf.secure_sum_bitwidth())
    max_inputs = _flat_values(mrf.secure_sum_max_input())
    moduli = _flat_values(mrf.secure_modular_sum_modulus())
    leaves: list[_Leaf] = []
    for kind, (type_spec, params) in enumerate(
        zip(secure_types, (bitwidths, max_inputs, moduli))):
      tensors = _tensor_leaves(type_spec)
      if len(tensors) != len(params):
        raise ValueError(f'secure part {kind}: {len(tensors)} tensors but '
                         f'{len(params)} parameters')
      for tensor, param in zip(tensors, params):
        param = int(np.asarray(param))
        if kind == 0:
          modulus = modulus_for_bitwidth(param, max_participants)
        elif kind == 1:
          modulus = 2**math.ceil(math.log2(param * max_participants + 1))
        else:
          modulus = 2**_log2_exact(param, f'secure tensor {len(leaves)}')
        leaves.append(_Leaf(tuple(tensor.shape), tensor.dtype, modulus))
    if not leaves:
      raise ValueError('the round computation has no secure sum; use the '
                       'plain runtime')
    self.leaves = leaves
    self.bits = max(l.modulus.bit_length() - 1 for l in leaves)
    if self.bits > MAX_BITS:
      raise ValueError(f'secure sums need {self.bits} bits, more than '
                       f'{MAX_BITS}; lower --secagg_bits')
    self.layout = Layout(tuple(l.size for l in leaves),
                         tuple(l.modulus for l in leaves))
    self.length = self.layout.total
    self._secure_types = secure_types
    self.pod_round = self._build_pod_round(mask_root)
    self.merge_partials = self._build_merge()
    self.partial_type = self.merge_partials.type_signature.result

  def _reduce_leaves(self, flat: tf.Tensor) -> tf.Tensor:
    """Each leaf's part of a flat int64 vector, mod that leaf's modulus."""
    if len({l.modulus for l in self.leaves}) == 1:
      return tf.math.floormod(flat, self.leaves[0].modulus)
    parts, offset = [], 0
    for leaf in self.leaves:
      parts.append(tf.math.floormod(flat[offset:offset + leaf.size],
                                    leaf.modulus))
      offset += leaf.size
    return tf.concat(parts, axis=0)

  def _build_pod_round(self, mask_root: str) -> tff.Computation:
    mrf, leaves, bits, length = self.mrf, self.leaves, self.bits, self.length
    work_type = mrf.work.type_signature
    key_type, broadcast_type = work_type.parameter[0], work_type.parameter[1]
    secure_types = self._secure_types
    flat_type = computation_types.TensorType(np.int64, [length])
    words_type = computation_types.TensorType(
        np.int64, [-(-length // 64) * bits])
    prefix = f'{mask_root}/{maskfile.MASK_DIR}/'
    reduce_leaves = self._reduce_leaves

    @tff.tensorflow.computation(*secure_types)
    def flatten(bitwidth_part, max_input_part, modular_part):
      values = (_flat_values(bitwidth_part) + _flat_values(max_input_part) +
                _flat_values(modular_part))
      flat = tf.concat([tf.reshape(tf.cast(v, tf.int64), [-1])
                        for v in values], axis=0)
      return reduce_leaves(flat)

    @tff.tensorflow.computation
    def zero_sum():
      return tf.zeros([length], tf.int64)

    @tff.tensorflow.computation(flat_type, flat_type)
    def add_mod(a, b):
      return reduce_leaves(a + b)

    @tff.tensorflow.computation(flat_type)
    def identity_sum(a):
      return a

    @tff.tensorflow.computation(flat_type, tf.string)
    def mask_and_pack(total, tag):
      # The tag comes from the aggregation side: only a well-formed one may
      # name a file (no '..', no '/').
      well_formed = tf.strings.regex_full_match(tag, TAG_PATTERN)
      tag_ok = tf.debugging.Assert(well_formed, ['SecAgg: bad round tag', tag])
      with tf.control_dependencies([tag_ok]):
        # And in the data path: a bad tag never reaches a file name.
        safe_tag = tf.where(well_formed, tag, 'bad-tag')
        path = tf.strings.join([prefix, safe_tag, '/', maskfile.MASK_FILE])
        raw = tf.io.read_file(path)
      mask = tf.io.decode_raw(raw, tf.int64, little_endian=True)
      # Shaped to fit whatever was read; the result waits for the check.
      size = tf.size(mask)
      size_ok = tf.debugging.Assert(tf.equal(size, length), [
          'SecAgg mask file has the wrong size (used up, or of another round '
          'computation):', size])
      mask = tf.reshape(tf.pad(mask[:length],
                               [[0, length - tf.minimum(size, length)]]),
                        [length])
      masked = reduce_leaves(total + mask)
      # One mask, one input: empty the file once it is read.
      with tf.control_dependencies([masked]):
        consumed = tf.io.write_file(path, '')
      with tf.control_dependencies([consumed, size_ok, tag_ok]):
        return tf.identity(pack_words(masked, bits))

    accumulator_type = mrf.zero.type_signature.result

    @tff.tensorflow.computation(accumulator_type)
    def identity_accumulator(a):
      return a

    @tff.federated_computation(
        tff.FederatedType(broadcast_type, tff.SERVER),
        tff.FederatedType(key_type, tff.CLIENTS),
        tff.FederatedType(np.str_, tff.SERVER))
    def pod_round(broadcast, keys, tag):
      work = tff.federated_map(
          mrf.work, (keys, tff.federated_broadcast(broadcast)))
      flat = tff.federated_map(flatten, (work[1], work[2], work[3]))
      accumulator = tff.federated_aggregate(
          work[0], mrf.zero(), mrf.accumulate, mrf.merge, identity_accumulator)
      total = tff.federated_aggregate(flat, zero_sum(), add_mod, add_mod,
                                      identity_sum)
      masked = tff.federated_map(mask_and_pack, (total, tag))
      return tff.federated_zip((accumulator, masked))

    @tff.tensorflow.computation(words_type, words_type)
    def add_packed(a, b):
      return pack_words(reduce_leaves(unpack_words(a, bits, length) +
                                      unpack_words(b, bits, length)), bits)

    self._add_packed = add_packed
    return pod_round

  def _build_merge(self) -> tff.Computation:
    mrf, add_packed = self.mrf, self._add_packed
    partial_type = self.pod_round.type_signature.result.member

    @tff.federated_computation(partial_type, partial_type)
    def merge_partials(a, b):
      return (mrf.merge(a[0], b[0]), add_packed(a[1], b[1]))

    return merge_partials

  def prepare(self, state):
    """The broadcast of a round (runs in the current context)."""
    return self.mrf.prepare(state)

  def packed_size(self) -> int:
    """Bytes of a masked sum packed at `bits` (what prg.unpack takes)."""
    return (self.length * self.bits + 7) // 8

  def unpack(self, words) -> np.ndarray:
    """A partial's packed masked sum -> uint64 values mod 2^bits."""
    data = np.asarray(words).astype('<i8').tobytes()[:self.packed_size()]
    return prg.unpack(data, self.bits, self.length)

  def finish(self, state, accumulator, total: np.ndarray) -> Any:
    """`report` + `update` on the unmasked sum; returns `comp`'s output.

    Args:
      state: The server state the round's broadcast was prepared from.
      accumulator: The merged plain aggregate of the survivors.
      total: The unmasked sum mod 2^bits of the survivors' secure tensors,
        flat (uint64, `length` values), as SecAgg+'s unmasking returns it.
    """
    total = np.asarray(total, dtype=np.uint64)
    if total.shape != (self.length,):
      raise ValueError(f'unmasked sum of shape {total.shape}, expected '
                       f'({self.length},)')
    flat, offset = [], 0
    for leaf in self.leaves:
      part = total[offset:offset + leaf.size] & np.uint64(leaf.modulus - 1)
      offset += leaf.size
      flat.append(part.astype(np.int64).astype(leaf.dtype).reshape(leaf.shape))
    parts, offset = [], 0
    for type_spec in self._secure_types:
      count = len(_tensor_leaves(type_spec))
      parts.append(_pack(type_spec, flat[offset:offset + count]))
      offset += count
    global_update = structure.Struct.unnamed(self.mrf.report(accumulator),
                                             *parts)
    result = self.mrf.update(state, global_update)
    # `update` is unplaced and returns plain containers; give back `comp`'s.
    return type_conversions.type_to_py_container(
        structure.from_container(result, recursive=True),
        self.comp.type_signature.result)


def check_tag(tag: str) -> str:
  """The tag, if `pod_round` would accept it (ProtocolError otherwise)."""
  return messages.RoundId.parse_tag(tag).tag
