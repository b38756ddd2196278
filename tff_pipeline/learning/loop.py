"""The round loop: sample, train, record, evaluate, checkpoint.

Everything the loop needs comes in as explicit objects: the learning
process and its state, a round runner and an evaluator (`rounds`), the
schedule (who is sampled, how often to evaluate), where rows and
checkpoints go, and hooks that add fields to each row (privacy) or watch
rows (progress, tracking, metrics endpoints).
"""

from __future__ import annotations

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


def ids_field(name: str, ids: Sequence[str],
              limit: int = MAX_LISTED_IDS) -> dict[str, Any]:
  """{name: ids} for at most `limit` ids, else {name + '_count': len(ids)}."""
  if len(ids) <= limit:
    return {name: list(ids)}
  return {f'{name}_count': len(ids)}


def _report_fields(report: Optional[rounds_lib.RoundReport]
                   ) -> dict[str, Any]:
  if report is None:
    return {}
  failures = []
  for failure in report.failures:
    failure = dict(failure)
    if 'clients' in failure:
      failure.update(ids_field('clients', failure.pop('clients')))
    failures.append(failure)
  fields = {'failures': failures, 'network': report.network(),
            'pod_seconds': report.pod_seconds}
  if report.participants is not None:
    fields.update(ids_field('participants', report.participants))
  return fields


def run(process: tff.learning.templates.LearningProcess, state: Any,
        runner: rounds_lib.RoundRunner, evaluator: rounds_lib.Evaluator,
        schedule: Schedule, writer: metrics_io.MetricsWriter,
        checkpoints: checkpoint.RoundCheckpoints,
        annotators: Sequence[Annotator] = (),
        hooks: Sequence[RowHook] = ()) -> LoopResult:
  """Runs rounds schedule.first_round..last_round.

  Each round writes its metrics row, then its checkpoint: a crash in
  between redoes the round on resume.

  Returns:
    The final state, the rows of this invocation and the last evaluation.
  """
  rows: list[dict[str, Any]] = []
  last_eval: Optional[dict[str, float]] = None
  for round_num in range(schedule.first_round, schedule.last_round + 1):
    sampled = schedule.sample(round_num)
    start = time.monotonic()
    metrics, report = None, None
    if sampled:
      keys = [schedule.client_key(c, round_num) for c in sampled]
      output, report = runner(state, keys, sampled, round_num)
      state, metrics = output.state, output.metrics
    else:
      # Poisson sampling drew nobody: nothing trains and nothing is released.
      logging.warning('round %d: no client sampled; the model is unchanged',
                      round_num)
    row: dict[str, Any] = {
        'round': round_num,
        'round_seconds': time.monotonic() - start,
        **ids_field('clients', sampled),
        'train': train_metrics(metrics) if metrics is not None else {},
        **_report_fields(report),
    }
    for annotate in annotators:
      row.update(annotate(round_num, metrics))
    if schedule.evaluates(round_num):
      eval_start = time.monotonic()
      last_eval = evaluator.evaluate(process.get_model_weights(state))
      row['eval'] = last_eval
      row['eval_seconds'] = time.monotonic() - eval_start
    writer.write(row)
    checkpoints.save(state, round_num)
    rows.append(row)
    for hook in hooks:
      hook(row)
  return LoopResult(state=state, rows=rows, last_eval=last_eval)
