"""The coordinator's SecAgg+ driver against real parties, with dropouts.

`secure_sum` runs real `Party` objects (workers.secagg.testing) through a
relay that can drop any party at any stage; the masked input is each
party's own `masked_input` (numpy), summed into the edge servers'
`MaskedSum`s. Expected sums are computed here from the inputs of the
parties that should survive, not by the code under test.
"""

import json

from absl.testing import absltest
import numpy as np

from workers import coordinator
from workers import secure_round
from workers.secagg import keys
from workers.secagg import messages
from workers.secagg import policy as policy_lib
from workers.secagg import server as server_lib
from workers.secagg import testing

_BITS, _LENGTH = 20, 64
_POLICY = policy_lib.Policy(min_parties=3)


class _Harness:
  """Ten real parties; a relay that drops parties at chosen stages."""

  def __init__(self, n=10, policy=_POLICY, drop_at=None):
    self.parties, _, self.roster = testing.make_parties(n, policy)
    self.names = sorted(self.parties)
    self.policy = policy
    self.inputs = testing.random_inputs(self.names, _BITS - 4, _LENGTH)
    self.drop_at = dict(drop_at or {})
    self.dead: set[str] = set()
    self.stages: list[str] = []
    self.masked_calls = 0
    self.sent_input: list[str] = []

  def relay(self, stage, requests):
    self.stages.append(stage)
    replies = {}
    for name, request in requests.items():
      if name in self.dead or self.drop_at.get(name) == stage:
        self.dead.add(name)
        continue
      try:
        replies[name] = json.loads(json.dumps(self.parties[name].handle(
            json.loads(json.dumps(request)))))
      except messages.ProtocolError:
        pass
    return replies

  def masked_input(self, rid, forwarded):
    self.masked_calls += 1
    edges = [server_lib.MaskedSum(_BITS, _LENGTH) for _ in range(2)]
    for i, name in enumerate(sorted(forwarded)):
      if name in self.dead or self.drop_at.get(name) == 'masked_input':
        self.dead.add(name)
        continue
      header, payload = self.parties[name].masked_input(forwarded[name],
                                                        self.inputs[name])
      edges[i % 2].add_input(header, payload, rid)
      self.sent_input.append(name)
    total = server_lib.MaskedSum(_BITS, _LENGTH)
    for edge in edges:
      total.merge(edge)
    return total, 'extra'

  def run(self, round_num=1):
    return secure_round.secure_sum(
        self.relay, self.masked_input, run=messages.new_run_nonce(),
        round_num=round_num, parties=self.names, bits=_BITS, length=_LENGTH,
        policy=self.policy, roster=self.roster)

  def expected(self, names):
    total = sum(self.inputs[n] for n in names)
    return total & np.uint64((1 << _BITS) - 1)


