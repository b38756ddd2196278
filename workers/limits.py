"""Message caps and the coordinator's reading of an edge server's failure.

Every gRPC channel and server of the runtime and every pod's nginx accept
messages of at most worker_process.GRPC_MAX_MESSAGE_MB (set per deployment
with TFF_EDGE_MAX_MESSAGE_MB, the same on every tier). A round's largest
messages carry the model (about 4 bytes per parameter) and the round
computation; the coordinator checks each request against the cap before
sending it, so an oversized model is a clear error naming the setting
rather than an opaque RESOURCE_EXHAUSTED from a peer.

An edge server's reply is checked for shape before it is used: anything an
edge server does wrong (an error status, a garbled or incomplete reply)
becomes that server's recorded failure, never an exception that ends the
run.
"""

from __future__ import annotations

from typing import Any

import grpc

from data_prep.errors import UserError
from workers import liveness
from workers import wire
from workers import worker_process

_MB = 1000 * 1000


class MessageTooLarge(UserError):
  """A message over the deployment's cap."""


class BadReply(ValueError):
  """An edge server's reply that is not what the protocol says."""


def max_message_bytes() -> int:
  return worker_process.GRPC_MAX_MESSAGE_MB * _MB


def check_message_size(size: int, what: str) -> None:
  """Raises MessageTooLarge if `size` bytes exceed the cap."""
  if size > max_message_bytes():
    raise MessageTooLarge(
        f'{what} is {size / _MB:.1f} MB, over the {max_message_bytes() // _MB} '
        f'MB message cap (a smaller model, or a larger '
        f'{worker_process.MAX_MESSAGE_ENV} on every tier: coordinator, edge '
        'servers and pods)')


def _is_count(value: Any) -> bool:
  return type(value) is int and value >= 0  # pylint: disable=unidiomatic-typecheck


def check_reply(reply: Any, blobs: dict[str, bytes]) -> None:
  """Raises BadReply unless `reply` is a well-formed Run reply."""
  if not isinstance(reply, dict):
    raise BadReply(f'reply header is a {type(reply).__name__}')
  for key in ('pod_bytes_sent', 'pod_bytes_received'):
    if not _is_count(reply.get(key)):
      raise BadReply(f'reply has no byte count {key}')
  seconds = reply.get('pod_seconds')
  if not isinstance(seconds, dict) or not all(
      isinstance(k, str) and isinstance(v, (int, float))
      for k, v in seconds.items()):
    raise BadReply('reply pod_seconds is not {pod: seconds}')
  failures = reply.get('failures')
  if not isinstance(failures, list):
    raise BadReply('reply failures is not a list')
  for failure in failures:
    if not (isinstance(failure, dict) and
            isinstance(failure.get('pod'), str) and
            isinstance(failure.get('kind'), str) and
            isinstance(failure.get('error'), str)):
      raise BadReply(f'reply failure {str(failure)[:200]} is not '
                     '{pod, kind, error}')
  if set(blobs) - {'partial'}:
    raise BadReply(f'reply has unexpected blobs {sorted(blobs)[:5]}')


def check_secagg_reply(reply: Any, pods: Any) -> None:
  """Raises BadReply unless `reply` is a SecAgg relay reply for `pods`."""
  if not isinstance(reply, dict):
    raise BadReply(f'reply header is a {type(reply).__name__}')
  replies, failures = reply.get('replies'), reply.get('failures')
  if not isinstance(replies, dict) or not set(replies) <= set(pods):
    raise BadReply('reply replies is not {pod: reply} for the pods asked')
  if not isinstance(failures, list):
    raise BadReply('reply failures is not a list')
  for failure in failures:
    if not (isinstance(failure, dict) and failure.get('pod') in pods and
            isinstance(failure.get('kind'), str) and
            isinstance(failure.get('error'), str)):
      raise BadReply(f'reply failure {str(failure)[:200]} is not '
                     '{pod, kind, error} of a pod asked')


def failure_of(error: Exception) -> tuple[str, str]:
  """(kind, detail) of an edge server's failure, for the round's report."""
  if isinstance(error, grpc.RpcError):
    code = error.code() if hasattr(error, 'code') else None
    detail = (error.details() if hasattr(error, 'details') else '') or str(
        error)
    kind = {
        grpc.StatusCode.DEADLINE_EXCEEDED: 'timeout',
        grpc.StatusCode.UNAVAILABLE: 'unavailable',
        grpc.StatusCode.CANCELLED: 'unavailable',
        grpc.StatusCode.PERMISSION_DENIED: 'refused',
        grpc.StatusCode.UNAUTHENTICATED: 'refused',
        grpc.StatusCode.RESOURCE_EXHAUSTED: 'too_large',
    }.get(code, 'error')
    if kind == 'too_large':
      detail += (f' (message cap {max_message_bytes() // _MB} MB: set '
                 f'{worker_process.MAX_MESSAGE_ENV} higher on every tier)')
    name = code.name if code is not None else 'UNKNOWN'
    return kind, f'{name}: {detail}'[:2000]
  if isinstance(error, liveness.Unresponsive):
    return 'unresponsive', str(error)[:2000]
  if isinstance(error, (wire.WireError, BadReply)):
    return 'bad_reply', f'{type(error).__name__}: {error}'[:2000]
  return 'error', f'{type(error).__name__}: {error}'[:2000]
