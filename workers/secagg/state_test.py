import json
import os
import stat

from absl.testing import absltest

from workers.secagg import messages
from workers.secagg import state

_RUN = 'ab' * 16


def _rid(round_num, attempt, run=_RUN):
  return messages.RoundId(run, round_num, attempt)


class ServedRoundsTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path
    self.path = os.path.join(self.dir, 'secagg-state.json')

  def test_attempts_increase_and_stop_at_input(self):
    served = state.ServedRounds(self.path)
    served.begin_attempt(_rid(1, 1), 3)
    with self.assertRaisesRegex(messages.Refused, 'not after'):
      served.begin_attempt(_rid(1, 1), 3)
    served.begin_attempt(_rid(1, 2), 3)
    with self.assertRaisesRegex(messages.Refused, 'not the current'):
      served.record_input(_rid(1, 1))
    served.record_input(_rid(1, 2))
    with self.assertRaisesRegex(messages.Refused, 'already sent'):
      served.begin_attempt(_rid(1, 3), 3)
    with self.assertRaisesRegex(messages.Refused, 'already sent'):
      served.record_input(_rid(1, 2))
    served.record_unmask(_rid(1, 2))
    with self.assertRaisesRegex(messages.Refused, 'already revealed'):
      served.record_unmask(_rid(1, 2))
    # Other rounds and runs are independent.
    served.begin_attempt(_rid(2, 1), 3)
    served.begin_attempt(_rid(1, 1, run='cd' * 16), 3)

  def test_attempt_limit_and_unmask_needs_input(self):
    served = state.ServedRounds()
    with self.assertRaisesRegex(messages.Refused, 'exceeds the limit'):
      served.begin_attempt(_rid(1, 4), 3)
    served.begin_attempt(_rid(1, 1), 3)
    with self.assertRaisesRegex(messages.Refused, 'no masked input'):
      served.record_unmask(_rid(1, 1))

  def test_survives_restart(self):
    served = state.ServedRounds(self.path)
    served.begin_attempt(_rid(5, 1), 3)
    served.record_input(_rid(5, 1))
    self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
    restarted = state.ServedRounds(self.path)
    self.assertEqual(restarted.served(_RUN, 5),
                     {'attempts': [1], 'input': 1, 'unmask': None})
    with self.assertRaisesRegex(messages.Refused, 'already sent'):
      restarted.begin_attempt(_rid(5, 2), 3)
    self.assertIsNone(restarted.served(_RUN, 6))
    with open(self.path, encoding='utf-8') as f:
      self.assertEqual(json.load(f)['version'], 1)

  def test_unreadable_file_is_an_error_not_a_fresh_start(self):
    for content in ('{not json', '{"version": 2, "runs": {}}', '[]'):
      with open(self.path, 'w', encoding='utf-8') as f:
        f.write(content)
      with self.assertRaisesRegex(ValueError, 'unreadable'):
        state.ServedRounds(self.path)


if __name__ == '__main__':
  absltest.main()
