"""The one place where a TrainConfig is unpacked into explicit arguments.

Everything below this module (tasks, aggregation, secagg, learning) and the
runtime (workers) take explicit, typed arguments; the CLI, the public API
(`tff_pipeline.api`) and the tools that take the training flags come here
to turn a config into a task, a learning process, a round runner, an
evaluator and a privacy ledger.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile
from collections.abc import Mapping
from typing import Any, Callable, Optional

from absl import logging
import tensorflow_federated as tff

from data_prep import shards
from data_prep.errors import UserError
from tff_pipeline.aggregation import privacy
from tff_pipeline.aggregation import registry as aggregation
from tff_pipeline.core import config as config_lib
from tff_pipeline.core.config import TrainConfig
from tff_pipeline.learning import algorithms
from tff_pipeline.learning import client_data
from tff_pipeline.learning import evaluation
from tff_pipeline.learning import loop
from tff_pipeline.learning import optimizers
from tff_pipeline.learning import rounds
from tff_pipeline.learning import sampling
from tff_pipeline.secagg import form as secure_form
from tff_pipeline.tasks import base as task_base
from tff_pipeline.tasks import registry as tasks
from workers import coordinator
from workers import executor_client
from workers import local_runtime
from workers import secure_round
from workers import tls as tls_lib
from workers import topology as topology_lib


def resolve_config(yaml_values: Mapping[str, Any],
                   flag_values: Mapping[str, Any]) -> TrainConfig:
  """Defaults < task defaults < YAML < explicit flags, validated.

  Raises:
    UserError: naming the first bad value (unknown task, model, aggregator
      or optimizer included) and its fix.
  """
  family = tasks.get(config_lib.requested_task(yaml_values, flag_values))
  config = config_lib.resolve(yaml_values, flag_values, family.defaults)
  aggregator = aggregation.get(config.aggregator)
  if config.client_sampling == 'auto':
    # Poisson sampling is what the DP accountants analyse best.
    config = dataclasses.replace(
        config, client_sampling='poisson' if aggregator.private else 'uniform')
  family.check_model(config.model)
  optimizers.check(config.client_optimizer, 'client')
  optimizers.check(config.server_optimizer, 'server')
  return config


def data_options(config: TrainConfig) -> task_base.DataOptions:
  """What data preparation takes, from the config."""
  return tasks.data_options(
      data_dir=config.data_dir, shard_dir=config.shard_dir,
      num_clients=config.num_clients, partition=config.partition,
      partition_alpha=config.partition_alpha, seed=config.seed,
      emnist_subset=config.emnist_subset if config.task == 'emnist' else '')


def data_key(config: TrainConfig) -> str:
  """Names everything that decides the shards' contents."""
  return tasks.data_key(config.task, data_options(config))


def default_shard_dir(config: TrainConfig) -> str:
  return tasks.default_shard_dir(config.task, data_options(config))


def prepare_shards(config: TrainConfig) -> shards.Manifest:
  """Prepares (or reuses) the config's shards."""
  return tasks.prepare(config.task, data_options(config))


def bind_task(config: TrainConfig, manifest: shards.Manifest
              ) -> task_base.Task:
  """The config's task on prepared shards (local, or the pods')."""
  return tasks.bind(config.task, manifest, config.model, config.seed,
                    config.weight_decay, config.precision)


def load_task(config: TrainConfig) -> task_base.Task:
  """Prepares the shards and binds the task (the local runtime's data)."""
  return bind_task(config, prepare_shards(config))


def sampling_of(config: TrainConfig, population: int) -> privacy.Sampling:
  """How rounds pick clients, as the accountant sees it."""
  kind = 'poisson' if config.client_sampling == 'poisson' else 'fixed'
  return privacy.Sampling(kind=kind, population=population,
                          expected_size=config.clients_per_round)


@functools.lru_cache(maxsize=8)
def noise_multiplier(config: TrainConfig, population: int) -> float:
  """--noise_multiplier, or the one --target_epsilon calls for.

  Cached: the learning process and the privacy ledger of a run both need
  it, and calibration runs an accountant search (seconds).
  """
  if config.target_epsilon > 0:
    return privacy.calibrate_noise_multiplier(
        config.target_epsilon, sampling_of(config, population), config.rounds,
        config.delta)
  return config.noise_multiplier


