"""Runs computations on one TFF executor service, on raw value protos.

Unlike TFF's `RemoteExecutor`, this client never deserializes values: an
edge server forwards the coordinator's protos to its pods and returns theirs.
It also keeps, per service, one executor per client count and the
computations already sent to it, so each round ships only its arguments
(the computation itself, megabytes of graph, goes once).
"""

from __future__ import annotations

import threading
import time
from typing import Optional

import grpc
from tensorflow_federated.proto.v0 import executor_pb2
from tensorflow_federated.proto.v0 import executor_pb2_grpc
from tensorflow_federated.python.core.impl.executors import value_serialization
from tensorflow_federated.python.core.impl.types import placements

from data_prep import manifest as manifest_lib
from workers import worker_process

# Raised inside a pod's dataset computation.
NOT_HELD_MARKER = manifest_lib.NOT_HELD_MARKER


class ExecutorError(RuntimeError):
  """A call to an executor service failed.

  Attributes:
    target: host:port of the service.
    kind: 'unavailable' (down or unreachable), 'timeout' (deadline passed),
      'not_held' (asked for a client whose data is elsewhere) or 'error'.
  """

  def __init__(self, target: str, kind: str, message: str):
    super().__init__(f'{target}: {message}')
    self.target = target
    self.kind = kind
    self.detail = message


def classify(target: str, error: grpc.RpcError) -> ExecutorError:
  code = error.code() if hasattr(error, 'code') else None
  details = (error.details() if hasattr(error, 'details') else '') or str(error)
  if NOT_HELD_MARKER in details:
    kind = 'not_held'
  elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
    kind = 'timeout'
  elif code == grpc.StatusCode.UNAVAILABLE:
    kind = 'unavailable'
  else:
    kind = 'error'
  return ExecutorError(target, kind, details.split('\n')[0][:2000])


# A call given no timeout still ends: no channel waits forever.
DEFAULT_CALL_SECONDS = 3600.0


class _Deadline:

  def __init__(self, timeout: Optional[float]):
    self._end = time.monotonic() + (timeout or DEFAULT_CALL_SECONDS)

  def left(self) -> float:
    return max(0.001, self._end - time.monotonic())


class ExecutorClient:
  """Calls into one executor service; safe to share between threads."""

  def __init__(self, target: str, channel: Optional[grpc.Channel] = None):
    self.target = target
    self._channel = channel or grpc.insecure_channel(
        target, worker_process.GRPC_CHANNEL_OPTIONS)
    self._stub = executor_pb2_grpc.ExecutorGroupStub(self._channel)
    self._lock = threading.Lock()
    self._executors: dict[int, executor_pb2.ExecutorId] = {}
    self._functions: dict[tuple[int, str], executor_pb2.ValueRef] = {}

  def reset(self) -> None:
    """Forgets cached executors (after a failure or a service restart)."""
    with self._lock:
      self._executors.clear()
      self._functions.clear()

  def run(self, function_key: str, function: executor_pb2.Value,
          argument: Optional[executor_pb2.Value], num_clients: int,
          timeout: Optional[float] = None) -> executor_pb2.Value:
    """Calls `function` on `argument` with `num_clients` clients.

    Args:
      function_key: Identifies `function` (e.g. its hash) for the cache.
      function: A computation value proto.
      argument: The argument value proto, or None for no-arg functions.
      num_clients: The CLIENTS cardinality of this call.
      timeout: Seconds for the whole call.

    Returns:
      The result value proto.

    Raises:
      ExecutorError: The call failed; caches are reset.
    """
    deadline = _Deadline(timeout)
    try:
      with self._lock:
        executor = self._executor(num_clients, deadline)
        function_ref = self._function(executor, num_clients, function_key,
                                      function, deadline)
      disposable = []
      argument_ref = None
      if argument is not None:
        argument_ref = self._stub.CreateValue(
            executor_pb2.CreateValueRequest(executor=executor, value=argument),
            timeout=deadline.left()).value_ref
        disposable.append(argument_ref)
      call_ref = self._stub.CreateCall(
          executor_pb2.CreateCallRequest(executor=executor,
                                         function_ref=function_ref,
                                         argument_ref=argument_ref),
          timeout=deadline.left()).value_ref
      disposable.append(call_ref)
      result = self._stub.Compute(
          executor_pb2.ComputeRequest(executor=executor, value_ref=call_ref),
          timeout=deadline.left()).value
      # Frees the worker's copies; the cached function stays.
      self._stub.Dispose(
          executor_pb2.DisposeRequest(executor=executor, value_ref=disposable),
          timeout=deadline.left())
      return result
    except grpc.RpcError as e:
      self.reset()
      raise classify(self.target, e) from None

  def _executor(self, num_clients: int,
                deadline: _Deadline) -> executor_pb2.ExecutorId:
    executor = self._executors.get(num_clients)
    if executor is None:
      cardinalities = value_serialization.serialize_cardinalities(
          {placements.CLIENTS: num_clients})
      executor = self._stub.GetExecutor(
          executor_pb2.GetExecutorRequest(cardinalities=cardinalities),
          timeout=deadline.left()).executor
      self._executors[num_clients] = executor
    return executor

  def _function(self, executor: executor_pb2.ExecutorId, num_clients: int,
                key: str, function: executor_pb2.Value,
                deadline: _Deadline) -> executor_pb2.ValueRef:
    ref = self._functions.get((num_clients, key))
    if ref is None:
      ref = self._stub.CreateValue(
          executor_pb2.CreateValueRequest(executor=executor, value=function),
          timeout=deadline.left()).value_ref
      self._functions[(num_clients, key)] = ref
    return ref

  def close(self) -> None:
    self._channel.close()


def struct_value(elements: list[tuple[str, executor_pb2.Value]]
                 ) -> executor_pb2.Value:
  """A struct value proto of named elements (no copying of element bytes)."""
  value = executor_pb2.Value()
  for name, element in elements:
    entry = value.struct.element.add(name=name)
    entry.value.CopyFrom(element)
  return value


def unplaced(value: executor_pb2.Value) -> executor_pb2.Value:
  """The member of a SERVER-placed value (up_to_merge's result), for merge."""
  if value.WhichOneof('value') != 'federated':
    return value
  if len(value.federated.value) != 1:
    raise ValueError(f'expected one placed member, got '
                     f'{len(value.federated.value)}')
  return value.federated.value[0]


def merge_all(client: ExecutorClient, merge_key: str,
              merge: executor_pb2.Value, partials: list[executor_pb2.Value],
              timeout: Optional[float] = None) -> executor_pb2.Value:
  """Folds `merge` over partials, in order (so sums are reproducible)."""
  if not partials:
    raise ValueError('nothing to merge')
  merged = partials[0]
  for partial in partials[1:]:
    merged = client.run(merge_key, merge,
                        struct_value([('', merged), ('', partial)]),
                        num_clients=0, timeout=timeout)
  return merged
