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
import sys
from collections.abc import Mapping
from typing import Any, Callable, Optional

from absl import logging
import numpy as np
import tensorflow_federated as tff

from data_prep import shards
from data_prep.errors import UserError
from tff_pipeline.aggregation import ddp_accounting
from tff_pipeline.aggregation import distributed_dp
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
from tff_pipeline.secagg import quantized_sum
from tff_pipeline.tasks import base as task_base
from tff_pipeline.tasks import registry as tasks
from workers import coordinator
from workers import executor_client
from workers import local_runtime
from workers import secure_round
from workers import tls as tls_lib
from workers import topology as topology_lib
from workers.secagg import policy as secagg_policy_lib

DISTRIBUTED_DP = 'distributed_dp'
SECAGG_DP = 'secagg_dp'


def resolve_config(yaml_values: Mapping[str, Any],
                   flag_values: Mapping[str, Any]) -> TrainConfig:
  """Defaults < task defaults < YAML < explicit flags, validated.

  Raises:
    UserError: naming the first bad value (unknown task, model, aggregator
      or optimizer included) and its fix.
  """
  family = tasks.get(config_lib.requested_task(yaml_values, flag_values))
  defaults_for = getattr(family, 'defaults_for', None)
  task_defaults = (defaults_for({**yaml_values, **flag_values})
                   if defaults_for is not None else family.defaults)
  config = config_lib.resolve(yaml_values, flag_values, task_defaults)
  aggregator = aggregation.get(config.aggregator)
  if config.client_sampling == 'auto':
    # Poisson sampling is what the DP accountants analyse best.
    config = dataclasses.replace(
        config, client_sampling='poisson' if aggregator.private else 'uniform')
  if config.aggregator == DISTRIBUTED_DP:
    if config.client_sampling != 'poisson':
      raise UserError(
          f'--aggregator={DISTRIBUTED_DP} is accounted for Poisson sampling '
          f'only; use --client_sampling=poisson (or auto), not '
          f'{config.client_sampling}')
    # Refuses too few expected clients per round, naming the minimum.
    ddp_accounting.check_clients(config.clients_per_round)
    if config.secagg_bits > ddp_accounting.MAX_BITS:
      raise UserError(
          f'--secagg_bits={config.secagg_bits} is more than {DISTRIBUTED_DP} '
          f'takes ({ddp_accounting.MAX_BITS}); lower it, or 0 for the default')
  if aggregator.secure and config.clients_per_round < config.secagg_threshold:
    # Every round would be skipped: SecAgg+ releases no smaller sum.
    raise UserError(
        f'--clients_per_round={config.clients_per_round} is below '
        f'--secagg_threshold={config.secagg_threshold}, the fewest parties '
        f'a secure sum may cover, so --aggregator={config.aggregator} would '
        'skip every round; raise --clients_per_round (FedML: '
        'train_args.client_num_per_round) or lower --secagg_threshold '
        '(at least 2)')
  family.check_model(config.model)
  optimizers.check(config.client_optimizer, 'client')
  optimizers.check(config.server_optimizer, 'server')
  return config


def data_options(config: TrainConfig) -> task_base.DataOptions:
  """What data preparation takes, from the config.

  Extras: the options the task family names in `data_option_names`.
  """
  family = tasks.get(config.task)
  names = tuple(getattr(family, 'data_option_names', ()))
  unknown = [n for n in names if n not in config_lib.OPTION_FIELDS]
  if unknown:
    raise UserError(f'--task={config.task} names data options {unknown} that '
                    'are not training options; see --helpfull')
  extras = {name: getattr(config, name) for name in names}
  return tasks.data_options(
      data_dir=config.data_dir, shard_dir=config.shard_dir,
      num_clients=config.num_clients, partition=config.partition,
      partition_alpha=config.partition_alpha, seed=config.seed, **extras)


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


def needs_model_dim(config: TrainConfig) -> bool:
  """Whether the aggregator's privacy depends on the model's size."""
  return config.aggregator in (DISTRIBUTED_DP, SECAGG_DP)


