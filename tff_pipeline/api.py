"""The public Python API; `python -m tff_pipeline.train` is a thin shell on it.

    import tff_pipeline
    result = tff_pipeline.train(task='fashion_mnist', model='2nn', rounds=5)
    result.model.predict(images)       # the trained global Keras model
    result.rows[-1]['eval']            # the metrics, as in metrics.jsonl

`train(**options)` takes the training options (the flags of
`tff_pipeline.train`, by name); `run(config)` takes a resolved `TrainConfig`.
A run writes its outputs to `output_dir` (metrics.jsonl, summary.json,
TensorBoard events, checkpoints) and resumes from them with resume=True.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable, Optional

import tensorflow as tf

from data_prep.errors import UserError
from tff_pipeline import plan
from tff_pipeline.core import config as config_lib
from tff_pipeline.core.config import TrainConfig
from tff_pipeline.learning import algorithms
from tff_pipeline.learning import checkpoint
from tff_pipeline.learning import loop
from tff_pipeline.learning import metrics_io
from tff_pipeline.learning import progress as progress_lib
from tff_pipeline.tasks import base as task_base

CONFIG_FILE = 'config.json'
CHECKPOINT_DIR = 'checkpoints'
# Flags that may change between a run and its resumption.
_RESUMABLE_CHANGES = frozenset(
    {'resume', 'progress', 'rounds', 'eval_every', 'eval_batch_size',
     'keep_checkpoints', 'output_dir', 'metrics_port',
     # Where rounds run does not change their result.
     'executor', 'topology', 'tls_dir', 'round_timeout', 'round_retries'})


@dataclasses.dataclass
class RunResult:
  """What a run gives back.

  Attributes:
    state: The final server state of the learning process.
    rows: This invocation's metrics rows (as written to metrics.jsonl).
    summary: What summary.json holds.
    task: The bound task (its model builder, data and metrics).
    weights: The final global model weights.
  """
  state: Any
  rows: list[dict[str, Any]]
  summary: dict[str, Any]
  task: task_base.Task
  weights: Any

  @functools.cached_property
  def model(self) -> tf.keras.Model:
    """The trained global model as a Keras model (a fresh copy each run)."""
    model = self.task.model_builder()
    self.weights.assign_weights_to(model)
    return model


def _check_output_dir(config: TrainConfig) -> None:
  """Refuses to overwrite a run, or to resume a different one."""
  saved_path = os.path.join(config.output_dir, CONFIG_FILE)
  has_run = os.path.exists(saved_path) or os.path.exists(
      os.path.join(config.output_dir, metrics_io.METRICS_FILE))
  if not config.resume:
    if has_run:
      raise UserError(
          f'--output_dir={config.output_dir} already holds a run; pass --resume '
          'to continue it, or choose another --output_dir')
    return
  if not os.path.exists(saved_path):
    raise UserError(f'--resume: {saved_path} not found; is --output_dir the '
                    'folder of the run to continue?')
  with open(saved_path, encoding='utf-8') as f:
    saved = json.load(f)
  current = config_lib.to_dict(config)
  changed = sorted(k for k in current if k not in _RESUMABLE_CHANGES
                   and k in saved and saved[k] != current[k])
  if changed:
    diffs = ', '.join(f'{k}: {saved[k]!r} -> {current[k]!r}' for k in changed)
    raise UserError(f'--resume: the config differs from the run in '
                    f'{config.output_dir} ({diffs}); use the original values')


def _save_config(config: TrainConfig) -> None:
  os.makedirs(config.output_dir, exist_ok=True)
  path = os.path.join(config.output_dir, CONFIG_FILE)
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    json.dump(config_lib.to_dict(config), f, indent=2, sort_keys=True)
  os.replace(path + '.tmp', path)


def _check_population(config: TrainConfig, task: task_base.Task) -> list[str]:
  client_ids = task.manifest.client_ids()
  if config.num_clients and config.num_clients != len(client_ids):
    raise UserError(f'{task.manifest.shard_dir} holds {len(client_ids)} '
                    f'clients, not --num_clients={config.num_clients}; lower '
                    '--num_clients or rebuild the shards')
  if config.clients_per_round > len(client_ids):
    raise UserError(f'--clients_per_round={config.clients_per_round} but the '
                    f'data has only {len(client_ids)} clients; lower it')
  return client_ids


def run(config: TrainConfig,
        on_round: Optional[Callable[[dict[str, Any]], None]] = None
        ) -> RunResult:
  """Trains for `config.rounds` rounds, resuming if asked.

  Args:
    config: A config from `plan.resolve_config` (or `train`).
    on_round: Called with each round's metrics row after it is saved.

  Returns:
    The final state and model, this invocation's rows and the summary.

  Raises:
    UserError: a bad config, data, cluster or output dir (one line).
  """
  wall_start = time.monotonic()
  _check_output_dir(config)
  run_setup = plan.setup(config)
  try:
    task = run_setup.task
    client_ids = _check_population(config, task)
    _save_config(config)
    tf.keras.utils.set_random_seed(config.seed)
    process = plan.training_process(config, task)
    evaluator = run_setup.evaluator()
    runner = run_setup.round_runner(process)
    checkpoints = checkpoint.RoundCheckpoints(
        os.path.join(config.output_dir, CHECKPOINT_DIR),
        config.keep_checkpoints)
    state = algorithms.initial_state(process, task)
    first_round = 1
    if config.resume:
      state, last_round = checkpoints.load_latest(state)
      first_round = last_round + 1
    writer = metrics_io.MetricsWriter(
        config.output_dir,
        keep_through_round=first_round - 1 if config.resume else None)
    bar = progress_lib.Progress(config.rounds, first_round,
                                enabled=config.progress)
    privacy_row = plan.privacy_annotator(config, len(client_ids))
    hooks = [lambda row: bar.update(row['round'], row['train'],
                                    row.get('eval'))]
    if on_round is not None:
      hooks.append(on_round)
    try:
      result = loop.run(process, state, runner, evaluator,
                        plan.schedule(config, client_ids, first_round),
                        writer, checkpoints,
                        annotators=[privacy_row] if privacy_row else [],
                        hooks=hooks)
    finally:
      writer.close()
    all_rows = metrics_io.read_metrics(config.output_dir)
    last_eval = result.last_eval
    if last_eval is None:  # Resumed after the last round.
      evaluated = [r for r in all_rows if 'eval' in r]
      last_eval = evaluated[-1]['eval'] if evaluated else evaluator.evaluate(
          process.get_model_weights(result.state))
    round_seconds = [r['round_seconds'] for r in all_rows]
    summary = {
        'final_round': config.rounds,
        'final_eval': last_eval,
        'final_train': all_rows[-1]['train'] if all_rows else None,
        'config': config_lib.to_dict(config),
        'config_sections': config_lib.to_yaml_sections(config),
        'shard_dir': plan.shard_dir_label(config, run_setup),
        'versions': metrics_io.library_versions(),
        'wall_seconds': time.monotonic() - wall_start,
        'round_seconds_total': sum(round_seconds),
        'mean_round_seconds': sum(round_seconds) / max(1, len(round_seconds)),
        'resumed_from_round': first_round - 1 if config.resume else None,
    }
    if task.eval_note:
      summary['eval_note'] = task.eval_note
    if privacy_row is not None:
      summary['privacy'] = privacy_row.ledger.after(config.rounds)
    metrics_io.write_summary(config.output_dir, summary)
    return RunResult(state=result.state, rows=result.rows, summary=summary,
                     task=task, weights=process.get_model_weights(result.state))
  finally:
    # Only now: the evaluation above may still run on the cluster.
    run_setup.close()


def train(**options: Any) -> RunResult:
  """Trains with the given training options (the CLI's flags, by name).

  Example: `train(task='mnist', model='2nn', rounds=5, num_clients=20)`.
  Options not given take the task's defaults, then the global ones.

  Raises:
    UserError: an unknown option or a bad value (one line).
  """
  unknown = sorted(set(options) - set(config_lib.OPTION_FIELDS))
  if unknown:
    raise UserError(f'unknown training options {unknown}; see '
                    '`python -m tff_pipeline.train --helpfull`')
  return run(plan.resolve_config({}, options))
