"""The contract of a round, and of an evaluation, as the loop calls them.

Like Flower's `Strategy`, one explicit interface says what a round is; who
runs it (the local runtime, the edge pods through their edge servers, a
secure round with real masks) is the runner's business:

  runner(state, keys, client_ids, round_num) -> (process output, report)

`keys[i]` is the client key (id + shuffle seed) of `client_ids[i]`; the
output is the learning process's `next` output, or None when the round was
skipped and nothing released (a secure round below its threshold; the
report's `skipped` says why); the report says what the round cost and who
failed (None on the local runtime).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Protocol, Sequence

from absl import logging

import tensorflow_federated as tff
from tensorflow_federated.python.core.backends.native import mergeable_comp_compiler
from tensorflow_federated.python.core.impl.types import type_conversions


class RoundReport(Protocol):
  """What a distributed round reports besides its output."""
  failures: list[dict[str, Any]]
  pod_seconds: dict[str, float]
  participants: Optional[list[str]]

  def network(self) -> dict[str, int]:
    """Bytes per tier and direction."""


class RoundRunner(Protocol):
  """Runs one round of the learning process over the sampled clients."""

  def __call__(self, state: Any, keys: Sequence[str],
               client_ids: Sequence[str], round_num: int
               ) -> tuple[Any, Optional[RoundReport]]:
    ...


class Evaluator(Protocol):
  """Scores model weights (held-out data, central or federated)."""

  def evaluate(self, weights: tff.learning.models.ModelWeights
               ) -> dict[str, float]:
    ...


# Clients per call of the local runtime. TFF's runtime keeps every client's
# result of a call until it aggregates them: 1,000 clients of the 2NN in one
# call peaked at 5.8 GB (bench/scale.py), 100 at 1.4 GB.
LOCAL_CHUNK_CLIENTS = 100


class ChunkedRound:
  """A round of `process.next` run over its clients in chunks.

  The round is compiled once into TFF's mergeable form, as the edge servers
  run it: `up_to_merge` on each chunk of at most `max_clients`, `merge`
  folding the partials, `after_merge` once on the server. Aggregates that
  sum exactly (the default weighted mean) give the same model as one call.
  Rounds of at most `max_clients` clients are one call of `process.next`.
  Secure rounds cannot use it (the mergeable form refuses secure sums).
  """

  def __init__(self, process: tff.learning.templates.LearningProcess,
               max_clients: int = LOCAL_CHUNK_CLIENTS):
    if max_clients < 1:
      raise ValueError(f'max_clients must be >= 1, got {max_clients}')
    self._next = process.next
    self._max_clients = max_clients
    self._form = None  # Compiled on the first round that needs it.

  def __call__(self, state, keys, client_ids, round_num):
    del client_ids, round_num
    keys = list(keys)
    if len(keys) <= self._max_clients:
      return self._next(state, keys), None
    if self._form is None:
      try:
        self._form = mergeable_comp_compiler.compile_to_mergeable_comp_form(
            self._next)
      except (TypeError, ValueError) as e:  # E.g. an intrinsic it refuses.
        logging.warning('rounds run in one call: no mergeable form (%s)', e)
        self._max_clients = math.inf
        return self._next(state, keys), None
    form = self._form
    merged = None
    for start in range(0, len(keys), self._max_clients):
      partial = form.up_to_merge(state, keys[start:start + self._max_clients])
      merged = partial if merged is None else form.merge(merged, partial)
    result = form.after_merge([state, keys], merged)
    return type_conversions.type_to_py_container(
        result, self._next.type_signature.result), None


class CheckedRound:
  """`runner`, calling `check(client_ids)` before each round.

  E.g. verifies the sampled clients' shards when they are first used
  (`data_prep.shards.ShardVerifier`) instead of every shard at start.
  """

  def __init__(self, runner: RoundRunner,
               check: Callable[[Sequence[str]], Any]):
    self._runner = runner
    self._check = check

  def __call__(self, state, keys, client_ids, round_num):
    self._check(client_ids)
    return self._runner(state, keys, client_ids, round_num)
