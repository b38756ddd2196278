"""Execution contexts: where TFF computations run."""

from __future__ import annotations

import atexit
import os

import tensorflow_federated as tff
from tensorflow_federated.python.core.backends.native import compiler
from tensorflow_federated.python.core.environments.tensorflow_frontend import tensorflow_computation
from tensorflow_federated.python.core.impl.executor_stacks import python_executor_stacks
from tensorflow_federated.python.core.impl.executors import remote_executor
from tensorflow_federated.python.core.impl.types import placements

from workers.worker_process import WorkerProcess


def context_for_worker(worker: WorkerProcess) -> tff.framework.SyncExecutionContext:
  """A synchronous TFF context that runs everything on one executor service."""
  stub = worker.stub()

  def stack_fn(cardinalities):
    # The service needs a CLIENTS cardinality even for server-only calls.
    cardinalities.setdefault(placements.CLIENTS, 0)
    executor = remote_executor.RemoteExecutor(stub)
    executor.set_cardinalities(cardinalities)
    return executor

  return tff.framework.SyncExecutionContext(
      executor_fn=python_executor_stacks.ResourceManagingExecutorFactory(
          executor_stack_fn=stack_fn),
      compiler_fn=compiler.desugar_and_transform_to_native,
      transform_args=tensorflow_computation.transform_args,
      transform_result=tensorflow_computation.transform_result,
  )


def local_worker_settings(clients_per_round: int) -> dict[str, int]:
  """Thread settings for a worker that trains `clients_per_round` clients.

  One single-threaded client per core beats many clients each spreading over
  all cores: on 2 cores, 10 CNN clients of 6000 examples took 37 s/round this
  way against 43-48 s with TF's default pools, and the worker peaked at
  575 MB instead of 665 MB (bench/local_vs_keras.py).
  """
  cores = os.cpu_count() or 1
  if clients_per_round < cores:
    return {'max_concurrent_computation_calls': -1}
  return {'max_concurrent_computation_calls': cores, 'intra_op_threads': 1,
          'inter_op_threads': 2}


_local_worker: WorkerProcess | None = None


def use_local_runtime(clients_per_round: int = 1) -> WorkerProcess:
  """Starts a local C++ worker (dies with us) and makes it the default context."""
  global _local_worker
  worker = WorkerProcess(**local_worker_settings(clients_per_round)).start()
  atexit.register(worker.stop)
  tff.framework.set_default_context(context_for_worker(worker))
  _local_worker = worker
  return worker


def ensure_local_runtime(clients_per_round: int = 1) -> WorkerProcess:
  """The running local worker, or a new one as the default context."""
  if _local_worker is not None and _local_worker.alive():
    return _local_worker
  return use_local_runtime(clients_per_round)


def local_worker() -> WorkerProcess:
  """The worker behind the default context (started on first use)."""
  if _local_worker is None or not _local_worker.alive():
    return use_local_runtime()
  return _local_worker
