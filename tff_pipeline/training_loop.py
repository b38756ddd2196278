"""The round loop: sample, train, evaluate, record, checkpoint."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Callable, Optional

from absl import logging
import tensorflow as tf
import tensorflow_federated as tff

from data_prep import shards
from tff_pipeline import aggregators
from tff_pipeline import algorithms
from tff_pipeline import checkpoint
from tff_pipeline import client_data
from tff_pipeline import config as config_lib
from tff_pipeline import distributed
from tff_pipeline import evaluation
from tff_pipeline import metrics_io
from tff_pipeline import privacy
from tff_pipeline import progress as progress_lib
from tff_pipeline import runtime
from tff_pipeline import sampling
from tff_pipeline import secure_round
from tff_pipeline import tasks
from tff_pipeline.config import TrainConfig
from tff_pipeline.errors import UserError
from workers import executor_client
from workers import tls as tls_lib
from workers import topology as topology_lib

CONFIG_FILE = 'config.json'
CHECKPOINT_DIR = 'checkpoints'
# Flags that may change between a run and its resumption.
_RESUMABLE_CHANGES = frozenset(
    {'resume', 'progress', 'rounds', 'eval_every', 'eval_batch_size',
     'keep_checkpoints', 'output_dir',
     # Where rounds run does not change their result.
     'executor', 'topology', 'tls_dir', 'insecure', 'round_timeout',
     'round_retries'})


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


def _train_metrics(metrics: Any) -> dict[str, Any]:
  train = metrics['client_work']['train']
  row = {name: float(value) for name, value in train.items()
         if name not in ('num_examples', 'num_batches')}
  if 'num_examples' in train:  # Fed Recon reports no counts.
    row['num_examples'] = int(train['num_examples'])
  return row


def initial_state(process: tff.learning.templates.LearningProcess,
                  task: tasks.Task):
  """`initialize()` with the seeded Keras initial weights of the task model."""
  state = process.initialize()
  if task.process_builder is not None:
    return state  # Its own seeded initializers; no single Keras model.
  weights = tff.learning.models.ModelWeights.from_model(task.model_builder())
  return process.set_model_weights(state, weights)


@dataclasses.dataclass
class _RemoteSetup:
  """The cluster a remote run trains on, and its held-out data."""
  cluster: distributed.Cluster
  view: distributed.ClusterView
  task: tasks.Task  # Bound to all pods' clients; shard paths pod-relative.
  eval_task: tasks.Task  # Bound to the coordinator's eval_data.

  @classmethod
  def connect(cls, config: TrainConfig) -> '_RemoteSetup':
    topology = topology_lib.load(config.topology)
    eval_manifest = None
    if topology.eval_data:
      eval_manifest = shards.load_manifest(topology.eval_data)
      shards.verify_shards(eval_manifest)
    tls = tls_lib.resolve(config.tls_dir or topology.tls_dir, 'coordinator',
                          config.insecure, 'the coordinator')
    cluster = distributed.Cluster(topology, tls)
    try:
      view = cluster.describe()
      task = tasks.from_manifest(config, view.manifest)
      if task.evaluator_builder is not None:
        # Evaluated on the pods, on each user's own held-out data.
        if not view.held_out_clients:
          raise UserError(
              f'--task={config.task} is evaluated on the pods, but none of '
              f'the pods of {config.topology} holds held-out data '
              f'({shards.HELD_OUT_DIR}/); place the data with '
              'workers.pod_data or workers.local_cluster')
        return cls(cluster, view, task, task)
      if eval_manifest is None:
        raise UserError(
            f'--topology={config.topology} has no eval_data: the coordinator '
            'needs a held-out shard dir to evaluate on')
      if (view.manifest.task, view.manifest.features) != (
          eval_manifest.task, eval_manifest.features):
        raise UserError(
            f'the pods hold {view.manifest.task!r} data but eval_data '
            f'{topology.eval_data} holds {eval_manifest.task!r} data; place '
            'both from the same data_prep run')
      return cls(cluster, view, task, tasks.from_manifest(config, eval_manifest))
    except BaseException:
      cluster.close()
      raise

  @functools.cached_property
  def merger(self) -> executor_client.ExecutorClient:
    """Merges edge-server partials on the coordinator's local worker."""
    return executor_client.ExecutorClient(runtime.local_worker().target)

  def federated_evaluator(self, config: TrainConfig):
    """The task's federated evaluation, run on the pods' held-out data."""

    def distribute(comp):
      evaluation = distributed.DistributedRound(
          self.cluster, self.view, comp, self.merger,
          round_timeout=config.round_timeout, retries=config.round_retries)

      def run(state, keys):
        output, report = evaluation((state, keys), keys)
        if report.failures:
          logging.warning('evaluation left out the users of failed pods: %s',
                          report.causes())
        return output

      return run

    return self.task.evaluator_builder(self.view.held_out_clients, distribute)

  def round_runner(self, process, config: TrainConfig):
    """(state, keys, sampled ids, round) -> (process output, RoundReport)."""
    if aggregators.is_secure(config):
      # Masks are read relative to each pod executor's working directory.
      form = secure_round.SecureForm(process.next,
                                     len(self.view.manifest.clients), '.')
      return secure_round.RemoteSecureRound(
          self.cluster, self.view, form, self.merger,
          round_timeout=config.round_timeout, retries=config.round_retries)
    distributed_next = distributed.DistributedRound(
        self.cluster, self.view, process.next, self.merger,
        round_timeout=config.round_timeout, retries=config.round_retries)
    return lambda state, keys, sampled, round_num: distributed_next(
        (state, keys), sampled)

  def close(self) -> None:
    self.cluster.close()