def aggregator(config: TrainConfig, population: int
               ) -> Optional[aggregation.Factory]:
  """The model aggregator, or None for TFF's weighted mean."""
  spec = aggregation.get(config.aggregator)
  params = aggregation.AggregatorParams(
      clip=config.clip, bits=config.secagg_bits,
      noise_multiplier=(noise_multiplier(config, population) if spec.private
                        else config.noise_multiplier),
      clients_per_round=float(config.clients_per_round),
      target_unclipped_quantile=config.target_unclipped_quantile)
  return spec.build(params)


def is_secure(config: TrainConfig) -> bool:
  return aggregation.get(config.aggregator).secure


def is_private(config: TrainConfig) -> bool:
  return aggregation.get(config.aggregator).private


def training_process(config: TrainConfig, task: task_base.Task
                     ) -> tff.learning.templates.LearningProcess:
  """The learning process whose `next` takes client keys."""
  datasets = algorithms.build_dataset_computation(
      task, config.client_epochs, config.client_batch_size)
  return algorithms.build_training_process(
      task, datasets,
      client_optimizer=optimizers.build(config.client_optimizer,
                                        config.client_learning_rate,
                                        config.client_momentum),
      server_optimizer=optimizers.build(config.server_optimizer,
                                        config.server_learning_rate,
                                        config.server_momentum),
      aggregator=aggregator(config, len(task.manifest.clients)),
      fedprox_mu=config.fedprox_mu if config.algorithm == 'fedprox' else 0.0)


def schedule(config: TrainConfig, client_ids: list[str], first_round: int
             ) -> loop.Schedule:
  """Rounds, sampling and client keys from the config."""
  return loop.Schedule(
      first_round=first_round, last_round=config.rounds,
      eval_every=config.eval_every,
      sample=lambda round_num: sampling.sample(
          config.client_sampling, client_ids, config.clients_per_round,
          config.seed, round_num),
      client_key=lambda client, round_num: client_data.client_key(
          client, client_data.shuffle_seed(config.seed, round_num, client)))


def _clip_norm(metrics: Any) -> Optional[float]:
  """The DP clip used this round (adaptive clipping moves it)."""
  query = (metrics.get('aggregator') or {}).get('dp_query_metrics') or {}
  return float(query['clip']) if 'clip' in query else None


