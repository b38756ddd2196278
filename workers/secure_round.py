"""Secure rounds: SecAgg+ (workers.secagg) driving a SecureForm's pieces.

A secure round is one SecAgg+ round (Bell et al. 2020 over Bonawitz et al.
2017; docs/secagg.md) whose masked input is the round computation's sum:

  1-3  advertise, participants, reveals -> signed keys, graph, shares
       (relayed; a party that never reveals restarts these key stages
       without it: attempt + 1, fresh keys, no one has trained yet)
  4    forwarded shares -> each party writes its mask, then the round
       computation (`pod_round`: train, sum, add the mask, pack) runs on it
       and the sums are merged. Once per round: nobody trains twice.
  5-6  survivors, signatures -> consistency signatures, then the shares
       that unmask the survivors' sum (dropouts after their keys, shares or
       input are recovered up to the threshold)
  then `finish` applies the unmasked sum to the model.

If the parties refuse (fewer than their threshold of parties, survivors or
signatures), the round is skipped: nothing is unmasked or applied, the
runner returns no output and a report saying why, and the run goes on.

`RemoteSecureRound`: the parties are the edge pods; their edge servers
relay stages 1-3, 5, 6 (EdgeServer.SecAgg) and run stage 4 (EdgeServer.Run
with the `secagg` header); the coordinator unmasks. `LocalSecureRound` runs
the same protocol with real `Party` objects in this process, one per client
(one process holds every key: it protects nothing, but trains the model a
distributed run trains, within the quantization).

Aggregators whose clients need the round's participant count (distributed
DP: each adds 1/n of the noise) get it through `set_participants(state, n)`,
applied to the state the broadcast is prepared from, with n the clients of
the parties asked for their masked input.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import time
from typing import Any, Callable, Optional, Sequence

from absl import logging
import numpy as np

from workers import coordinator as distributed
from workers import secagg_pod
from workers.secagg import keys
from workers.secagg import maskfile
from workers.secagg import messages
from workers.secagg import party as party_lib
from workers.secagg import policy as policy_lib
from workers.secagg import prg
from workers.secagg import server as server_lib
from workers.secagg import state as state_lib

# Stage names, as docs/secagg.md and the round reports call them.
STAGES = ('advertise', 'reveal', 'shares', 'masked_input', 'consistency',
          'unmask')

# stage, {party: request} -> {party: reply} of the parties that answered.
Relay = Callable[[str, dict[str, Any]], dict[str, Any]]
# (round id, {party: forwarded shares}) -> (masked sum or None, extra).
MaskedInput = Callable[[messages.RoundId, dict[str, Any]],
                       tuple[Optional[server_lib.MaskedSum], Any]]


@dataclasses.dataclass
class SecAggResult:
  """One round of SecAgg+ as the coordinator saw it."""
  total: Optional[np.ndarray]  # The unmasked sum mod 2^b; None: skipped.
  failure: str  # Why the round was skipped ('' if it was not).
  attempts: int
  extra: Any  # What masked_input returned beside the sum.
  dropped: dict[str, str]  # Party -> the first stage it did not answer.
  outcome: Optional[server_lib.Outcome]
  asked: list[str] = dataclasses.field(default_factory=list)  # Stage 4.

  def summary(self) -> dict[str, Any]:
    """For the metrics row: who took part at each stage, and k, t, q."""
    out: dict[str, Any] = {'attempts': self.attempts,
                           'dropped': dict(sorted(self.dropped.items())),
                           'inputs_asked': list(self.asked)}
    if self.outcome is not None:
      out.update(participants=self.outcome.participants,
                 survivors=self.outcome.survivors,
                 signed=len(self.outcome.signed),
                 unmasked=len(self.outcome.unmasked))
      if self.outcome.params is not None:
        params = self.outcome.params
        out.update(neighbors=params.neighbors, threshold=params.threshold,
                   quorum=params.quorum, min_parties=params.min_parties)
    return out


def secure_sum(relay: Relay, masked_input: MaskedInput, *, run: str,
               round_num: int, parties: Sequence[str], bits: int,
               length: int, policy: policy_lib.Policy,
               roster=None) -> SecAggResult:
  """Drives one round of SecAgg+ over `parties`; never raises RoundFailed.

  Any reply that is missing or does not check out makes its party a
  dropout at that stage (`relay` decides what "missing" is: an error, a
  timeout, a refusal). The key stages restart without parties that never
  revealed (at most `policy.max_attempts` attempts, as the parties allow);
  `masked_input` runs at most once; it may end the round by raising
  `messages.RoundFailed` (before anything is unmasked).
  """
  participants = sorted(parties)
  dropped: dict[str, str] = {}
  extra: Any = None
  outcome: Optional[server_lib.Outcome] = None
  failure = ''
  attempt = 0
  asked: list[str] = []

  def collect(stage: str, requests: dict[str, Any], add) -> None:
    replies = relay(stage, requests) if requests else {}
    for party in sorted(requests):
      reply = replies.get(party)
      if reply is None:
        dropped.setdefault(party, stage)
        continue
      try:
        if not isinstance(reply, dict) or reply.get('party') != party:
          raise messages.ProtocolError(f'a {stage} reply not from {party}')
        add(reply)
      except messages.ProtocolError as e:
        logging.warning('SecAgg %s: %s left out: %s', stage, party, e)
        dropped.setdefault(party, stage)

  for attempt in range(1, policy.max_attempts + 1):
    rid = messages.RoundId(run, round_num, attempt)
    srv = server_lib.RoundServer(rid, bits, length, policy, roster)
    try:
      request = srv.advertise_request()
      collect('advertise', {p: request for p in participants},
              srv.add_advert)
      request = srv.participants_request()
      collect('reveal', {p: request for p in srv.outcome().participants},
              srv.add_reveal)
      request = srv.reveals_request()
      collect('shares', {p: request for p in srv.outcome().participants},
              srv.add_shares)
      forwarded = srv.forwarded_shares_requests()
      asked = sorted(forwarded)
      masked, extra = masked_input(rid, forwarded)
      if masked is not None and masked.parties:
        srv.add_masked_sum(masked)
      included = masked.parties if masked is not None else set()
      for party in sorted(set(forwarded) - included):
        dropped.setdefault(party, 'masked_input')
      request = srv.survivors_request()
      collect('consistency', {p: request for p in srv.outcome().survivors},
              srv.add_consistency)
      request = srv.signatures_request()
      collect('unmask', {p: request for p in srv.outcome().signed},
              srv.add_unmask)
      total = srv.result()
      return SecAggResult(total, '', attempt, extra, dropped, srv.outcome(),
                          asked)
    except server_lib.AttemptFailed as e:
      failure, outcome = str(e), srv.outcome()
      logging.warning('%s', failure)
      participants = e.retry_with
    except messages.RoundFailed as e:
      failure, outcome = str(e), srv.outcome()
      break
  return SecAggResult(None, failure, attempt, extra, dropped, outcome, asked)


def party_name(client_id: str) -> str:
  """A party id for a client (local runs): itself if it is a valid one."""
  try:
    return messages.check_party(client_id)
  except messages.ProtocolError:
    return 'c' + hashlib.sha256(client_id.encode()).hexdigest()[:32]


class _LocalRoster:
  """The identities of this process's parties (a static roster that grows)."""

  def __init__(self):
    self.keys: dict[str, Any] = {}

  def identity(self, party: str, certificate: Optional[bytes] = None):
    del certificate
    if party not in self.keys:
      raise messages.Refused(f'party {party} is not on the roster')
    return self.keys[party].public_key()


