"""The round loop: sample, train, record, evaluate, checkpoint.

Everything the loop needs comes in as explicit objects: the learning
process and its state, a round runner and an evaluator (`rounds`), the
schedule (who is sampled, how often to evaluate), where rows and
checkpoints go, and hooks that add fields to each row (privacy) or watch
rows (progress, tracking, metrics endpoints).
"""

from __future__ import annotations

import collections
import dataclasses
import time
from typing import Any, Callable, Optional, Sequence

from absl import logging
import tensorflow_federated as tff

from tff_pipeline.learning import checkpoint
from tff_pipeline.learning import metrics_io
from tff_pipeline.learning import rounds as rounds_lib

# Rows name the clients of a round up to this many; beyond, they carry how
# many (`<field>_count`), so a row stays small at 1,000 clients per round.
MAX_LISTED_IDS = 100

# (round, the process output's metrics or None) -> fields for the row.
Annotator = Callable[[int, Optional[Any]], dict[str, Any]]
# Called with each round's row once it is saved.
RowHook = Callable[[dict[str, Any]], None]


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Which rounds run, who takes part, when to evaluate.

  Attributes:
    first_round: The first round to run (1, or the one after a checkpoint).
    last_round: The last round to run.
    eval_every: Evaluate every N rounds (and after the last); 0: only then.
    sample: Round -> the sampled client ids (may be empty).
    client_key: (client id, round) -> the client key its dataset is read by.
  """
  first_round: int
  last_round: int
  eval_every: int
  sample: Callable[[int], list[str]]
  client_key: Callable[[str, int], str]

  def evaluates(self, round_num: int) -> bool:
    due = self.eval_every and round_num % self.eval_every == 0
    return bool(due) or round_num == self.last_round


@dataclasses.dataclass
class LoopResult:
  state: Any
  rows: list[dict[str, Any]]
  last_eval: Optional[dict[str, float]]


def train_metrics(metrics: Any) -> dict[str, Any]:
  """The `train` part of a row from a process output's metrics."""
  train = metrics['client_work']['train']
  row = {name: float(value) for name, value in train.items()
         if name not in ('num_examples', 'num_batches')}
  if 'num_examples' in train:  # Fed Recon reports no counts.
    row['num_examples'] = int(train['num_examples'])
  return row


def _without_ids(text: str, client_ids: Sequence[str]) -> str:
  for client in sorted(client_ids, key=len, reverse=True):
    text = text.replace(client, '<client>')
  return text


def _party_counts(summary: dict[str, Any]) -> dict[str, Any]:
  """A SecAgg+ summary without party names: lists become their lengths and
  `dropped` (party -> stage) becomes stage -> how many dropped there."""
  out = {}
  for key, value in summary.items():
    if key == 'dropped':
      value = dict(sorted(collections.Counter(value.values()).items()))
    elif isinstance(value, (list, tuple)):
      value = len(value)
    out[key] = value
  return out


def ids_field(name: str, ids: Sequence[str],
              limit: int = MAX_LISTED_IDS) -> dict[str, Any]:
  """{name: ids} for at most `limit` ids, else {name + '_count': len(ids)}.

  A negative limit never lists them (DP runs release counts, not ids).
  """
  if len(ids) <= limit:
    return {name: list(ids)}
  return {f'{name}_count': len(ids)}


def _report_fields(report: Optional[rounds_lib.RoundReport], limit: int,
                   sampled: Sequence[str]) -> dict[str, Any]:
  """The report's part of a row; `limit` as in ids_field (< 0: DP run)."""
  if report is None:
    return {}
  release_ids = limit >= 0
  failures = []
  for failure in report.failures:
    failure = dict(failure)
    ids = failure.pop('clients', None)
    if ids is not None:
      failure.update(ids_field('clients', ids, limit))
    if not release_ids and isinstance(failure.get('error'), str):
      # A path may name a client.
      failure['error'] = _without_ids(failure['error'], sampled)
    failures.append(failure)
  fields = {'failures': failures, 'network': report.network(),
            'pod_seconds': report.pod_seconds}
  if report.participants is not None:
    fields.update(ids_field('participants', report.participants, limit))
  if getattr(report, 'secagg', None) is not None:
    # Locally the SecAgg+ parties are the clients: counts, as above.
    names = max((len(value) for value in report.secagg.values()
                 if isinstance(value, (list, tuple, dict))), default=0)
    fields['secagg'] = (report.secagg if names <= limit
                        else _party_counts(report.secagg))
  if getattr(report, 'skipped', ''):
    fields['skipped'] = report.skipped
  return fields


def run(process: tff.learning.templates.LearningProcess, state: Any,
        runner: rounds_lib.RoundRunner, evaluator: rounds_lib.Evaluator,
        schedule: Schedule, writer: metrics_io.MetricsWriter,
        checkpoints: checkpoint.RoundCheckpoints,
        annotators: Sequence[Annotator] = (),
        hooks: Sequence[RowHook] = (),
        release_ids: bool = True) -> LoopResult:
  """Runs rounds schedule.first_round..last_round.

  Each round saves its checkpoint (with its row) before it releases the row
  (metrics.jsonl, hooks): nothing about a round is released that a resumed
  run could redo differently. A crash before the checkpoint redoes the round
  on resume; a crash after it loses no row (the caller writes the saved
  one).

  Args:
    release_ids: False (DP runs): rows carry how many clients were sampled
      and took part (`clients_count`, `participants_count`, failures'
      `clients_count`), not who. True: rows list the ids up to
      MAX_LISTED_IDS per field, and beyond that carry the same counts.

  Returns:
    The final state, the rows of this invocation and the last evaluation.
  """
  rows: list[dict[str, Any]] = []
  last_eval: Optional[dict[str, float]] = None
  id_limit = MAX_LISTED_IDS if release_ids else -1
  for round_num in range(schedule.first_round, schedule.last_round + 1):
    sampled = schedule.sample(round_num)
    start = time.monotonic()
    metrics, report = None, None
    if sampled:
      keys = [schedule.client_key(c, round_num) for c in sampled]
      output, report = runner(state, keys, sampled, round_num)
      if output is not None:  # None: the round was skipped (secure rounds).
        state, metrics = output.state, output.metrics
    else:
      # Poisson sampling drew nobody: nothing trains and nothing is released.
      logging.warning('round %d: no client sampled; the model is unchanged',
                      round_num)
    row: dict[str, Any] = {
        'round': round_num,
        'round_seconds': time.monotonic() - start,
        **ids_field('clients', sampled, id_limit),
        'train': train_metrics(metrics) if metrics is not None else {},
        **_report_fields(report, id_limit, sampled),
    }
    for annotate in annotators:
      row.update(annotate(round_num, metrics))
    if schedule.evaluates(round_num):
      eval_start = time.monotonic()
      last_eval = evaluator.evaluate(process.get_model_weights(state))
      if last_eval:  # An evaluator may withhold it (DP runs).
        row['eval'] = last_eval
        row['eval_seconds'] = time.monotonic() - eval_start
    checkpoints.save(state, round_num, row=row)
    writer.write(row)
    rows.append(row)
    for hook in hooks:
      hook(row)
  return LoopResult(state=state, rows=rows, last_eval=last_eval)