def privacy_annotator(config: TrainConfig, population: int
                      ) -> Optional[Callable[[int, Any], dict[str, Any]]]:
  """Adds `clip` and the ledger's `privacy` to each row of a DP run."""
  if not is_private(config):
    return None
  ledger = privacy.Ledger(noise_multiplier(config, population),
                          sampling_of(config, population), config.delta)

  def annotate(round_num: int, metrics: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {'privacy': ledger.after(round_num)}
    if metrics is not None:
      fields['clip'] = _clip_norm(metrics) or config.clip
    return fields

  annotate.ledger = ledger  # For the summary.
  return annotate


class LocalSetup:
  """A run on the local TFF runtime: data prepared here."""

  def __init__(self, config: TrainConfig):
    self.config = config
    local_runtime.ensure_local_runtime(config.clients_per_round)
    self.task = self.eval_task = load_task(config)
    # Fail naming the file rather than deep inside a TFF round: all shards
    # now if there are few, else each when first sampled (start-up time
    # must not grow with the population).
    shards.verify_eval(self.task.manifest)
    self._verifier = shards.ShardVerifier(self.task.manifest)
    self._verifier.verify_if_few()
    self._mask_root: Optional[str] = None

  def evaluator(self) -> rounds.Evaluator:
    if self.task.evaluator_builder is not None:
      return self.task.evaluator_builder()
    return evaluation.CentralEvaluator(self.task, self.config.eval_batch_size)

  def round_runner(self, process) -> rounds.RoundRunner:
    if not is_secure(self.config):
      return rounds.CheckedRound(rounds.LocalRound(process),
                                 self._verifier.verify)
    # Scratch, not results: each round's masks replace the last round's.
    self._mask_root = tempfile.mkdtemp(prefix='secagg-masks-')
    return rounds.CheckedRound(secure_round.LocalSecureRound(
        secure_form.SecureForm(process.next, len(self.task.manifest.clients),
                               self._mask_root),
        self._mask_root), self._verifier.verify)

  def close(self) -> None:
    if self._mask_root is not None:
      import shutil  # pylint: disable=g-import-not-at-top
      shutil.rmtree(self._mask_root, ignore_errors=True)


class RemoteSetup:
  """A run on the edge pods of a topology, and its held-out data."""

  def __init__(self, config: TrainConfig):
    self.config = config
    # The local executor only merges and finishes rounds.
    local_runtime.ensure_local_runtime(1)
    topology = topology_lib.load(config.topology)
    eval_manifest = None
    if topology.eval_data:
      eval_manifest = shards.load_manifest(topology.eval_data)
      shards.verify_shards(eval_manifest)
    tls_dir = config.tls_dir or topology.tls_dir
    tls = tls_lib.TlsFiles.from_dir(tls_dir, 'coordinator') if tls_dir else None
    self.cluster = coordinator.Cluster(topology, tls)
    try:
      self.view = self.cluster.describe()
      # Bound to all pods' clients; shard paths pod-relative.
      self.task = bind_task(config, self.view.manifest)
      if self.task.evaluator_builder is not None:
        # Evaluated on the pods, on each user's own held-out data.
        if not self.view.held_out_clients:
          raise UserError(
              f'--task={config.task} is evaluated on the pods, but none of '
              f'the pods of {config.topology} holds held-out data '
              f'({shards.HELD_OUT_DIR}/); place the data with '
              'workers.pod_data or workers.local_cluster')
        self.eval_task = self.task
        return
      if eval_manifest is None:
        raise UserError(
            f'--topology={config.topology} has no eval_data: the coordinator '
            'needs a held-out shard dir to evaluate on')
      if (self.view.manifest.task, self.view.manifest.features) != (
          eval_manifest.task, eval_manifest.features):
        raise UserError(
            f'the pods hold {self.view.manifest.task!r} data but eval_data '
            f'{topology.eval_data} holds {eval_manifest.task!r} data; place '
            'both from the same data_prep run')
      self.eval_task = bind_task(config, eval_manifest)
    except BaseException:
      self.cluster.close()
      raise

  @functools.cached_property
  def merger(self) -> executor_client.ExecutorClient:
    """Merges edge-server partials on the coordinator's local worker."""
    return executor_client.ExecutorClient(local_runtime.local_worker().target)

  def _distributed(self, comp, stages=None) -> coordinator.DistributedRound:
    return coordinator.DistributedRound(
        self.cluster, self.view, comp, self.merger,
        round_timeout=self.config.round_timeout,
        retries=self.config.round_retries, stages=stages)

  def evaluator(self) -> rounds.Evaluator:
    if self.eval_task.evaluator_builder is None:
      return evaluation.CentralEvaluator(self.eval_task,
                                         self.config.eval_batch_size)

    def distribute(comp):
      evaluate = self._distributed(comp)

      def run(state, keys):
        output, report = evaluate((state, keys), keys)
        if report.failures:
          logging.warning('evaluation left out the users of failed pods: %s',
                          report.causes())
        return output

      return run

    return self.task.evaluator_builder(self.view.held_out_clients, distribute)

  def round_runner(self, process) -> rounds.RoundRunner:
    if is_secure(self.config):
      # Masks are read relative to each pod executor's working directory.
      form = secure_form.SecureForm(process.next,
                                    len(self.view.manifest.clients), '.')
      return secure_round.RemoteSecureRound(
          self.cluster, self.view, form, self.merger,
          round_timeout=self.config.round_timeout,
          retries=self.config.round_retries)
    distributed_next = self._distributed(process.next)
    return lambda state, keys, client_ids, round_num: distributed_next(
        (state, keys), client_ids)

  def close(self) -> None:
    self.cluster.close()


def setup(config: TrainConfig):
  """LocalSetup or RemoteSetup, by --executor."""
  return RemoteSetup(config) if config.executor == 'remote' else LocalSetup(
      config)


def shard_dir_label(config: TrainConfig, run_setup) -> str:
  """Where the run's training data is, for the summary."""
  if isinstance(run_setup, RemoteSetup):
    return f'edge pods of {config.topology}'
  return os.path.abspath(run_setup.task.manifest.shard_dir)
