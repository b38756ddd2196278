"""Rounds with real secure sums: TFF's MapReduceForm plus pairwise masks.

TFF's runtimes compute `federated_secure_sum_bitwidth` as a plain sum, and its
mergeable form rejects it. Here a round computation (`process.next`) is split
by `tff.backends.mapreduce.get_map_reduce_form_for_computation` into
`prepare` (server), `work` (one call per client, whose input is the client
key), the plain aggregation (`zero`/`accumulate`/`merge`/`report`), the
secure-summed tensors and `update` (server). From those we build:

* `pod_round(broadcast@SERVER, keys@CLIENTS, tag@SERVER)`: runs `work` on a
  pod's clients, adds each client's mask (read from
  `secagg/<tag>/<client id>.mask`, written by the pod itself; see
  `workers.secagg_masks`) modulo each tensor's modulus, and returns the pod's
  accumulator plus its masked modular sum.
* `merge_partials(a, b)`: TFF's `merge` plus modular addition.
* `finish(state, merged)`: `report`, then `update` on the unmasked sums.

Masks cancel only in the sum over all of a round's participants, so a round
that loses a participant is redone among the survivors with a new tag (fresh
masks); a partial sum is never unmasked.

Aggregators whose clients need the round's participant count (distributed DP:
each adds 1/n of the noise) get it through `set_participants(state, n)`,
applied before every attempt, so a redo among survivors uses their count.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from typing import Any, Callable, Optional, Sequence

from absl import logging

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.common_libs import structure
from tensorflow_federated.python.core.impl.types import computation_types
from tensorflow_federated.python.core.impl.types import type_conversions

from tff_pipeline import distributed
from workers import secagg_masks


@dataclasses.dataclass(frozen=True)
class _Leaf:
  shape: tuple[int, ...]
  dtype: Any
  modulus: int

  @property
  def size(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64))


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
  if modulus > secagg_masks.MAX_MODULUS:
    raise ValueError(f'{max_participants} participants of {bits}-bit values '
                     'need more than 62 bits; lower --secagg_bits')
  return modulus


def round_tag(round_num: int, attempt: int, client_ids: Sequence[str]) -> str:
  digest = hashlib.sha256('\n'.join(sorted(client_ids)).encode()).hexdigest()
  return f'r{round_num}-a{attempt}-{digest[:16]}'


class SecureForm:
  """The pieces of a secure round, built once per run."""

  def __init__(self, comp: tff.Computation, max_participants: int,
               mask_root: str):
    """Splits `comp`.

    Args:
      comp: The round computation, `(state@SERVER, keys@CLIENTS) -> output`.
      max_participants: Upper bound on clients per round (sets the moduli).
      mask_root: Where `pod_round` reads `secagg/<tag>/<id>.mask`: '.' on a
        pod (the executor's working directory), a local folder otherwise.
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
          modulus = param
        leaves.append(_Leaf(tuple(tensor.shape), tensor.dtype, modulus))
    if not leaves:
      raise ValueError('the round computation has no secure sum; use the '
                       'plain runtime')
    self.leaves = leaves
    self.layout = secagg_masks.Layout(tuple(l.size for l in leaves),
                                      tuple(l.modulus for l in leaves))
    self._secure_types = secure_types
    self.pod_round = self._build_pod_round(mask_root)
    self.merge_partials = self._build_merge()
    self.partial_type = self.merge_partials.type_signature.result

  def _build_pod_round(self, mask_root: str) -> tff.Computation:
    mrf, leaves = self.mrf, self.leaves
    work_type = mrf.work.type_signature
    key_type, broadcast_type = work_type.parameter[0], work_type.parameter[1]
    secure_types = self._secure_types
    masked_type = [computation_types.TensorType(np.int64, l.shape)
                   for l in leaves]
    prefix = f'{mask_root}/{secagg_masks.MASK_DIR}/'

    @tff.tensorflow.computation(*secure_types, key_type, tf.string)
    def add_masks(bitwidth_part, max_input_part, modular_part, key, tag):
      client_id = tf.strings.split(key, sep='#')[0]
      path = tf.strings.join([prefix, tag, '/', client_id,
                              secagg_masks.MASK_SUFFIX])
      mask = tf.io.decode_raw(tf.io.read_file(path), tf.int64,
                              little_endian=True)
      size_ok = tf.debugging.assert_equal(
          tf.size(mask), sum(l.size for l in leaves),
          message='SecAgg mask file has the wrong size')
      values = (_flat_values(bitwidth_part) + _flat_values(max_input_part) +
                _flat_values(modular_part))
      out, offset = [], 0
      with tf.control_dependencies([size_ok]):
        for value, leaf in zip(values, leaves):
          part = tf.reshape(mask[offset:offset + leaf.size], leaf.shape)
          offset += leaf.size
          out.append(tf.math.floormod(tf.cast(value, tf.int64) + part,
                                      leaf.modulus))
      return out

    @tff.tensorflow.computation
    def zero_sums():
      return [tf.zeros(l.shape, tf.int64) for l in leaves]

    @tff.tensorflow.computation(masked_type, masked_type)
    def add_mod(a, b):
      return [tf.math.floormod(x + y, l.modulus)
              for x, y, l in zip(a, b, leaves)]

    @tff.tensorflow.computation(masked_type)
    def identity_sums(a):
      return a

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
      masked = tff.federated_map(
          add_masks, (work[1], work[2], work[3], keys,
                      tff.federated_broadcast(tag)))
      accumulator = tff.federated_aggregate(
          work[0], mrf.zero(), mrf.accumulate, mrf.merge, identity_accumulator)
      sums = tff.federated_aggregate(masked, zero_sums(), add_mod, add_mod,
                                     identity_sums)
      return tff.federated_zip((accumulator, sums))

    self._add_mod = add_mod
    return pod_round

  def _build_merge(self) -> tff.Computation:
    mrf, add_mod = self.mrf, self._add_mod
    partial_type = self.pod_round.type_signature.result.member

    @tff.federated_computation(partial_type, partial_type)
    def merge_partials(a, b):
      return (mrf.merge(a[0], b[0]), add_mod(a[1], b[1]))

    return merge_partials

  def prepare(self, state):
    """The broadcast of a round (runs in the current context)."""
    return self.mrf.prepare(state)

  def finish(self, state, merged) -> Any:
    """`report` + `update` on the merged partial; returns `comp`'s output."""
    accumulator, sums = merged[0], merged[1]
    sums = [np.asarray(s) for s in _flat_values(sums)]
    flat = []
    for value, leaf in zip(sums, self.leaves):
      unmasked = np.mod(value.astype(np.int64), leaf.modulus)
      flat.append(unmasked.astype(leaf.dtype).reshape(leaf.shape))
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


class LocalSecureRound:
  """Secure rounds on the local runtime.

  One process holds every key here, so this protects nothing by itself; it
  runs the same masks and modular sums as the pods, so a local run trains the
  model a distributed SecAgg run would.
  """

  def __init__(self, form: SecureForm, mask_root: str,
               set_participants: Optional[Callable[[Any, int], Any]] = None):
    self._form = form
    self._root = mask_root
    self._secret = secagg_masks.new_secret()
    self._set_participants = set_participants or (lambda state, n: state)

  def __call__(self, state, keys: Sequence[str], client_ids: Sequence[str],
               round_num: int):
    state = self._set_participants(state, len(client_ids))
    tag = round_tag(round_num, 1, client_ids)
    pod = secagg_masks.PodKeys(self._secret, client_ids)
    pod.prepare_round(self._root, {
        'tag': tag, 'clients': list(client_ids),
        'public_keys': pod.public_keys, 'layout': self._form.layout.to_json()})
    merged = self._form.pod_round(self._form.prepare(state), list(keys), tag)
    return self._form.finish(state, merged), None


class RemoteSecureRound:
  """Secure rounds on the edge pods: masks made on the pods, sums merged.

  A round in which any pod or edge server fails is redone among the clients
  of the pods that did not fail, under a new tag (fresh masks); partial sums
  of a failed attempt are dropped, never unmasked.
  """

  def __init__(self, cluster: distributed.Cluster,
               view: distributed.ClusterView, form: SecureForm,
               merge_executor, round_timeout: Optional[float] = None,
               retries: int = 3, retry_wait: float = 5.0,
               set_participants: Optional[Callable[[Any, int], Any]] = None):
    missing = [c.client_id for c in view.manifest.clients
               if c.client_id not in view.public_keys]
    if missing:
      raise distributed.ClusterError(
          f'the pods publish no SecAgg public key for clients {missing[:5]}; '
          'update the edge pods to a version with SecAgg')
    self._form = form
    self._view = view
    self._set_participants = set_participants or (lambda state, n: state)
    self._retries = retries
    self._retry_wait = retry_wait
    self._round = distributed.DistributedRound(
        cluster, view, form.comp, merge_executor, round_timeout=round_timeout,
        retries=retries, retry_wait=retry_wait,
        stages=(form.pod_round, form.merge_partials))

  def __call__(self, state, keys: Sequence[str], client_ids: Sequence[str],
               round_num: int):
    self._round.check_routable(client_ids)
    report = distributed.RoundReport(failures=[])
    key_of = dict(zip(client_ids, keys))
    failed_pods: set[str] = set()
    for attempt in range(1, self._retries + 2):
      report.attempts = attempt
      survivors = [c for c in client_ids
                   if self._view.pod_of[c] not in failed_pods]
      if not survivors:
        if attempt > self._retries:
          break
        logging.warning('round %d: every pod failed; retrying in %.0fs',
                        round_num, self._retry_wait)
        time.sleep(self._retry_wait)
        failed_pods.clear()  # Restarted pods may be back.
        survivors = list(client_ids)
      tag = round_tag(round_num, attempt, survivors)
      # Per attempt: the survivors' count (distributed DP noise shares).
      attempt_state = self._set_participants(state, len(survivors))
      broadcast = self._form.prepare(attempt_state)
      secagg = {'tag': tag,
                'public_keys': {c: self._view.public_keys[c]
                                for c in survivors},
                'layout': self._form.layout.to_json()}
      before = set(failed_pods)
      partials = self._round.fan_out(
          (broadcast, [key_of[c] for c in survivors], tag), survivors,
          failed_pods, report, secagg=secagg)
      if partials and failed_pods == before:
        report.participants = survivors
        return self._form.finish(attempt_state,
                                 self._round.merge(partials)), report
      logging.warning('round %d attempt %d: pods %s failed; redoing the '
                      'secure sum among the others with fresh masks',
                      round_num, attempt, sorted(failed_pods - before))
    raise distributed.ClusterError(
        f'secure round {round_num} failed after {self._retries + 1} attempts: '
        f'{report.causes()}; check that the pods are running')
