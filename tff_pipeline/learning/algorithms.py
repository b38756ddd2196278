"""Learning processes from explicit arguments: FedAvg, FedOpt and FedProx.

FedAvg (McMahan et al. 2017), with FedOpt server optimizers (Reddi et al.
2021) and FedProx's proximal client term (Li et al. 2020, "Federated
Optimization in Heterogeneous Networks"), as TFF processes whose `next`
takes client keys: each client's dataset is built from its key by a dataset
computation that runs where the client's work runs, so examples never cross
the runtime.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Optional

import tensorflow_federated as tff

from tff_pipeline.aggregation import exact_sum
from tff_pipeline.learning import client_data
from tff_pipeline.learning import example_weights
from tff_pipeline.learning import fedprox
from tff_pipeline.tasks.base import Task

# Keeps client shuffles full-dataset for typical shards while bounding memory.
_MAX_SHUFFLE_BUFFER = 10_000

Optimizer = tff.learning.optimizers.Optimizer
Aggregator = Optional[tff.aggregators.UnweightedAggregationFactory |
                      tff.aggregators.WeightedAggregationFactory]


def model_fn_for(task: Task) -> Callable[[], tff.learning.models.VariableModel]:
  """A no-arg function building a fresh `tff.learning` model of the task."""
  input_spec = task.input_spec

  def model_fn() -> tff.learning.models.VariableModel:
    model = tff.learning.models.from_keras_model(
        task.model_builder(),
        input_spec=input_spec,
        loss=task.loss_builder(),
        metrics=task.metrics_builder(),
    )
    if task.example_count is not None:
      return example_weights.counted(model, task.example_count)
    return model

  return model_fn


def withhold_metrics(metric_finalizers: Any,
                     local_unfinalized_metrics_type: Any = None
                     ) -> tff.Computation:
  """A `metrics_aggregator` that aggregates nothing: no training metrics.

  For DP runs: the clients' loss, accuracy and example counts would be
  summed without noise (TFF's `sum_then_finalize`), outside any epsilon.
  With this aggregator no client metric leaves a client: the round's
  `client_work.train` metrics are empty.
  """
  del metric_finalizers, local_unfinalized_metrics_type

  @tff.federated_computation
  def aggregate(client_metrics):
    del client_metrics
    return tff.federated_value(collections.OrderedDict(), tff.SERVER)

  return aggregate


def build_fed_avg(model_fn: Callable[[], tff.learning.models.VariableModel],
                  client_optimizer: Optimizer,
                  server_optimizer: Optimizer,
                  aggregator: Aggregator = None,
                  fedprox_mu: float = 0.0,
                  withhold_train_metrics: bool = False
                  ) -> tff.learning.templates.LearningProcess:
  """FedAvg / FedOpt, or FedProx with `fedprox_mu` > 0, over datasets.

  Args:
    model_fn: Builds a fresh `tff.learning` model.
    client_optimizer: The clients' local optimizer.
    server_optimizer: Applies the aggregated update (FedOpt).
    aggregator: None: TFF's mean weighted by example counts (summed
      exactly, `exact_sum`, so every runtime gets the same mean); a weighted
      factory (secure weighted mean): weighted by example counts through it;
      else an unweighted factory (DP-FedAvg, ...): each client counts once.
    fedprox_mu: FedProx's proximal strength (0: FedAvg).
    withhold_train_metrics: True (DP runs): no training metrics leave the
      clients (`withhold_metrics`).
  """
  metrics = {'metrics_aggregator': withhold_metrics} if (
      withhold_train_metrics) else {}
  if fedprox_mu:
    # Not tff.learning.algorithms.build_weighted_fed_prox: see fedprox.py.
    client_optimizer = fedprox.ProximalOptimizer(client_optimizer, fedprox_mu)
  if aggregator is None or isinstance(
      aggregator, tff.aggregators.WeightedAggregationFactory):
    return tff.learning.algorithms.build_weighted_fed_avg(
        model_fn,
        client_optimizer_fn=client_optimizer,
        server_optimizer_fn=server_optimizer,
        # None: the same sum on every runtime, whatever the order of clients.
        model_aggregator=aggregator or exact_sum.exact_weighted_mean(),
        **metrics,
    )
  return tff.learning.algorithms.build_unweighted_fed_avg(
      model_fn,
      client_optimizer_fn=client_optimizer,
      server_optimizer_fn=server_optimizer,
      model_aggregator=aggregator,
      **metrics,
  )


def build_dataset_computation(task: Task, epochs: int,
                              batch_size: int) -> tff.Computation:
  """Client key -> the client's training dataset, as the process sees it."""
  largest = max((info.num_examples for info in task.manifest.clients),
                default=1)
  return client_data.build_dataset_computation(
      shard_dir=task.manifest.shard_dir,
      batch_fn=task.batched,
      epochs=epochs,
      batch_size=batch_size,
      shuffle_buffer=max(1, min(largest, _MAX_SHUFFLE_BUFFER)),
  )


def build_training_process(task: Task, dataset_computation: tff.Computation,
                           client_optimizer: Optimizer,
                           server_optimizer: Optimizer,
                           aggregator: Aggregator = None,
                           fedprox_mu: float = 0.0,
                           withhold_train_metrics: bool = False
                           ) -> tff.learning.templates.LearningProcess:
  """The task's learning process, with `next` taking client keys.

  Args:
    task: The bound task.
    dataset_computation: Client key -> dataset (`build_dataset_computation`).
    client_optimizer, server_optimizer, aggregator, fedprox_mu,
      withhold_train_metrics: as for `build_fed_avg`; tasks with their own
      algorithm (Task.process_builder) take the first three, and
      `metrics_aggregator=withhold_metrics` when metrics are withheld.
  """
  if task.process_builder is not None:
    extra = ({'metrics_aggregator': withhold_metrics}
             if withhold_train_metrics else {})
    return task.process_builder(dataset_computation, client_optimizer,
                                server_optimizer, aggregator, **extra)
  return tff.simulation.compose_dataset_computation_with_learning_process(
      dataset_computation,
      build_fed_avg(model_fn_for(task), client_optimizer, server_optimizer,
                    aggregator, fedprox_mu, withhold_train_metrics))


def initial_state(process: tff.learning.templates.LearningProcess,
                  task: Task):
  """`initialize()` with the seeded Keras initial weights of the task model."""
  state = process.initialize()
  if task.process_builder is not None:
    return state  # Its own seeded initializers; no single Keras model.
  weights = tff.learning.models.ModelWeights.from_model(task.model_builder())
  return process.set_model_weights(state, weights)
