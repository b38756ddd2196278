"""The public Python API; `python -m tff_pipeline.train` is a thin shell on it.

    import tff_pipeline
    result = tff_pipeline.train(task='fashion_mnist', model='2nn', rounds=5)
    result.model.predict(images)       # the trained global Keras model
    result.rows[-1]['eval']            # the metrics, as in metrics.jsonl

Your own task: `task_from_arrays(name, model_fn, clients={id: (x, y)},
eval_data=(x, y), loss=..., metrics=...)`, or any task family object
(`tff_pipeline.tasks.base.TaskFamily`) passed as `train(task=family)`.

`train(**options)` takes the training options (the flags of
`tff_pipeline.train`, by name); `run(config)` takes a resolved `TrainConfig`.
A run writes its outputs to `output_dir` (metrics.jsonl, summary.json,
TensorBoard events, checkpoints, and the final global model as a SavedModel
and a TFLite file in model/) and resumes from them with resume=True;
`export(output_dir, round_num)` exports the model of any kept checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Mapping
from typing import Any, Callable, Optional

from absl import logging
import tensorflow as tf

from data_prep import shards
from data_prep.errors import UserError
from tff_pipeline import model_export
from tff_pipeline import plan
from tff_pipeline.core import config as config_lib
from tff_pipeline.core.config import TrainConfig
from tff_pipeline.learning import algorithms
from tff_pipeline.learning import checkpoint
from tff_pipeline.learning import loop
from tff_pipeline.learning import metrics_io
from tff_pipeline.learning import progress as progress_lib
from tff_pipeline.learning import tracking
from tff_pipeline.tasks import arrays
from tff_pipeline.tasks import base as task_base
from tff_pipeline.tasks import registry as task_registry
from workers import local_runtime
from workers import topology as topology_lib

CONFIG_FILE = 'config.json'
CHECKPOINT_DIR = 'checkpoints'
MODEL_DIR = 'model'  # The exported model; tracked as an artifact.
# Flags that may change between a run and its resumption.
_RESUMABLE_CHANGES = frozenset(
    {'resume', 'progress', 'rounds', 'eval_every', 'eval_batch_size',
     'keep_checkpoints', 'output_dir', 'metrics_port', 'tracking',
     'wandb_project', 'wandb_name',
     # Where rounds run does not change their result.
     'executor', 'topology', 'tls_dir', 'insecure', 'round_timeout',
     'liveness_timeout', 'round_retries'})


@dataclasses.dataclass
class RunResult:
  """What a run gives back.

  Attributes:
    state: The final server state of the learning process.
    rows: This invocation's metrics rows (as written to metrics.jsonl).
    summary: What summary.json holds.
    task: The bound task (its model builder, data and metrics).
    weights: The final global model weights.
    exported: The SavedModel and TFLite file written from them (None if the
      export failed; summary['model'] says why).
  """
  state: Any
  rows: list[dict[str, Any]]
  summary: dict[str, Any]
  task: task_base.Task
  weights: Any
  exported: Optional[model_export.Exported] = None

  @functools.cached_property
  def model(self) -> tf.keras.Model:
    """The trained global model as a Keras model (a fresh copy each run)."""
    return model_export.keras_model(self.task, self.weights)


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


def _restore_last_row(writer: metrics_io.MetricsWriter,
                      checkpoints: checkpoint.RoundCheckpoints,
                      output_dir: str, last_round: int) -> None:
  """Writes the checkpointed round's row if a crash kept it from the file."""
  if any(r['round'] == last_round
         for r in metrics_io.read_metrics(output_dir)):
    return
  row = checkpoints.saved_row(last_round)
  if row is not None:
    writer.write(row)


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
  trackers = tracking.Trackers([])
  try:
    task = run_setup.task
    client_ids = _check_population(config, task)
    _save_config(config)
    tf.keras.utils.set_random_seed(config.seed)
    dim = plan.model_dim(task) if plan.needs_model_dim(config) else 0
    process = plan.training_process(config, task, dim)
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
    # DP runs: the sample is drawn with a secret key kept in the checkpoint
    # folder (not --seed, which is public), so a resumed run draws the
    # uninterrupted run's samples.
    sampler_key = (checkpoints.sampler_key(create=not config.resume)
                   if plan.is_private(config) else None)
    trackers_wanted = config_lib.tracker_names(config.tracking)
    params = config_lib.to_dict(config)
    trackers = tracking.build(trackers_wanted, config.output_dir, params,
                              config.wandb_project, config.wandb_name,
                              config.resume)
    writer = metrics_io.MetricsWriter(
        config.output_dir,
        keep_through_round=first_round - 1 if config.resume else None,
        tensorboard='tensorboard' in trackers_wanted, params=params)
    if config.resume:
      _restore_last_row(writer, checkpoints, config.output_dir,
                        first_round - 1)
    bar = progress_lib.Progress(config.rounds, first_round,
                                enabled=config.progress)
    privacy_row = plan.privacy_annotator(config, len(client_ids), dim)
    hooks = [bar.update, trackers.log_round]
    if on_round is not None:
      hooks.append(on_round)
    try:
      result = loop.run(process, state, runner, evaluator,
                        plan.schedule(config, client_ids, first_round,
                                      sampler_key),
                        writer, checkpoints,
                        annotators=[privacy_row] if privacy_row else [],
                        hooks=hooks,
                        release_ids=plan.releases_client_ids(config))
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
    weights = process.get_model_weights(result.state)
    exported = _export_final(task, weights, config)
    summary['model'] = (exported.to_json() if isinstance(
        exported, model_export.Exported) else {'problem': exported})
    summary_path = metrics_io.write_summary(config.output_dir, summary)
    # Last: the exported model (<output_dir>/model) goes in as an artifact.
    trackers.close(artifacts=[os.path.join(config.output_dir, MODEL_DIR),
                              summary_path])
    return RunResult(state=result.state, rows=result.rows, summary=summary,
                     task=task, weights=weights,
                     exported=exported if isinstance(
                         exported, model_export.Exported) else None)
  except BaseException:
    trackers.close(failed=True)  # Marks the MLflow and W&B runs failed.
    raise
  finally:
    # Only now: the evaluation above may still run on the cluster.
    run_setup.close()