class LocalSecureRound:
  """Secure rounds on the local runtime: real parties, one per client.

  One process holds every key here, so this protects nothing by itself; it
  runs the protocol, the masks and the modular sums of the pods, so a local
  run trains the model a distributed SecAgg run would. The parties' masks
  are added in one `pod_round` call over all clients (their sum is what the
  edge servers' merge of the parties' masked inputs would hold).
  """

  def __init__(self, form, mask_root: str,
               set_participants: Optional[Callable[[Any, int], Any]] = None,
               policy: Optional[policy_lib.Policy] = None):
    self._form = form
    self._root = mask_root
    self._set_participants = set_participants or (lambda state, n: state)
    self._policy = policy or policy_lib.Policy()
    self._run = messages.new_run_nonce()
    self._roster = _LocalRoster()
    self._parties: dict[str, party_lib.Party] = {}

  @property
  def policy(self) -> policy_lib.Policy:
    return self._policy

  def _party(self, name: str) -> party_lib.Party:
    if name not in self._parties:
      self._roster.keys[name] = keys.generate_identity()
      self._parties[name] = party_lib.Party(
          name, self._roster.keys[name], self._roster, self._policy,
          state_lib.ServedRounds())
    return self._parties[name]

  def __call__(self, state, keys_: Sequence[str], client_ids: Sequence[str],
               round_num: int):
    names = {c: party_name(c) for c in client_ids}
    parties = {names[c]: self._party(names[c]) for c in client_ids}
    key_of = dict(zip(client_ids, keys_))
    form = self._form

    def relay(stage, requests):
      del stage
      replies = {}
      for name, request in requests.items():
        try:  # Through JSON, as over HTTP.
          replies[name] = json.loads(json.dumps(parties[name].handle(
              json.loads(json.dumps(request)))))
        except messages.ProtocolError as e:
          logging.warning('SecAgg: party %s refused: %s', name, e)
      return replies

    def masked_input(rid, forwarded):
      total = np.zeros(form.length, np.uint64)
      included = []
      for name in sorted(forwarded):
        try:
          _, mask = parties[name].mask_vector(forwarded[name])
        except messages.ProtocolError as e:
          logging.warning('SecAgg: party %s refused its input: %s', name, e)
          continue
        total += mask
        included.append(name)
      clients = [c for c in client_ids if names[c] in included]
      if not clients:
        return None, (state, None, clients)
      attempt_state = self._set_participants(state, len(clients))
      maskfile.write(self._root, rid.tag, prg.reduce(total, form.bits))
      try:
        accumulator, words = form.pod_round(
            form.prepare(attempt_state), [key_of[c] for c in clients],
            rid.tag)
      finally:
        maskfile.remove(self._root, rid.tag)
      masked = server_lib.MaskedSum(form.bits, form.length)
      masked.add(included, form.unpack(words))
      return masked, (attempt_state, accumulator, clients)

    result = secure_sum(relay, masked_input, run=self._run,
                        round_num=round_num, parties=sorted(parties),
                        bits=form.bits, length=form.length,
                        policy=self._policy, roster=self._roster)
    report = distributed.RoundReport(failures=[], attempts=result.attempts)
    report.secagg = result.summary()
    if result.total is None:
      report.skipped = result.failure
      logging.warning('round %d skipped: %s', round_num, result.failure)
      return None, report
    attempt_state, accumulator, clients = result.extra
    report.participants = list(clients)
    return form.finish(attempt_state, accumulator, result.total), report