def model_dim(task: task_base.Task) -> int:
  """Parameters of a client's update: the task model's trainable weights.

  Tasks with their own algorithm (Fed Recon) aggregate part of the model
  only: the count is then an upper bound (its secagg_dp rounding bound is
  then conservative); distributed_dp refuses them.
  """
  model = task.model_builder()
  return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def sampling_of(config: TrainConfig, population: int) -> privacy.Sampling:
  """How rounds pick clients, as the accountant sees it."""
  kind = 'poisson' if config.client_sampling == 'poisson' else 'fixed'
  return privacy.Sampling(kind=kind, population=population,
                          expected_size=config.clients_per_round)


@functools.lru_cache(maxsize=8)
def distributed_mechanism(config: TrainConfig, population: int,
                          dim: int) -> ddp_accounting.SkellamParams:
  """distributed_dp's mechanism: noise multiplier and bits for the run.

  --target_epsilon calibrates the noise with the mechanism's own accountant
  (and, with --secagg_bits=0, the bits with it; with --log_participants,
  for the unamplified epsilon the rows then report); otherwise
  --noise_multiplier, with the bits rule's default unless given. Cached:
  calibration takes seconds.

  Raises:
    UserError: an unreachable target, too few bits for the clients per
      round, or too few clients.
  """
  if dim < 1:
    raise ValueError('distributed_dp needs the model dimension')
  common = dict(dim=dim, clip=config.clip,
                expected_clients=float(config.clients_per_round))
  q = config.clients_per_round / population
  bits = config.secagg_bits
  if config.target_epsilon > 0:
    # With logged participants the reported epsilon is the unamplified one.
    budget = dict(sampling_probability=q, rounds=config.rounds,
                  delta=config.delta, amplified=not config.log_participants)
    if bits:
      z = ddp_accounting.calibrate(config.target_epsilon, bits=bits,
                                   **common, **budget)
    else:
      z, bits = ddp_accounting.calibrate_with_bits(config.target_epsilon,
                                                   **common, **budget)
  else:
    z = config.noise_multiplier
    bits = bits or ddp_accounting.default_bits(
        float(config.clients_per_round), dim, z)
  return ddp_accounting.SkellamParams(noise_multiplier=z, bits=bits, **common)


def secagg_bits(config: TrainConfig, population: int, dim: int = 0) -> int:
  """--secagg_bits, or its default for the aggregator (0: auto)."""
  if config.aggregator == DISTRIBUTED_DP:
    return distributed_mechanism(config, population, dim).bits
  return config.secagg_bits or quantized_sum.DEFAULT_BITS


def sensitivity_inflation(config: TrainConfig, dim: int = 0) -> float:
  """A record's L2 sensitivity over --clip (secagg_dp's rounding bound)."""
  if config.aggregator != SECAGG_DP:
    return 1.0
  if dim < 1:
    raise ValueError('secagg_dp accounting needs the model dimension')
  return quantized_sum.dp_sensitivity_inflation(
      config.secagg_bits or quantized_sum.DEFAULT_BITS, dim)


@functools.lru_cache(maxsize=8)
def noise_multiplier(config: TrainConfig, population: int,
                     dim: int = 0) -> float:
  """--noise_multiplier, or the one --target_epsilon calls for.

  Cached: the learning process and the privacy ledger of a run both need
  it, and calibration runs an accountant search (seconds). secagg_dp's
  noise is raised by its sensitivity inflation, so the target holds for
  the rounded records; distributed_dp's comes from its own accountant.
  """
  if config.aggregator == DISTRIBUTED_DP:
    return distributed_mechanism(config, population, dim).noise_multiplier
  if config.target_epsilon > 0:
    return privacy.calibrate_noise_multiplier(
        config.target_epsilon, sampling_of(config, population), config.rounds,
        config.delta, amplified=not config.log_participants
    ) * sensitivity_inflation(config, dim)
  return config.noise_multiplier


def max_weight(config: TrainConfig, manifest: shards.Manifest) -> float:
  """The most examples a client trains on in a round (secagg's weight cap)."""
  largest = max((c.num_examples for c in manifest.clients), default=1)
  return float(max(1, largest) * config.client_epochs)