def _export_final(task: task_base.Task, weights: Any, config: TrainConfig
                  ) -> model_export.Exported | str:
  """Writes <output_dir>/model/; a failure is reported, not raised.

  The run has finished and its checkpoints are saved: an export problem
  (e.g. a user's model Keras cannot save) must not lose it;
  `python -m tff_pipeline.export` can retry from the checkpoint.
  """
  try:
    return model_export.export_model(
        task, weights, os.path.join(config.output_dir, model_export.MODEL_DIR),
        config.rounds)
  except Exception as e:  # pylint: disable=broad-except
    problem = (f'model export failed ({type(e).__name__}: '
               f'{" ".join(str(e).split())[:300]})')
    logging.warning('%s', problem)
    return problem


def describe_export(exported: model_export.Exported) -> str:
  """One line: where the model went (and why there is no TFLite file)."""
  where = (f'model of round {exported.round}: {exported.saved_model}'
           if exported.round is not None else f'model: {exported.saved_model}')
  if exported.tflite:
    flex = ('; it uses Select TF ops: run it with TFLite\'s Flex delegate'
            if exported.tflite_ops == model_export.BUILTINS_AND_TF else '')
    return f'{where}, {exported.tflite} ({exported.seconds:.1f}s){flex}'
  return f'{where}; {exported.tflite_problem}'


def read_run_config(output_dir: str) -> TrainConfig:
  """The resolved config a run saved in `<output_dir>/config.json`.

  Raises:
    UserError: no such run.
  """
  path = os.path.join(output_dir, CONFIG_FILE)
  try:
    with open(path, encoding='utf-8') as f:
      saved = json.load(f)
  except FileNotFoundError:
    raise UserError(f'{path} not found; give the --output_dir of a training '
                    'run') from None
  except (OSError, json.JSONDecodeError) as e:
    raise UserError(f'cannot read {path} ({e}); give the --output_dir of a '
                    'training run') from None
  # Options added or removed since the run keep their defaults.
  known = {k: v for k, v in saved.items() if k in config_lib.OPTION_FIELDS}
  return TrainConfig(**known)


