"""Property test: 1,000 random rounds with random dropouts at every stage.

For each round an oracle written from the protocol description (not from the
party or server code) predicts, from who dropped where and the round's
graph, whether the round can complete. Above the threshold the unmasked sum
must equal the sum mod 2^b of exactly the inputs the server received; below
it the round must fail with nothing released: no sum, and no party reveals
shares when the failure is at the consistency or unmasking stage.
"""

import collections
import random

from absl.testing import absltest
import numpy as np

from workers.secagg import messages
from workers.secagg import policy as policy_lib
from workers.secagg import simulation
from workers.secagg import testing

ROUNDS = 1000


def _oracle(names, drop_at, policy, outcome):
  """(completes, survivors, why not) from the protocol rules alone."""
  online = [p for p in names if drop_at.get(p) != 'advertise']
  reveal_drops = [p for p in online if drop_at.get(p) == 'reveal']
  # Attempt 1 has everyone online; it fails at the reveal stage if anyone
  # drops there, and attempt 2 runs without them.
  if len(online) < policy.min_parties:
    return False, [], 'participants'
  if reveal_drops:
    if policy.max_attempts < 2:
      return False, [], 'reveal'
    online = [p for p in online if p not in reveal_drops]
    if len(online) < policy.min_parties:
      return False, [], 'participants'
  try:
    params = policy.derive(len(online))
  except messages.Refused:
    return False, [], 'participants'
  assert outcome.participants == online, (outcome.participants, online)
  nbrs = {p: set(v) for p, v in outcome.neighbors.items()}
  t, q = params.threshold, params.quorum
  u2 = {p for p in online if drop_at.get(p) != 'shares'}
  u3 = {p for p in u2 if drop_at.get(p) != 'masked_input'
        and len(nbrs[p] & u2) >= t}
  if len(u3) < max(params.min_parties, q):
    return False, sorted(u3), 'survivors'
  u4 = {p for p in u3 if drop_at.get(p) != 'consistency'}
  if len(u4) < q:
    return False, sorted(u3), 'quorum'
  u5 = {p for p in u4 if drop_at.get(p) != 'unmask'}
  for u in u3:
    # A survivor with t listed neighbours reveals its own seed; any other
    # member of the sum needs t of its neighbours to reveal b-shares.
    if not (u in u5 and len(nbrs[u] & u3) >= t) and len(nbrs[u] & u5) < t:
      return False, sorted(u3), 'rebuild'
  for v in u2 - u3:
    if nbrs[v] & u3 and len(nbrs[v] & u5) < t:
      return False, sorted(u3), 'rebuild'
  return True, sorted(u3), ''


class PropertyTest(absltest.TestCase):

  def test_random_rounds(self):
    rng = random.Random(20240613)
    tally = collections.Counter()
    for i in range(ROUNDS):
      n = rng.randint(3, 12)
      bits = rng.choice([1, 2, 7, 16, 31, 32, 33, 48, 62])
      length = rng.randint(1, 6)
      policy = policy_lib.Policy(
          min_parties=rng.randint(2, 5),
          threshold_ratio=rng.choice([0.0, 0.34, 0.5, 0.7]),
          neighbors=rng.choice([None, None, 2, 3, 4, 6, 20]),
          quorum_ratio=rng.choice([0.5, 2 / 3, 0.8]),
          max_attempts=rng.choice([1, 2, 3]))
      parties, _, roster = testing.make_parties(n, policy, prefix=f'r{i}')
      names = sorted(parties)
      drop_rate = rng.choice([0.0, 0.1, 0.25, 0.5])
      drop_at = {p: rng.choice(simulation.DROP_STAGES) for p in names
                 if rng.random() < drop_rate}
      inputs = testing.random_inputs(names, bits, length, seed=i)
      result = simulation.run_round(
          parties, inputs.__getitem__, run=messages.new_run_nonce(),
          round_num=i, bits=bits, length=length, policy=policy,
          roster=roster, drop_at=drop_at, edge_servers=rng.randint(1, 3))
      completes, survivors, why = _oracle(names, drop_at, policy,
                                          result.outcome)
      context = (f'round {i}: n={n} bits={bits} policy={policy} '
                 f'drops={drop_at} failure={result.failure!r} '
                 f'refusals={result.refusals}')
      self.assertEqual(result.completed, completes, context)
      tally[why or 'exact'] += 1
      if completes:
        self.assertEqual(result.included, survivors, context)
        expected = np.zeros(length, np.uint64)
        for p in survivors:
          expected += inputs[p]
        np.testing.assert_array_equal(
            result.total, expected & np.uint64(2**bits - 1), context)
      else:
        self.assertIsNone(result.total, context)
        if why in ('participants', 'reveal', 'survivors', 'quorum'):
          self.assertFalse(result.released, context)
      # Refusals happen only where the protocol says so: a party with
      # fewer than t neighbours that shared keys.
      for name, reason in result.refusals.items():
        self.assertTrue(reason.startswith('masked_input:'), (name, reason))
    # Both sides of the threshold are exercised in earnest.
    self.assertGreater(tally['exact'], ROUNDS // 4, tally)
    self.assertGreater(sum(tally.values()) - tally['exact'], ROUNDS // 10,
                       tally)
    for why in ('survivors', 'rebuild', 'participants'):
      self.assertGreater(tally[why], 5, tally)
    print('property test outcomes:', dict(tally))


if __name__ == '__main__':
  absltest.main()