def aggregator(config: TrainConfig, population: int, dim: int = 0,
               max_weight: float = 0.0) -> Optional[aggregation.Factory]:
  """The model aggregator, or None for TFF's weighted mean.

  Args:
    config: The run's config.
    population: The number of clients.
    dim: Parameters of a client's update (`model_dim`); distributed_dp and
      a calibrated secagg_dp need it.
    max_weight: secagg's cap on a client's weight (`max_weight`).
  """
  spec = aggregation.get(config.aggregator)
  params = aggregation.AggregatorParams(
      clip=config.clip, bits=secagg_bits(config, population, dim),
      noise_multiplier=(noise_multiplier(config, population, dim)
                        if spec.private else config.noise_multiplier),
      clients_per_round=float(config.clients_per_round),
      target_unclipped_quantile=config.target_unclipped_quantile,
      dim=dim if config.aggregator == DISTRIBUTED_DP else 0,
      max_weight=max_weight)
  return spec.build(params)


def check_task(config: TrainConfig, task: task_base.Task) -> None:
  """Refuses aggregators the task cannot take."""
  if config.aggregator == DISTRIBUTED_DP and task.process_builder is not None:
    raise UserError(
        f'--aggregator={DISTRIBUTED_DP} needs a task trained with FedAvg over '
        f'one model; --task={config.task} has its own algorithm (its '
        'aggregated update is part of the model); use secagg_dp or dp_fixed')


def releases_client_ids(config: TrainConfig) -> bool:
  """Whether outputs may name clients: not in DP runs, unless asked."""
  return not is_private(config) or config.log_participants


def noise_shares(config: TrainConfig
                 ) -> Optional[Callable[[Any, int], Any]]:
  """distributed_dp: what tells each attempt's state its participant count
  (the clients' noise shares depend on it); None for other aggregators."""
  return (distributed_dp.set_participants
          if config.aggregator == DISTRIBUTED_DP else None)


def secagg_policy(config: TrainConfig) -> secagg_policy_lib.Policy:
  """What every SecAgg+ party of a local run enforces."""
  return secagg_policy_lib.Policy(min_parties=config.secagg_threshold)


def is_secure(config: TrainConfig) -> bool:
  return aggregation.get(config.aggregator).secure


def is_private(config: TrainConfig) -> bool:
  return aggregation.get(config.aggregator).private


def training_process(config: TrainConfig, task: task_base.Task,
                     dim: int = 0) -> tff.learning.templates.LearningProcess:
  """The learning process whose `next` takes client keys.

  In DP runs the clients' training metrics are withheld (see
  `algorithms.withhold_metrics`): summed without noise, they would be a
  release outside epsilon.

  Args:
    config: The run's config.
    task: The bound task.
    dim: `model_dim(task)` if already known (0: computed when needed).
  """
  check_task(config, task)
  if not dim and needs_model_dim(config):
    dim = model_dim(task)
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
      aggregator=aggregator(config, len(task.manifest.clients), dim,
                            max_weight(config, task.manifest)),
      fedprox_mu=config.fedprox_mu if config.algorithm == 'fedprox' else 0.0,
      withhold_train_metrics=is_private(config))


def schedule(config: TrainConfig, client_ids: list[str], first_round: int,
             sampler_key: Optional[bytes] = None) -> loop.Schedule:
  """Rounds, sampling and client keys from the config.

  Args:
    config: The run's config.
    client_ids: The population.
    first_round: The first round to run.
    sampler_key: DP runs: the secret key the sample is drawn with
      (`sampling.SecretSampler`), never --seed; None otherwise.
  """
  if is_private(config) and sampler_key is None:
    raise ValueError('a DP run samples with a secret key, not --seed')
  if sampler_key is not None:
    secret = sampling.SecretSampler(sampler_key)
    sample = lambda round_num: secret.sample(
        config.client_sampling, client_ids, config.clients_per_round,
        round_num)
  else:
    sample = lambda round_num: sampling.sample(
        config.client_sampling, client_ids, config.clients_per_round,
        config.seed, round_num)
  return loop.Schedule(
      first_round=first_round, last_round=config.rounds,
      eval_every=config.eval_every,
      sample=sample,
      client_key=lambda client, round_num: client_data.client_key(
          client, client_data.shuffle_seed(config.seed, round_num, client)))


def _clip_norm(metrics: Any) -> Optional[float]:
  """The DP clip used this round (adaptive clipping moves it)."""
  query = (metrics.get('aggregator') or {}).get('dp_query_metrics') or {}
  return float(query['clip']) if 'clip' in query else None


