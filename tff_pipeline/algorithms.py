"""Builds the federated learning process for a task and config."""

from __future__ import annotations

import tensorflow_federated as tff

from tff_pipeline import aggregators
from tff_pipeline import client_data
from tff_pipeline import fedprox
from tff_pipeline import optimizers
from tff_pipeline.config import TrainConfig
from tff_pipeline.tasks import Task

# Keeps client shuffles full-dataset for typical shards while bounding memory.
_MAX_SHUFFLE_BUFFER = 10_000


def model_fn_for(task: Task):
  """A no-arg function building a fresh `tff.learning` model of the task."""
  input_spec = task.input_spec

  def model_fn() -> tff.learning.models.VariableModel:
    return tff.learning.models.from_keras_model(
        task.model_builder(),
        input_spec=input_spec,
        loss=task.loss_builder(),
        metrics=task.metrics_builder(),
    )

  return model_fn


def build_learning_process(
    task: Task, config: TrainConfig) -> tff.learning.templates.LearningProcess:
  """FedAvg/FedOpt or FedProx over client datasets.

  Weighted by example counts with `--aggregator=mean`; otherwise unweighted,
  as DP-FedAvg and fixed-range secure sums need.
  """
  model_fn = model_fn_for(task)
  client_optimizer = optimizers.client_optimizer(config)
  server_optimizer = optimizers.server_optimizer(config)
  if config.algorithm == 'fedprox':
    # Not tff.learning.algorithms.build_weighted_fed_prox: see fedprox.py.
    client_optimizer = fedprox.ProximalOptimizer(client_optimizer,
                                                 config.fedprox_mu)
  aggregator = aggregators.build(config, len(task.manifest.clients))
  if aggregator is None:
    return tff.learning.algorithms.build_weighted_fed_avg(
        model_fn,
        client_optimizer_fn=client_optimizer,
        server_optimizer_fn=server_optimizer,
    )
  return tff.learning.algorithms.build_unweighted_fed_avg(
      model_fn,
      client_optimizer_fn=client_optimizer,
      server_optimizer_fn=server_optimizer,
      model_aggregator=aggregator,
  )


def build_training_process(
    task: Task, config: TrainConfig) -> tff.learning.templates.LearningProcess:
  """The learning process whose `next` takes client keys, not datasets.

  Each client's dataset is built from its key by a dataset computation that
  runs where the client's work runs, so examples never cross the runtime.
  """
  if task.process_builder is not None:
    return task.process_builder(config, build_dataset_computation(task, config))
  return tff.simulation.compose_dataset_computation_with_learning_process(
      build_dataset_computation(task, config),
      build_learning_process(task, config))


def build_dataset_computation(task: Task, config: TrainConfig) -> tff.Computation:
  """Client key -> the client's training dataset, as the process sees it."""
  largest = max(info.num_examples for info in task.manifest.clients)
  return client_data.build_dataset_computation(
      shard_dir=task.manifest.shard_dir,
      batch_fn=task.batched,
      epochs=config.client_epochs,
      batch_size=config.client_batch_size,
      shuffle_buffer=min(largest, _MAX_SHUFFLE_BUFFER),
  )
