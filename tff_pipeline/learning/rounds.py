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

from typing import Any, Callable, Optional, Protocol, Sequence

import tensorflow_federated as tff


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


class LocalRound:
  """A round of `process.next` in the current TFF context."""

  def __init__(self, process: tff.learning.templates.LearningProcess):
    self._next = process.next

  def __call__(self, state, keys, client_ids, round_num):
    del client_ids, round_num
    return self._next(state, list(keys)), None


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