def _clip_norm(metrics: Any) -> Optional[float]:
  """The DP clip used this round (adaptive clipping moves it)."""
  query = (metrics.get('aggregator') or {}).get('dp_query_metrics') or {}
  return float(query['clip']) if 'clip' in query else None


class _PrivacyReport:
  """Epsilon spent after each round, for DP aggregators."""

  def __init__(self, config: TrainConfig, population: int):
    self._config = config
    self._enabled = aggregators.is_private(config)
    if self._enabled:
      self._sampling = aggregators.sampling_of(config, population)
      self.noise_multiplier = aggregators.noise_multiplier(config, population)

  def after(self, rounds: int) -> Optional[dict[str, Any]]:
    if not self._enabled:
      return None
    # Both accountants take well under a second per call.
    spent = privacy.epsilon(self.noise_multiplier, self._sampling, rounds,
                            self._config.delta)
    spent = privacy.to_json_safe(spent)
    spent['noise_multiplier'] = self.noise_multiplier
    spent['rounds'] = rounds
    return spent


@dataclasses.dataclass
class RunResult:
  state: Any
  rows: list[dict[str, Any]]
  summary: dict[str, Any]


def run(config: TrainConfig,
        on_round: Optional[Callable[[dict[str, Any]], None]] = None,
        ) -> RunResult:
  """Trains for `config.rounds` rounds, resuming if asked.

  Args:
    config: A validated config.
    on_round: Called with each round's metrics row after it is saved.

  Returns:
    The final server state, this invocation's rows and the summary.
  """
  wall_start = time.monotonic()
  _check_output_dir(config)
  remote = None
  mask_root = None
  if config.executor == 'remote':
    remote = _RemoteSetup.connect(config)
    task, eval_task = remote.task, remote.eval_task
  else:
    task = eval_task = tasks.load(config)
    # Fail fast, naming the file, rather than deep inside a TFF round.
    shards.verify_shards(task.manifest)
  client_ids = task.manifest.client_ids()
  if config.num_clients and config.num_clients != len(client_ids):
    raise UserError(f'{task.manifest.shard_dir} holds {len(client_ids)} clients, '
                    f'not --num_clients={config.num_clients}; lower '
                    '--num_clients or rebuild the shards')
  if config.clients_per_round > len(client_ids):
    raise UserError(f'--clients_per_round={config.clients_per_round} but the '
                    f'data has only {len(client_ids)} clients; lower it')
  _save_config(config)
  tf.keras.utils.set_random_seed(config.seed)
  process = algorithms.build_training_process(task, config)
  if eval_task.evaluator_builder is None:
    evaluator = evaluation.CentralEvaluator(eval_task, config.eval_batch_size)
  elif remote is not None:
    evaluator = remote.federated_evaluator(config)
  else:
    evaluator = eval_task.evaluator_builder()
  if remote is not None:
    run_round = remote.round_runner(process, config)
  elif aggregators.is_secure(config):
    # Scratch, not results: each round's masks replace the last round's.
    mask_root = tempfile.mkdtemp(prefix='secagg-masks-')
    run_round = secure_round.LocalSecureRound(
        secure_round.SecureForm(process.next, len(client_ids), mask_root),
        mask_root)
  else:
    run_round = lambda state, keys, sampled, round_num: (
        process.next(state, keys), None)
  accountant = _PrivacyReport(config, len(client_ids))
  checkpoints = checkpoint.RoundCheckpoints(
      os.path.join(config.output_dir, CHECKPOINT_DIR), config.keep_checkpoints)

  state = initial_state(process, task)
  first_round = 1
  if config.resume:
    state, last_round = checkpoints.load_latest(state)
    first_round = last_round + 1
    logging.info('resuming after round %d from %s', last_round,
                 checkpoints.root_dir)
  writer = metrics_io.MetricsWriter(
      config.output_dir, keep_through_round=first_round - 1 if config.resume else None)
  bar = progress_lib.Progress(config.rounds, first_round, enabled=config.progress)

  rows: list[dict[str, Any]] = []
  last_eval: Optional[dict[str, float]] = None
  for round_num in range(first_round, config.rounds + 1):
    sampled = sampling.sample(config.client_sampling, client_ids,
                              config.clients_per_round, config.seed, round_num)
    if not sampled:
      # Poisson sampling drew nobody: nothing trains and nothing is released.
      logging.warning('round %d: no client sampled; the model is unchanged',
                      round_num)
      sampled = []
    keys = [client_data.client_key(
        c, client_data.shuffle_seed(config.seed, round_num, c)) for c in sampled]
    start = time.monotonic()
    if remote is not None and config.insecure:
      print(f'warning: round {round_num}: plaintext channels to the edge '
            'servers (--insecure)', file=sys.stderr, flush=True)
    if sampled:
      output, report = run_round(state, keys, sampled, round_num)
      state = output.state
      train = _train_metrics(output.metrics)
    else:
      report, train = None, {}
    round_seconds = time.monotonic() - start
    row: dict[str, Any] = {
        'round': round_num,
        'round_seconds': round_seconds,
        'clients': sampled,
        'train': train,
    }
    if report is not None:
      row['failures'] = report.failures
      row['network'] = report.network()
      row['pod_seconds'] = report.pod_seconds
      if report.participants is not None:
        row['participants'] = report.participants
    if sampled and aggregators.is_private(config):
      row['clip'] = _clip_norm(output.metrics) or config.clip
    privacy_row = accountant.after(round_num)
    if privacy_row is not None:
      row['privacy'] = privacy_row
    due = config.eval_every and round_num % config.eval_every == 0
    if due or round_num == config.rounds:
      eval_start = time.monotonic()
      last_eval = evaluator.evaluate(process.get_model_weights(state))
      row['eval'] = last_eval
      row['eval_seconds'] = time.monotonic() - eval_start
    # Metrics first, then the checkpoint: a crash in between redoes the round.
    writer.write(row)
    checkpoints.save(state, round_num)
    rows.append(row)
    bar.update(round_num, row['train'], row.get('eval'))
    if on_round is not None:
      on_round(row)
  writer.close()
  all_rows = metrics_io.read_metrics(config.output_dir)
  if last_eval is None:
    evaluated = [r for r in all_rows if 'eval' in r]
    last_eval = evaluated[-1]['eval'] if evaluated else evaluator.evaluate(
        process.get_model_weights(state))
  # Only now: the evaluation above may still run on the cluster.
  if remote is not None:
    remote.close()
  if mask_root is not None:
    shutil.rmtree(mask_root, ignore_errors=True)
  summary = {
      'final_round': config.rounds,
      'final_eval': last_eval,
      'final_train': all_rows[-1]['train'] if all_rows else None,
      'config': config_lib.to_dict(config),
      'config_sections': config_lib.to_yaml_sections(config),
      'shard_dir': (task.manifest.shard_dir if remote is None
                    else f'edge pods of {config.topology}'),
      'versions': metrics_io.library_versions(),
      'wall_seconds': time.monotonic() - wall_start,
      'round_seconds_total': sum(r['round_seconds'] for r in all_rows),
      'mean_round_seconds': (sum(r['round_seconds'] for r in all_rows) /
                             max(1, len(all_rows))),
      'resumed_from_round': first_round - 1 if config.resume else None,
  }
  privacy_row = accountant.after(config.rounds)
  if privacy_row is not None:
    summary['privacy'] = privacy_row
  metrics_io.write_summary(config.output_dir, summary)
  return RunResult(state=state, rows=rows, summary=summary)