def export(output_dir: str, round_num: Optional[int] = None,
           model_dir: str = '', shard_dir: str = '') -> model_export.Exported:
  """Exports the global model of a run's checkpoint.

  Args:
    output_dir: The run's folder (config.json, checkpoints/).
    round_num: The checkpoint's round; None for the latest.
    model_dir: Where to write; '' for `<output_dir>/model` (latest round)
      or `<output_dir>/model_round_<N>` (an earlier one).
    shard_dir: Shards of the run's data to bind the task to (its number of
      classes and input shape); '' for the run's own (local runs) or the
      topology's eval_data (runs on edge pods).

  Raises:
    UserError: no run, no such checkpoint, or no data to bind the task to.
  """
  config = read_run_config(output_dir)
  if shard_dir:
    manifest = shards.load_manifest(shard_dir)
  elif config.executor == 'remote':
    manifest = _eval_manifest_of(config)
  else:
    manifest = plan.prepare_shards(config)
  task = plan.bind_task(config, manifest)
  local_runtime.ensure_local_runtime(1)
  process = plan.training_process(config, task)
  checkpoints = checkpoint.RoundCheckpoints(
      os.path.join(output_dir, CHECKPOINT_DIR), config.keep_checkpoints)
  template = algorithms.initial_state(process, task)
  latest = checkpoints.latest_round()
  state, round_num = checkpoints.load_round(template, round_num)
  if not model_dir:
    model_dir = os.path.join(
        output_dir, model_export.MODEL_DIR if round_num == latest else
        f'{model_export.MODEL_DIR}_round_{round_num}')
  return model_export.export_model(task, process.get_model_weights(state),
                                   model_dir, round_num)


def _eval_manifest_of(config: TrainConfig) -> shards.Manifest:
  try:
    topology = topology_lib.load(config.topology)
  except UserError as e:
    raise UserError(f'the run trained on edge pods and its topology cannot be '
                    f'read ({e}); pass --shard_dir=<shards of its data>'
                    ) from None
  if not topology.eval_data:
    raise UserError(f'the run trained on the edge pods of {config.topology}, '
                    'which has no eval_data; pass --shard_dir=<shards of its '
                    'data>')
  return shards.load_manifest(topology.eval_data)


def train(**options: Any) -> RunResult:
  """Trains with the given training options (the CLI's flags, by name).

  Example: `train(task='mnist', model='2nn', rounds=5, num_clients=20)`.
  Options not given take the task's defaults, then the global ones.
  `task` may also be a task family object (yours, e.g. from
  `task_from_arrays`): it is registered under its name.

  Raises:
    UserError: an unknown option or a bad value (one line).
  """
  if 'task' in options and not isinstance(options['task'], str):
    # Your own task family object: registered under its name.
    options = {**options, 'task': task_registry.register(options['task'])}
  unknown = sorted(set(options) - set(config_lib.OPTION_FIELDS))
  if unknown:
    raise UserError(f'unknown training options {unknown}; see '
                    '`python -m tff_pipeline.train --helpfull`')
  return run(plan.resolve_config({}, options))


def task_from_arrays(name: str,
                     model_fn: Callable[[], tf.keras.Model],
                     clients: Mapping[str, tuple[Any, Any]],
                     eval_data: tuple[Any, Any],
                     loss: arrays.LossSpec,
                     metrics: arrays.MetricsSpec = (),
                     shard_root: str = '') -> arrays.ArrayTask:
  """A task from a Keras model function and in-memory client data.

  Writes each client's (x, y) as a shard under the shard cache (reused while
  the data is the same) and registers the task, so `train(task=<it>)` or
  `train(task=name)` trains it. x: numbers (floats are stored as float32,
  integers as int64); y: integer classes, or numbers (regression).

  Args:
    name: The task's name.
    model_fn: () -> an uncompiled Keras model taking a batch of x.
    clients: {client id: (x, y)}; ids are letters, digits, '_', '.', '-'.
    eval_data: (x, y) held out, to evaluate the global model on.
    loss: A Keras loss, or a function returning one.
    metrics: Keras metrics, or a function returning a list of them.
    shard_root: Where to write the shards ('' for the cache).

  Raises:
    UserError: bad arrays, ids or name.
  """
  family = arrays.ArrayTask(name, model_fn, clients, eval_data, loss, metrics,
                            shard_root)
  task_registry.register(family)
  return family