def ledger(config: TrainConfig, population: int, dim: int = 0):
  """The privacy ledger of a DP run: `after(rounds)` -> the row's fields.

  distributed_dp: its own RDP bound composed with the sampling
  (`ddp_accounting.Ledger`, with `epsilon_coordinator`); central DP:
  dp-accounting's sampled Gaussian (`privacy.Ledger`), secagg_dp with its
  rounding's sensitivity inflation. With --log_participants, epsilon is
  the unamplified one and the row says so.
  """
  logged = config.log_participants
  if config.aggregator == DISTRIBUTED_DP:
    return ddp_accounting.Ledger(
        distributed_mechanism(config, population, dim),
        config.clients_per_round / population, config.delta,
        participants_logged=logged)
  return privacy.Ledger(noise_multiplier(config, population, dim),
                        sampling_of(config, population), config.delta,
                        amplified=not logged,
                        sensitivity_inflation=sensitivity_inflation(
                            config, dim))


def privacy_annotator(config: TrainConfig, population: int, dim: int = 0
                      ) -> Optional[Callable[[int, Any], dict[str, Any]]]:
  """Adds `clip` and the ledger's `privacy` to each row of a DP run.

  Args:
    config: The run's config.
    population: The number of clients.
    dim: `model_dim` of the task (distributed_dp and secagg_dp need it).
  """
  if not is_private(config):
    return None
  run_ledger = ledger(config, population, dim)

  def annotate(round_num: int, metrics: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {'privacy': run_ledger.after(round_num)}
    if metrics is not None:
      fields['clip'] = _clip_norm(metrics) or config.clip
    return fields

  annotate.ledger = run_ledger  # For the summary.
  return annotate


def coordinator_tls(config: TrainConfig) -> Optional[tls_lib.TlsFiles]:
  """The coordinator's TLS files for a remote run (None: --insecure, or a
  local run, which opens no port to the network)."""
  if config.executor != 'remote':
    return (tls_lib.TlsFiles.from_dir(config.tls_dir, 'coordinator')
            if config.tls_dir else None)
  topology = topology_lib.load(config.topology)
  return tls_lib.resolve(config.tls_dir or topology.tls_dir, 'coordinator',
                         config.insecure, 'the coordinator')


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
      if is_private(self.config):
        return evaluation.WithheldEvaluator()  # Clients' data: outside DP.
      return self.task.evaluator_builder()
    return evaluation.CentralEvaluator(self.task, self.config.eval_batch_size)

  def round_runner(self, process) -> rounds.RoundRunner:
    if not is_secure(self.config):
      return rounds.CheckedRound(rounds.ChunkedRound(process),
                                 self._verifier.verify)
    # Scratch, not results: a round's mask lives until its sum is taken.
    self._mask_root = secure_round.scratch_mask_root()
    return rounds.CheckedRound(secure_round.LocalSecureRound(
        secure_form.SecureForm(process.next, len(self.task.manifest.clients),
                               self._mask_root),
        self._mask_root, set_participants=noise_shares(self.config),
        policy=secagg_policy(self.config)), self._verifier.verify)

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
    self.cluster = coordinator.Cluster(topology, coordinator_tls(config),
                                       config.liveness_timeout)
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
    if is_private(self.config):
      return evaluation.WithheldEvaluator()  # Users' held-out data.

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
      runner = secure_round.RemoteSecureRound(
          self.cluster, self.view, form, self.merger,
          round_timeout=self.config.round_timeout,
          retries=self.config.round_retries,
          # Each attempt's count (distributed_dp's noise shares).
          set_participants=noise_shares(self.config),
          min_parties=self.config.secagg_threshold)
    else:
      distributed_next = self._distributed(process.next)
      runner = lambda state, keys, client_ids, round_num: distributed_next(
          (state, keys), client_ids)
    if not self.config.insecure:
      return runner

    def insecure_runner(state, keys, client_ids, round_num):
      print(f'warning: round {round_num}: plaintext channels to the edge '
            'servers (--insecure)', file=sys.stderr, flush=True)
      return runner(state, keys, client_ids, round_num)

    return insecure_runner

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
