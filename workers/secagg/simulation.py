"""An honest in-process relay that runs SecAgg+ rounds, with injected dropouts.

Drives real `party.Party` objects and a real `server.RoundServer` through
every stage, passing each message through JSON (as HTTP would) and each
masked input through an edge server's `MaskedSum` wire format. A party can
be told to drop at any stage: it answers nothing from that request on, in
this and every later attempt. Used by the property test and by
bench/secagg_scale.py; it is not a deployment component.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from workers.secagg import messages
from workers.secagg import party as party_lib
from workers.secagg import policy as policy_lib
from workers.secagg import server as server_lib

# A party dropping "at" a stage never answers that stage's request.
DROP_STAGES = ('advertise', 'reveal', 'shares', 'masked_input',
               'consistency', 'unmask')


@dataclasses.dataclass
class Result:
  completed: bool
  total: np.ndarray | None  # The unmasked sum, if completed.
  expected: np.ndarray  # Sum mod 2^b of the inputs the server received.
  included: list[str]  # Parties whose masked inputs are in the sum.
  attempts: int
  failure: str
  refusals: dict[str, str]  # Party -> why it refused (a refusal = dropout).
  released: bool  # Whether any party revealed shares.
  party_seconds: dict[str, float]
  party_bytes: dict[str, int]  # Uploaded: replies and packed vectors.
  server_seconds: float
  outcome: server_lib.Outcome | None = None
  party_received: dict[str, int] = dataclasses.field(default_factory=dict)
  stage_seconds: dict[str, float] = dataclasses.field(default_factory=dict)


def _roundtrip(message: Any) -> Any:
  return json.loads(json.dumps(message))


class _Relay:
  """Calls parties, times them, counts their bytes, applies dropouts.

  A party's time covers what the pod would do: parse the request's JSON,
  run the stage, serialise its reply (and pack its masked vector).
  """

  def __init__(self, parties: Mapping[str, party_lib.Party],
               drop_at: Mapping[str, str]):
    unknown = set(drop_at.values()) - set(DROP_STAGES)
    if unknown:
      raise ValueError(f'unknown drop stages {unknown}')
    self.parties = parties
    self.drop_at = drop_at
    self.offline: set[str] = set()
    self.seconds = {p: 0.0 for p in parties}
    self.bytes = {p: 0 for p in parties}
    self.received = {p: 0 for p in parties}
    self.stage_seconds: dict[str, float] = {s: 0.0 for s in DROP_STAGES}
    self.refusals: dict[str, str] = {}
    self.server_seconds = 0.0
    self._encoded: tuple[Any, str] | None = None

  def online(self) -> list[str]:
    return sorted(p for p in self.parties if p not in self.offline)

  def _encode(self, request: Any) -> str:
    # Holding the request itself (not its id) keeps the cache honest.
    if self._encoded is None or self._encoded[0] is not request:
      self._encoded = (request, json.dumps(request))
    return self._encoded[1]

  def call(self, name: str, stage: str, method: str, request: Any, *args):
    """The party's reply (JSON round-tripped), or None if it dropped/refused."""
    if name in self.offline:
      return None
    if self.drop_at.get(name) == stage:
      self.offline.add(name)
      return None
    encoded = self._encode(request)
    self.received[name] += len(encoded)
    start = time.process_time()
    try:
      reply = getattr(self.parties[name], method)(json.loads(encoded), *args)
      if isinstance(reply, tuple):  # (header, packed vector)
        header, payload = reply
        text = json.dumps(header)
        self.bytes[name] += len(text) + len(payload)
        return json.loads(text), payload
      text = json.dumps(reply)
      self.bytes[name] += len(text)
      return json.loads(text)
    except messages.ProtocolError as e:
      self.refusals[name] = f'{stage}: {e}'
      return None
    finally:
      elapsed = time.process_time() - start
      self.seconds[name] += elapsed
      self.stage_seconds[stage] += elapsed

  def server(self, fn, *args):
    start = time.process_time()
    try:
      return fn(*args)
    finally:
      self.server_seconds += time.process_time() - start


def run_round(parties: Mapping[str, party_lib.Party],
              inputs: Callable[[str], np.ndarray], *, run: str,
              round_num: int, bits: int, length: int,
              policy: policy_lib.Policy, roster=None,
              drop_at: Mapping[str, str] | None = None,
              edge_servers: int = 2) -> Result:
  """Runs one round (as many attempts as needed and allowed)."""
  relay = _Relay(parties, drop_at or {})
  expected = np.zeros(length, np.uint64)
  failure, released, included = '', False, []
  outcome = None
  attempt = 0
  for attempt in range(1, policy.max_attempts + 1):
    rid = messages.RoundId(run, round_num, attempt)
    srv = server_lib.RoundServer(rid, bits, length, policy, roster)
    try:
      request = srv.advertise_request()
      for name in relay.online():
        reply = relay.call(name, 'advertise', 'advertise', request)
        if reply is not None:
          relay.server(srv.add_advert, reply)
      request = relay.server(srv.participants_request)
      for name in list(srv.outcome().participants):
        reply = relay.call(name, 'reveal', 'reveal', request)
        if reply is not None:
          relay.server(srv.add_reveal, reply)
      request = relay.server(srv.reveals_request)
      for name in srv.outcome().participants:
        reply = relay.call(name, 'shares', 'share_keys', request)
        if reply is not None:
          relay.server(srv.add_shares, reply)
      requests = relay.server(srv.forwarded_shares_requests)
      edges = [server_lib.MaskedSum(bits, length)
               for _ in range(max(1, edge_servers))]
      for i, (name, request) in enumerate(sorted(requests.items())):
        if name in relay.offline or relay.drop_at.get(name) == 'masked_input':
          relay.call(name, 'masked_input', 'masked_input', request, None)
          continue
        x = np.asarray(inputs(name), dtype=np.uint64)
        reply = relay.call(name, 'masked_input', 'masked_input', request, x)
        if reply is not None:
          header, payload = reply
          edge = edges[i % len(edges)]
          relay.server(edge.add_input, header, payload, rid)
          expected += x
      for edge in edges:  # Edge server -> coordinator, over the wire.
        if not edge.parties:
          continue
        header, payload = edge.to_wire(rid)
        relay.server(lambda h, p: srv.add_masked_sum(
            server_lib.MaskedSum.from_wire(h, p, rid, policy.max_parties,
                                           policy.max_length)),
                     _roundtrip(header), payload)
      included = sorted(set().union(*(e.parties for e in edges)))
      request = relay.server(srv.survivors_request)
      for name in included:
        reply = relay.call(name, 'consistency', 'consistency', request)
        if reply is not None:
          relay.server(srv.add_consistency, reply)
      request = relay.server(srv.signatures_request)
      for name in srv.outcome().signed:
        reply = relay.call(name, 'unmask', 'unmask', request)
        if reply is not None:
          released = True
          relay.server(srv.add_unmask, reply)
      total = relay.server(srv.result)
      return Result(True, total, expected & np.uint64((1 << bits) - 1),
                    included, attempt, '', relay.refusals, released,
                    relay.seconds, relay.bytes, relay.server_seconds,
                    srv.outcome(), relay.received, relay.stage_seconds)
    except server_lib.AttemptFailed as e:
      failure = str(e)
      outcome = srv.outcome()
      continue
    except messages.RoundFailed as e:
      failure = str(e)
      outcome = srv.outcome()
      break
  return Result(False, None, expected & np.uint64((1 << bits) - 1),
                included, attempt, failure, relay.refusals, released,
                relay.seconds, relay.bytes, relay.server_seconds, outcome,
                relay.received, relay.stage_seconds)
