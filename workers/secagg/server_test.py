import copy

from absl.testing import absltest
import numpy as np
from scipy import stats

from workers.secagg import messages
from workers.secagg import policy as policy_lib
from workers.secagg import prg
from workers.secagg import server
from workers.secagg import shamir
from workers.secagg import testing

_POLICY = policy_lib.Policy(min_parties=3)
# Per uniformity check; with 22 checks in the test below, the chance that a
# correct implementation fails it is at most 22 * 2e-6 < 1e-4 per run.
_ALPHA = 1e-6


def _round(n=7, bits=16, length=32, policy=_POLICY):
  parties, _, roster = testing.make_parties(n, policy)
  names = sorted(parties)
  inputs = testing.random_inputs(names, bits, length)
  rid = messages.RoundId(messages.new_run_nonce(), 1, 1)
  return (testing.Stages(parties, rid, bits, length, policy, roster), names,
          inputs)


class MaskedSumTest(absltest.TestCase):

  def test_sums_mod_2b_and_round_trips(self):
    rid = messages.RoundId('ab' * 16, 1, 1)
    a, b = server.MaskedSum(13, 5), server.MaskedSum(13, 5)
    va = np.array([8191, 1, 2, 3, 4], np.uint64)
    vb = np.array([1, 8191, 0, 5, 6], np.uint64)
    a.add(['p1'], va)
    b.add(['p2', 'p3'], vb)
    a.merge(b)
    np.testing.assert_array_equal(a.values, [0, 0, 2, 8, 10])
    self.assertEqual(a.parties, {'p1', 'p2', 'p3'})
    header, payload = a.to_wire(rid)
    self.assertLen(payload, (5 * 13 + 7) // 8)
    back = server.MaskedSum.from_wire(header, payload, rid, 10, 100)
    np.testing.assert_array_equal(back.values, a.values)
    self.assertEqual(back.parties, a.parties)
    with self.assertRaisesRegex(messages.ProtocolError, 'already in'):
      a.add(['p2'], va)
    with self.assertRaisesRegex(messages.ProtocolError, 'another round'):
      server.MaskedSum.from_wire(header, payload,
                                 messages.RoundId('ab' * 16, 2, 1), 10, 100)
    with self.assertRaisesRegex(messages.ProtocolError, 'shape'):
      a.add(['p9'], np.zeros(4, np.uint64))


class RoundServerTest(absltest.TestCase):

  def test_exact_sum_with_dropouts_after_shares_and_after_input(self):
    stages, names, inputs = _round()
    stages.advertise().reveal().share()
    # edge-0 never sends its masked input; edge-6 drops after sending it.
    stages.mask(inputs, names[1:])
    stages.sign(names[1:6]).unmask(names[1:6])
    expected = sum(inputs[p] for p in names[1:]) % 2**16
    np.testing.assert_array_equal(stages.server.result(), expected)
    outcome = stages.server.outcome()
    self.assertEqual(outcome.survivors, names[1:])
    self.assertEqual(outcome.unmasked, names[1:6])

  def test_phases_are_strict(self):
    stages, _, _ = _round()
    with self.assertRaisesRegex(messages.ProtocolError, 'phase'):
      stages.server.reveals_request()
    stages.advertise()
    with self.assertRaisesRegex(messages.ProtocolError, 'phase'):
      stages.server.result()

  def test_missing_reveal_fails_the_attempt_with_a_retry_list(self):
    stages, names, _ = _round()
    stages.advertise().reveal(names[:-1])
    with self.assertRaises(server.AttemptFailed) as caught:
      stages.server.reveals_request()
    self.assertEqual(caught.exception.retry_with, names[:-1])

  def test_too_few_survivors_or_signatures_release_nothing(self):
    stages, names, inputs = _round()
    stages.advertise().reveal().share().mask(inputs, names[:4])
    with self.assertRaisesRegex(messages.RoundFailed, 'fewer than 5'):
      stages.server.survivors_request()
    stages, names, inputs = _round()
    stages.through_masked_input(inputs).sign(names[:4])
    with self.assertRaisesRegex(messages.RoundFailed, 'quorum 5'):
      stages.server.signatures_request()

  def test_misplaced_shares_in_unmask_replies_are_refused(self):
    stages, names, inputs = _round()
    stages.advertise().reveal().share().mask(inputs, names[1:])
    stages.sign(names[1:])
    request = stages.server.signatures_request()
    reply = stages.parties[names[1]].unmask(request)
    s_share = reply['s_shares'][names[0]]
    b_share = reply['b_shares'][names[2]]
    for why, bad in [
        ('b-share of a dropped party', dict(reply, b_shares=dict(
            reply['b_shares'], **{names[0]: s_share}))),
        ('s-share of a survivor', dict(reply, s_shares=dict(
            reply['s_shares'], **{names[2]: b_share}))),
        ('short share', dict(reply, b_shares=dict(
            reply['b_shares'], **{names[2]: b_share[:-4]}))),
        ('other round', dict(reply, round=2)),
    ]:
      with self.assertRaises(messages.ProtocolError, msg=why):
        stages.server.add_unmask(copy.deepcopy(bad))
    stages.server.add_unmask(reply)
    with self.assertRaisesRegex(messages.ProtocolError, 'unexpected'):
      stages.server.add_unmask(reply)

  def test_a_wrong_share_fails_the_round_instead_of_a_wrong_sum(self):
    # A colluder sends a bad s-share: with exactly t shares the rebuilt key
    # does not match its advert; with more, the shares are inconsistent.
    for exactly_t, why in ((True, 'does not match its advert'),
                           (False, 'does not lie on the polynomial')):
      stages, names, inputs = _round()
      stages.advertise().reveal().share().mask(inputs, names[1:])
      stages.sign(names[1:])
      request = stages.server.signatures_request()
      for i, name in enumerate(names[1:6]):  # 5 holders of edge-0's shares.
        reply = stages.parties[name].unmask(request)
        if i == 0:
          bad = shamir.decode(messages.b64decode(
              reply['s_shares'][names[0]], 's', 66)) ^ 1
          reply['s_shares'][names[0]] = messages.b64encode(shamir.encode(bad))
        if i == 1 and exactly_t:
          del reply['s_shares'][names[0]]
        stages.server.add_unmask(reply)
      with self.assertRaisesRegex(messages.RoundFailed, why):
        stages.server.result()


  def test_self_revealed_seeds(self):
    stages, names, inputs = _round()
    stages.through_masked_input(inputs).sign()
    request = stages.server.signatures_request()
    replies = {p: stages.parties[p].unmask(request) for p in names}
    for reply in replies.values():  # 6 listed neighbours >= t = 4.
      self.assertLen(messages.b64decode(reply['self_seed'], 's'), 32)
    for why, bad in [('31 bytes', messages.b64encode(bytes(31))),
                     ('not base64', '@@@@')]:
      with self.assertRaises(messages.ProtocolError, msg=why):
        stages.server.add_unmask(dict(replies[names[0]], self_seed=bad))
    # A seed its own shares contradict fails the round, not the sum.
    liar = dict(replies[names[0]],
                self_seed=messages.b64encode(bytes(range(32))))
    stages.server.add_unmask(liar)
    for p in names[1:]:
      stages.server.add_unmask(replies[p])
    with self.assertRaisesRegex(messages.RoundFailed, 'contradict'):
      stages.server.result()

  def test_self_seeds_alone_suffice_for_survivors(self):
    # Every survivor reveals its own seed; no b-shares reach the server.
    stages, names, inputs = _round()
    stages.through_masked_input(inputs).sign()
    request = stages.server.signatures_request()
    for p in names:
      reply = stages.parties[p].unmask(request)
      stages.server.add_unmask(dict(reply, b_shares={}))
    np.testing.assert_array_equal(stages.server.result(),
                                  sum(inputs.values()) % 2**16)


class UniformityTest(absltest.TestCase):
  """What one edge server or the coordinator sees is uniform mod 2^b."""

  def _uniform(self, values, bits, what):
    top = (values >> np.uint64(bits - 8)).astype(np.int64)
    chi = stats.chisquare(np.bincount(top, minlength=256)).pvalue
    ks = stats.kstest(values.astype(np.float64) / 2.0**bits, 'uniform').pvalue
    self.assertGreater(chi, _ALPHA, f'{what}: chi-square p = {chi}')
    self.assertGreater(ks, _ALPHA, f'{what}: KS p = {ks}')

  def test_masked_inputs_and_partial_sums_are_uniform_the_sum_is_not(self):
    bits, length = 32, 25_600
    stages, names, _ = _round(n=6, bits=bits, length=length)
    # Very non-uniform inputs: small non-negative values.
    rng = np.random.default_rng(7)
    inputs = {p: rng.integers(0, 256, length, dtype=np.uint64)
              for p in names}
    stages.advertise().reveal().share().mask(inputs)
    edges = [server.MaskedSum(bits, length) for _ in range(2)]
    for i, name in enumerate(names):
      header, payload = stages.masked[name]
      self._uniform(prg.unpack(payload, bits, length), bits,
                    f'masked input of {name}')
      edges[i % 2].add_input(header, payload, stages.rid)
    for i, edge in enumerate(edges):
      self._uniform(edge.values, bits, f'edge server {i} partial')
    total = server.MaskedSum(bits, length)
    for edge in edges:
      total.merge(edge)
    # The coordinator's masked total: still uniform until unmasking.
    self._uniform(total.values, bits, 'coordinator masked total')
    stages.sign().unmask()
    result = stages.server.result()
    np.testing.assert_array_equal(result, sum(inputs.values()))
    top = (result >> np.uint64(bits - 8)).astype(np.int64)
    self.assertLess(stats.chisquare(np.bincount(top, minlength=256)).pvalue,
                    1e-100)
    self.assertLess(stats.kstest(result / 2.0**bits, 'uniform').pvalue,
                    1e-100)


if __name__ == '__main__':
  absltest.main()
