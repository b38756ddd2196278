from absl.testing import absltest

from workers.secagg import messages

_RUN = '0123456789abcdef0123456789abcdef'


class RoundIdTest(absltest.TestCase):

  def test_tag_round_trip(self):
    rid = messages.RoundId(_RUN, 17, 2)
    self.assertEqual(rid.tag, _RUN + '-r17-a2')
    self.assertEqual(messages.RoundId.parse_tag(rid.tag), rid)
    self.assertEqual(messages.RoundId.from_json(rid.to_json()), rid)

  def test_hostile_tags_are_refused(self):
    for tag in ['..', '.', '/', _RUN + '-r1-a1/..', '../' + _RUN + '-r1-a1',
                _RUN + '-r1-a1\n', _RUN + '-r1-a1 ', _RUN.upper() + '-r1-a1',
                _RUN + '-r01-a1', _RUN + '-r1-a0', _RUN + '-r1-a100',
                _RUN + '-r-1-a1', _RUN[:-1] + '-r1-a1', _RUN + '.-r1-a1',
                _RUN + '-r1-a1' + 'x' * 100, _RUN + '-r１-a1', '', None, 5]:
      with self.assertRaises(messages.ProtocolError, msg=repr(tag)):
        messages.RoundId.parse_tag(tag)

  def test_bad_fields_are_refused(self):
    for run, round_num, attempt in [('xyz', 1, 1), (_RUN, -1, 1),
                                    (_RUN, True, 1), (_RUN, 1, 0),
                                    (_RUN, 1.0, 1), (_RUN, 10**9, 1),
                                    (_RUN + '\n', 1, 1), (None, 1, 1)]:
      with self.assertRaises(messages.ProtocolError):
        messages.RoundId(run, round_num, attempt)

  def test_new_run_nonce_is_fresh_hex(self):
    a, b = messages.new_run_nonce(), messages.new_run_nonce()
    self.assertNotEqual(a, b)
    messages.RoundId(a, 0, 1)


class FieldTest(absltest.TestCase):

  def test_party_ids(self):
    for good in ['edge-0', 'a', 'A' * 64, 'pod_7']:
      self.assertEqual(messages.check_party(good), good)
    for bad in ['', '-x', '_x', 'a' * 65, 'a/b', 'a.b', '..', 'a\n', 'é',
                'a b', 3, None]:
      with self.assertRaises(messages.ProtocolError, msg=repr(bad)):
        messages.check_party(bad)

  def test_b64_is_strict(self):
    self.assertEqual(messages.b64decode(messages.b64encode(b'abc'), 'f', 3),
                     b'abc')
    for bad in ['YWJj\n', 'YW Jj', 'YWJ', '****', b'YWJj', 3, 'YWJjZA',
                'é']:
      with self.assertRaises(messages.ProtocolError, msg=repr(bad)):
        messages.b64decode(bad, 'f')
    with self.assertRaisesRegex(messages.ProtocolError, '3 bytes, expected 4'):
      messages.b64decode('YWJj', 'f', 4)
    with self.assertRaises(messages.ProtocolError):
      messages.b64decode('A' * (messages.MAX_B64_CHARS + 4), 'f')

  def test_check_fields(self):
    ok = {'stage': 's', 'a': 1}
    self.assertIs(messages.check_fields(ok, 's', ('a',)), ok)
    for bad in [[], 'x', {'stage': 't', 'a': 1}, {'stage': 's'},
                {'stage': 's', 'a': 1, 'b': 2}]:
      with self.assertRaises(messages.ProtocolError, msg=repr(bad)):
        messages.check_fields(bad, 's', ('a',))

  def test_get_int_rejects_bools_floats_and_range(self):
    self.assertEqual(messages.get_int({'n': 3}, 'n', 0, 5), 3)
    for bad in [True, 3.0, '3', 6, -1, None]:
      with self.assertRaises(messages.ProtocolError, msg=repr(bad)):
        messages.get_int({'n': bad}, 'n', 0, 5)

  def test_lists_and_maps_are_bounded(self):
    with self.assertRaisesRegex(messages.ProtocolError, 'at most 2'):
      messages.get_list({'l': [1, 2, 3]}, 'l', 2)
    with self.assertRaisesRegex(messages.ProtocolError, 'at most 1'):
      messages.get_party_map({'m': {'a': 1, 'b': 2}}, 'm', 1)
    with self.assertRaises(messages.ProtocolError):
      messages.get_party_map({'m': {'../x': 1}}, 'm', 5)
    self.assertEqual(messages.get_party_list({'l': ['a', 'b']}, 'l', 5),
                     ['a', 'b'])
    for bad in [['b', 'a'], ['a', 'a'], ['a', 1]]:
      with self.assertRaises(messages.ProtocolError, msg=repr(bad)):
        messages.get_party_list({'l': bad}, 'l', 5)


if __name__ == '__main__':
  absltest.main()