def _pod_policy(view: distributed.ClusterView, pods: Sequence[str],
                min_parties: int) -> policy_lib.Policy:
  """The one policy every pod enforces (the coordinator derives the same)."""
  missing = [p for p in pods if p not in view.secagg]
  if missing:
    raise distributed.ClusterError(
        f'pods {missing[:5]} run no SecAgg+ party; update the edge pods to a '
        'version with SecAgg+')
  misnamed = [p for p in pods if view.secagg[p].get('party') != p]
  if misnamed:
    raise distributed.ClusterError(
        f'pod {misnamed[0]} runs SecAgg+ as party '
        f'{view.secagg[misnamed[0]].get("party")!r}; start it with '
        f'--name={misnamed[0]}, the name in the topology and its certificate')
  broken = [(p, view.secagg[p].get('problem')) for p in pods
            if not view.secagg[p].get('ready')]
  if broken:
    raise distributed.ClusterError(
        f'SecAgg+ is disabled on pod {broken[0][0]}: {broken[0][1]}')
  policies = {}
  for pod in pods:
    try:
      policies[pod] = secagg_pod.policy_from_json(view.secagg[pod]['policy'])
    except (KeyError, ValueError) as e:
      raise distributed.ClusterError(f'pod {pod}: {e}') from None
  first = policies[pods[0]]
  differ = [p for p in pods if policies[p] != first]
  if differ:
    raise distributed.ClusterError(
        f'pods {pods[0]} and {differ[0]} enforce different SecAgg+ policies '
        f'({first} vs {policies[differ[0]]}); start every pod with the same '
        '--secagg_threshold, --secagg_neighbors and --secagg_quorum')
  if first.min_parties < min_parties:
    raise distributed.ClusterError(
        f'the pods accept sums over {first.min_parties} pods, fewer than '
        f'--secagg_threshold={min_parties}; restart them with '
        f'--secagg_threshold={min_parties}')
  return first


