from absl.testing import absltest

from workers import wire


class WireTest(absltest.TestCase):

  def test_round_trip_keeps_header_and_blobs(self):
    blobs = {'shared/0': b'\x00\x01' * 1000, 'edge-1/1': b'', 'x': b'abc'}
    header, out = wire.unpack(wire.pack({'pods': {'edge-1': 3}}, blobs))
    self.assertEqual(header, {'pods': {'edge-1': 3}})
    self.assertEqual(out, blobs)

  def test_truncated_message_is_refused(self):
    message = wire.pack({'a': 1}, {'b': b'12345'})
    for cut in (3, 12, len(message) - 1):
      with self.subTest(cut=cut):
        with self.assertRaises(wire.WireError):
          wire.unpack(message[:cut])

  def test_trailing_bytes_and_foreign_messages_are_refused(self):
    with self.assertRaisesRegex(wire.WireError, 'trailing'):
      wire.unpack(wire.pack({}, {'b': b'1'}) + b'junk')
    with self.assertRaises(wire.WireError):
      wire.unpack(b'\x00' * 7 + b'\x02{}')  # Header without a blob list.


if __name__ == '__main__':
  absltest.main()