class SecureSumTest(absltest.TestCase):

  def test_without_dropouts_the_sum_is_exact(self):
    harness = _Harness()
    result = harness.run()
    self.assertEqual(result.failure, '')
    np.testing.assert_array_equal(result.total,
                                  harness.expected(harness.names))
    self.assertEqual(result.extra, 'extra')
    self.assertEqual(result.attempts, 1)
    self.assertEqual(result.outcome.survivors, harness.names)

  def test_a_dropout_at_every_stage_is_recovered(self):
    # One party per stage drops; 12 parties, 10 after the key stages
    # (k = 8, t = 5, q = 7): the sum is exactly that of the parties whose
    # inputs arrived.
    drop_at = {'edge-0': 'advertise', 'edge-1': 'reveal',
               'edge-2': 'shares', 'edge-3': 'masked_input',
               'edge-4': 'consistency', 'edge-5': 'unmask'}
    harness = _Harness(n=12, drop_at=drop_at)
    result = harness.run()
    self.assertEqual(result.failure, '')
    survivors = [n for n in harness.names if n not in
                 ('edge-0', 'edge-1', 'edge-2', 'edge-3')]
    self.assertEqual(sorted(harness.sent_input), survivors)
    np.testing.assert_array_equal(result.total, harness.expected(survivors))
    # The reveal dropout restarted the key stages once; nobody's input was
    # computed twice.
    self.assertEqual(result.attempts, 2)
    self.assertEqual(harness.masked_calls, 1)
    self.assertEqual(result.dropped, drop_at)
    summary = result.summary()
    self.assertEqual(summary['survivors'], survivors)
    self.assertEqual(summary['threshold'], 5)

  def test_below_the_threshold_the_round_is_skipped_and_nothing_revealed(self):
    # 4 of 10 drop after sending input: 6 survivors, quorum 7.
    drop_at = {f'edge-{i}': 'consistency' for i in range(4)}
    harness = _Harness(drop_at=drop_at)
    result = harness.run()
    self.assertIsNone(result.total)
    self.assertIn('quorum', result.failure)
    self.assertNotIn('unmask', harness.stages)  # No share was asked for.
    self.assertEqual(harness.masked_calls, 1)

  def test_too_few_parties_are_refused_before_anyone_trains(self):
    harness = _Harness(n=3, drop_at={'edge-0': 'advertise'})
    result = harness.run()
    self.assertIsNone(result.total)
    self.assertIn('fewer than the minimum 3', result.failure)
    self.assertEqual(harness.masked_calls, 0)

  def test_replies_in_another_partys_name_are_dropped(self):
    harness = _Harness()
    relay = harness.relay

    def lying_relay(stage, requests):
      replies = relay(stage, requests)
      if stage == 'advertise':
        # edge-9's relay hands in edge-8's advert as its own.
        replies['edge-9'] = replies['edge-8']
      return replies

    harness.relay = lying_relay
    result = harness.run()
    self.assertEqual(result.dropped.get('edge-9'), 'advertise')
    np.testing.assert_array_equal(
        result.total, harness.expected(harness.names[:-1]))

  def test_party_names_for_clients(self):
    self.assertEqual(secure_round.party_name('f0001_07'), 'f0001_07')
    odd = secure_round.party_name('THE TRAGEDY/OF KING LEAR')
    self.assertRegex(odd, r'^c[0-9a-f]{32}$')
    self.assertEqual(odd, secure_round.party_name('THE TRAGEDY/OF KING LEAR'))


class PodPolicyTest(absltest.TestCase):

  def _view(self, secagg):
    return coordinator.ClusterView(manifest=None, pod_of={}, server_of={},
                                   secagg=secagg)

  def _pod(self, name, **policy):
    return {'party': name, 'ready': True, 'problem': '',
            'policy': dict(policy_lib.Policy(**policy).__dict__)}

  def test_agreeing_pods_give_their_policy(self):
    view = self._view({'a': self._pod('a', min_parties=4),
                       'b': self._pod('b', min_parties=4)})
    self.assertEqual(secure_round._pod_policy(view, ['a', 'b'], 3),  # pylint: disable=protected-access
                     policy_lib.Policy(min_parties=4))

  def test_pods_that_disagree_accept_too_few_or_are_not_ready_are_refused(
      self):
    cases = {
        'different SecAgg\\+ policies': {'a': self._pod('a', min_parties=4),
                                         'b': self._pod('b', min_parties=5)},
        'accept sums over 3 pods, fewer than --secagg_threshold=4': {
            'a': self._pod('a', min_parties=3),
            'b': self._pod('b', min_parties=3)},
        'disabled on pod b: no certificate': {
            'a': self._pod('a', min_parties=4),
            'b': dict(self._pod('b', min_parties=4), ready=False,
                      problem='no certificate')},
        'run no SecAgg\\+ party': {'a': self._pod('a', min_parties=4)},
        "runs SecAgg\\+ as party 'edge-1'; start it with --name=b": {
            'a': self._pod('a', min_parties=4),
            'b': self._pod('edge-1', min_parties=4)},
    }
    for message, secagg in cases.items():
      with self.subTest(message=message):
        with self.assertRaisesRegex(coordinator.ClusterError, message):
          secure_round._pod_policy(self._view(secagg), ['a', 'b'], 4)  # pylint: disable=protected-access


class LocalRosterTest(absltest.TestCase):

  def test_knows_only_its_parties(self):
    roster = secure_round._LocalRoster()  # pylint: disable=protected-access
    key = keys.generate_identity()
    roster.keys['p'] = key
    self.assertEqual(keys.public_bytes(roster.identity('p')),
                     keys.public_bytes(key))
    with self.assertRaises(messages.Refused):
      roster.identity('q')


if __name__ == '__main__':
  absltest.main()