class RemoteSecureRound:
  """Secure rounds on the edge pods: each pod is a SecAgg+ party.

  A pod that fails at any stage is a dropout of that stage, recovered by
  the protocol; its clients are not in the round. No one trains twice: the
  round computation runs once per pod per round.
  """

  def __init__(self, cluster: distributed.Cluster,
               view: distributed.ClusterView, form,
               merge_executor, round_timeout: Optional[float] = None,
               retries: int = 3, retry_wait: float = 5.0,
               set_participants: Optional[Callable[[Any, int], Any]] = None,
               min_parties: int = policy_lib.DEFAULT_MIN_PARTIES,
               roster=None):
    pods = sorted(set(view.pod_of.values()))
    self._policy = _pod_policy(view, pods, min_parties)
    self._form = form
    self._view = view
    self._cluster = cluster
    self._timeout = round_timeout or None
    # The server's checks are a courtesy (bad adverts drop out early); the
    # pods enforce the protocol with their own rosters.
    if roster is None:
      if cluster.tls is not None:
        with open(cluster.tls.ca, 'rb') as f:
          roster = keys.CertificateRoster.from_pem(f.read())
      else:
        roster = keys.SelfSignedRoster()
    self._roster = roster
    # Distributed DP: the clients' noise shares depend on their count.
    self._noise_shares = set_participants is not None
    self._set_participants = set_participants or (lambda state, n: state)
    self._run = messages.new_run_nonce()  # A resumed run draws a new one.
    self._round = distributed.DistributedRound(
        cluster, view, form.comp, merge_executor, round_timeout=round_timeout,
        retries=retries, retry_wait=retry_wait,
        stages=(form.pod_round, form.merge_partials))

  @property
  def policy(self) -> policy_lib.Policy:
    return self._policy

  def __call__(self, state, keys_: Sequence[str], client_ids: Sequence[str],
               round_num: int):
    self._round.check_routable(client_ids)
    pod_of = self._view.pod_of
    key_of = dict(zip(client_ids, keys_))
    form = self._form
    report = distributed.RoundReport(failures=[])
    start = time.monotonic()

    def relay(stage, requests):
      replies, failures = self._cluster.secagg_relay(self._view, requests,
                                                     self._timeout)
      for failure in failures:
        failure['stage'] = stage
        failure['clients'] = [c for c in client_ids
                              if pod_of[c] == failure['pod']]
        report.failures.append(failure)
      return replies

    def masked_input(rid, forwarded):
      clients = [c for c in client_ids if pod_of[c] in forwarded]
      attempt_state = self._set_participants(state, len(clients))
      broadcast = form.prepare(attempt_state)
      before = len(report.failures)
      partials = self._round.fan_out(
          (broadcast, [key_of[c] for c in clients], rid.tag), clients, set(),
          report, secagg={'tag': rid.tag, 'masks': forwarded})
      for failure in report.failures[before:]:
        failure['stage'] = 'masked_input'
      if not partials:
        return None, (attempt_state, None)
      delivered = set(report.merged_pods)
      if self._noise_shares and delivered != set(forwarded):
        # Each client's noise share was sized for len(clients): unmasking
        # the survivors' sum would release less noise than accounted, and
        # the pods give one masked input per round (no redo). Skip it.
        raise messages.RoundFailed(
            f'round {round_num}: pods {sorted(set(forwarded) - delivered)} '
            'dropped after the noise shares were sized; the survivors\' sum '
            'would carry less noise than accounted, so it is not unmasked')
      merged = self._round.merge(partials)
      masked = server_lib.MaskedSum(form.bits, form.length)
      try:
        masked.add(report.merged_pods, form.unpack(merged[1]))
      except (messages.ProtocolError, ValueError) as e:
        logging.warning('round %d: the edge servers\' masked sums do not '
                        'add up: %s', round_num, e)
        return None, (attempt_state, None)
      return masked, (attempt_state, merged[0])

    result = secure_sum(relay, masked_input, run=self._run,
                        round_num=round_num,
                        parties=sorted({pod_of[c] for c in client_ids}),
                        bits=form.bits, length=form.length,
                        policy=self._policy, roster=self._roster)
    report.attempts = result.attempts
    report.secagg = result.summary()
    report.secagg['seconds'] = time.monotonic() - start
    if result.total is None:
      report.skipped = result.failure
      logging.warning('round %d skipped, nothing released: %s', round_num,
                      result.failure)
      return None, report
    attempt_state, accumulator = result.extra
    survivors = set(result.outcome.survivors)
    report.participants = [c for c in client_ids if pod_of[c] in survivors]
    return form.finish(attempt_state, accumulator, result.total), report


def scratch_mask_root() -> str:
  """A private folder for a local run's mask files (0700)."""
  root = tempfile.mkdtemp(prefix='secagg-masks-')
  os.chmod(root, 0o700)
  return root
