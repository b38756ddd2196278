import json
import struct

from absl.testing import absltest

from workers import wire


def _forged(layout, payload: bytes = b'abcdefgh') -> bytes:
  """A message with a hand-written blob layout (what a hostile peer sends)."""
  header = json.dumps({'_blobs': layout}).encode()
  return struct.pack('>Q', len(header)) + header + payload


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

  def test_hostile_blob_lengths_are_refused(self):
    # Each of these used to slice something (a negative length read
    # backwards into the header) or crash with a TypeError.
    cases = {
        'negative': [['a', -4], ['b', 12]],
        'float': [['a', 4.0], ['b', 4]],
        'string': [['a', '4'], ['b', 4]],
        'bool': [['a', True], ['b', 7]],
        'null': [['a', None]],
        'huge': [['a', 1 << 62]],
        'three fields': [['a', 4, 'x'], ['b', 4]],
        'name not a string': [[7, 8]],
        'layout not a list': {'a': 8},
        'duplicate': [['a', 4], ['a', 4]],
    }
    for what, layout in cases.items():
      with self.subTest(what):
        with self.assertRaises(wire.WireError):
          wire.unpack(_forged(layout))
    self.assertEqual(wire.unpack(_forged([['a', 4], ['b', 4]]))[1],
                     {'a': b'abcd', 'b': b'efgh'})

  def test_huge_or_non_object_header_is_refused(self):
    with self.assertRaises(wire.WireError):
      wire.unpack(struct.pack('>Q', 1 << 40) + b'{}')
    for header in (b'[1, 2]', b'"s"', b'null', b'{"_blobs": 3'):
      with self.subTest(header=header):
        with self.assertRaises(wire.WireError):
          wire.unpack(struct.pack('>Q', len(header)) + header)


if __name__ == '__main__':
  absltest.main()
