"""Waits on a gRPC call only while its server keeps answering pings.

gRPC's keepalive does not bound how long a call to a frozen peer waits. A
frozen edge server (alive at the TCP level, answering nothing: a stopped
process, a wedged host) failed the coordinator's call after about 100 s in
most runs and after 300 or 600 s in others: keepalive kills the connection,
gRPC retries the buffered call on a new one, and that attempt can sit in a
TLS handshake the peer never answers. The call's own deadline is no help
either: it must cover the slowest pods of the round.

`await_call` pings the peer while it waits: a call ends at most
`silence_timeout` seconds after the peer's last answer, whatever the
transport does, and a long call whose server keeps answering runs until its
own deadline.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

import grpc

_T = TypeVar('_T')

# How often a waiting call pings its peer.
PING_INTERVAL_SECONDS = 5.0
# The silence after which an edge server is given up (--liveness_timeout).
DEFAULT_SILENCE_TIMEOUT_SECONDS = 30.0
# Statuses of a ping that the peer never answered; any other status is an
# answer (e.g. UNIMPLEMENTED from a server that predates the ping).
_UNANSWERED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class Unresponsive(Exception):
  """No ping answered for the silence timeout; the call was cancelled."""


def answers(ping: Callable[[float], object], timeout: float) -> bool:
  """Whether `ping(timeout)` got any answer from the peer within `timeout`."""
  try:
    ping(timeout)
  except grpc.RpcError as e:
    return e.code() not in _UNANSWERED
  return True


def await_call(future: 'grpc.Future[_T]', ping: Callable[[float], object],
               silence_timeout: float, what: str,
               interval: float = PING_INTERVAL_SECONDS) -> _T:
  """The result of `future`, pinging its peer while it is pending.

  Args:
    future: A gRPC call in flight (from `multicallable.future`).
    ping: Sends one ping with the given deadline in seconds; raises
      grpc.RpcError if it fails.
    silence_timeout: Seconds without an answer to a ping after which the
      call is cancelled.
    what: The call, for the error message.
    interval: Seconds between pings (at most a third of `silence_timeout`,
      so a live peer always has pings to answer before it is given up).

  Returns:
    The call's result.

  Raises:
    grpc.RpcError: The call failed (including its own deadline).
    Unresponsive: No ping was answered for `silence_timeout` seconds.
  """
  interval = min(interval, silence_timeout / 3)
  last_answer = time.monotonic()
  try:
    while True:
      try:
        return future.result(timeout=interval)
      except grpc.FutureTimeoutError:
        pass
      # Always one ping after waking, with at least `interval` to answer:
      # a pause of ours (a starved thread) is never held against the peer.
      budget = silence_timeout - (time.monotonic() - last_answer)
      if answers(ping, max(budget, interval)):
        last_answer = time.monotonic()
      elif time.monotonic() - last_answer >= silence_timeout:
        future.cancel()
        if future.done() and not future.cancelled():
          return future.result()  # It finished as we gave up on it.
        raise Unresponsive(
            f'{what}: the peer answered no ping for {silence_timeout:g} s '
            '(frozen, overloaded or cut off); the call was cancelled')
  except BaseException:
    future.cancel()  # No-op once done; never leave the call running.
    raise
