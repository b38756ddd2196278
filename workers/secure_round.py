"""Secure rounds: a SecureForm (tff_pipeline.secagg.form) run with real masks.

`LocalSecureRound` runs the pod side of every client in this process;
`RemoteSecureRound` has the edge pods make their own masks and run
`pod_round`, edge servers add masked partials, and only the coordinator's
total is unmasked. Masks cancel only in the sum over all of a round's
participants, so a round that loses a participant is redone among the
survivors with a new tag (fresh masks); a partial sum is never unmasked.

Aggregators whose clients need the round's participant count (distributed DP:
each adds 1/n of the noise) get it through `set_participants(state, n)`,
applied before every attempt, so a redo among survivors uses their count.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Callable, Optional, Sequence

from absl import logging

from workers import coordinator as distributed
from workers import secagg_masks


def round_tag(round_num: int, attempt: int, client_ids: Sequence[str]) -> str:
  digest = hashlib.sha256('\n'.join(sorted(client_ids)).encode()).hexdigest()
  return f'r{round_num}-a{attempt}-{digest[:16]}'



class LocalSecureRound:
  """Secure rounds on the local runtime.

  One process holds every key here, so this protects nothing by itself; it
  runs the same masks and modular sums as the pods, so a local run trains the
  model a distributed SecAgg run would.
  """

  def __init__(self, form, mask_root: str,
               set_participants: Optional[Callable[[Any, int], Any]] = None):
    self._form = form
    self._root = mask_root
    self._secret = secagg_masks.new_secret()
    self._set_participants = set_participants or (lambda state, n: state)

  def __call__(self, state, keys: Sequence[str], client_ids: Sequence[str],
               round_num: int):
    state = self._set_participants(state, len(client_ids))
    tag = round_tag(round_num, 1, client_ids)
    pod = secagg_masks.PodKeys(self._secret, client_ids)
    pod.prepare_round(self._root, {
        'tag': tag, 'clients': list(client_ids),
        'public_keys': pod.public_keys, 'layout': self._form.layout.to_json()})
    merged = self._form.pod_round(self._form.prepare(state), list(keys), tag)
    return self._form.finish(state, merged), None


class RemoteSecureRound:
  """Secure rounds on the edge pods: masks made on the pods, sums merged.

  A round in which any pod or edge server fails is redone among the clients
  of the pods that did not fail, under a new tag (fresh masks); partial sums
  of a failed attempt are dropped, never unmasked.
  """

  def __init__(self, cluster: distributed.Cluster,
               view: distributed.ClusterView, form,
               merge_executor, round_timeout: Optional[float] = None,
               retries: int = 3, retry_wait: float = 5.0,
               set_participants: Optional[Callable[[Any, int], Any]] = None):
    missing = [c.client_id for c in view.manifest.clients
               if c.client_id not in view.public_keys]
    if missing:
      raise distributed.ClusterError(
          f'the pods publish no SecAgg public key for clients {missing[:5]}; '
          'update the edge pods to a version with SecAgg')
    self._form = form
    self._view = view
    self._set_participants = set_participants or (lambda state, n: state)
    self._retries = retries
    self._retry_wait = retry_wait
    self._round = distributed.DistributedRound(
        cluster, view, form.comp, merge_executor, round_timeout=round_timeout,
        retries=retries, retry_wait=retry_wait,
        stages=(form.pod_round, form.merge_partials))

  def __call__(self, state, keys: Sequence[str], client_ids: Sequence[str],
               round_num: int):
    self._round.check_routable(client_ids)
    report = distributed.RoundReport(failures=[])
    key_of = dict(zip(client_ids, keys))
    failed_pods: set[str] = set()
    for attempt in range(1, self._retries + 2):
      report.attempts = attempt
      survivors = [c for c in client_ids
                   if self._view.pod_of[c] not in failed_pods]
      if not survivors:
        if attempt > self._retries:
          break
        logging.warning('round %d: every pod failed; retrying in %.0fs',
                        round_num, self._retry_wait)
        time.sleep(self._retry_wait)
        failed_pods.clear()  # Restarted pods may be back.
        survivors = list(client_ids)
      tag = round_tag(round_num, attempt, survivors)
      # Per attempt: the survivors' count (distributed DP noise shares).
      attempt_state = self._set_participants(state, len(survivors))
      broadcast = self._form.prepare(attempt_state)
      secagg = {'tag': tag,
                'public_keys': {c: self._view.public_keys[c]
                                for c in survivors},
                'layout': self._form.layout.to_json()}
      before = set(failed_pods)
      partials = self._round.fan_out(
          (broadcast, [key_of[c] for c in survivors], tag), survivors,
          failed_pods, report, secagg=secagg)
      if partials and failed_pods == before:
        report.participants = survivors
        return self._form.finish(attempt_state,
                                 self._round.merge(partials)), report
      logging.warning('round %d attempt %d: pods %s failed; redoing the '
                      'secure sum among the others with fresh masks',
                      round_num, attempt, sorted(failed_pods - before))
    raise distributed.ClusterError(
        f'secure round {round_num} failed after {self._retries + 1} attempts: '
        f'{report.causes()}; check that the pods are running')
