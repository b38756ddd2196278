from absl.testing import absltest

from workers.secagg import messages
from workers.secagg import policy


class PolicyTest(absltest.TestCase):

  def test_defaults_by_hand(self):
    # n = 1000: k = 2 * ceil(log2 1000) = 20, t = 20 // 2 + 1 = 11,
    # q = floor(2000 / 3) + 1 = 667.
    self.assertEqual(policy.Policy().derive(1000),
                     policy.RoundParams(1000, 20, 11, 667, 3))
    # n = 10 pods: k = min(9, 8) = 8, t = 5, q = 7.
    self.assertEqual(policy.Policy().derive(10),
                     policy.RoundParams(10, 8, 5, 7, 3))
    # n = 3: the complete graph, k = 2, t = 2, q = 3.
    self.assertEqual(policy.Policy().derive(3),
                     policy.RoundParams(3, 2, 2, 3, 3))

  def test_explicit_settings(self):
    p = policy.Policy(min_parties=5, threshold_ratio=1 / 3)
    self.assertEqual(p.derive(1000).threshold, 7)  # floor(20 / 3) + 1
    self.assertEqual(policy.Policy(neighbors=99).derive(10).neighbors, 9)
    # An odd degree on an odd count is made even (H(k, n) must be regular).
    self.assertEqual(policy.Policy(neighbors=5).derive(11).neighbors, 4)
    self.assertEqual(policy.Policy(neighbors=5).derive(12).neighbors, 5)
    self.assertEqual(policy.Policy(threshold=4).derive(10).threshold, 4)
    # The quorum never falls below the minimum number of parties.
    self.assertEqual(policy.Policy(min_parties=10, quorum_ratio=0.5
                                   ).derive(12).quorum, 10)

  def test_refusals(self):
    with self.assertRaisesRegex(messages.Refused, 'fewer than the minimum 3'):
      policy.Policy().derive(2)
    with self.assertRaisesRegex(messages.Refused, 'more than the maximum'):
      policy.Policy(max_parties=10).derive(11)
    with self.assertRaisesRegex(messages.Refused, 'exceeds'):
      policy.Policy(threshold=9).derive(6)

  def test_bad_policies(self):
    for kwargs in [{'min_parties': 1}, {'quorum_ratio': 0.4},
                   {'quorum_ratio': 1.0}, {'threshold': 1},
                   {'threshold_ratio': 1.0}, {'max_attempts': 0}]:
      with self.assertRaises(ValueError, msg=kwargs):
        policy.Policy(**kwargs)


if __name__ == '__main__':
  absltest.main()
