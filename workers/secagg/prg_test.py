import os

from absl.testing import absltest
import numpy as np
from scipy import stats

from workers.secagg import prg

# RFC 8439 appendix A.1, test vectors 1 and 2: zero key, zero nonce, block
# counters 0 and 1.
_ZERO_KEY_BLOCKS = bytes.fromhex(
    '76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7'
    'da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586'
    '9f07e7be5551387a98ba977c732d080dcb0f29a048e3656912c6533e32ee7aed'
    '29b721769ce64e43d57133b074d839d531ed1f28510afb45ace10a1f4b794d6f')


def _chacha20_block(key: bytes, counter: int) -> bytes:
  """RFC 8439 section 2.3 in plain Python, zero nonce: an independent oracle."""
  def rotl(v, c):
    return ((v << c) & 0xffffffff) | (v >> (32 - c))

  def quarter(s, a, b, c, d):
    s[a] = (s[a] + s[b]) & 0xffffffff
    s[d] = rotl(s[d] ^ s[a], 16)
    s[c] = (s[c] + s[d]) & 0xffffffff
    s[b] = rotl(s[b] ^ s[c], 12)
    s[a] = (s[a] + s[b]) & 0xffffffff
    s[d] = rotl(s[d] ^ s[a], 8)
    s[c] = (s[c] + s[d]) & 0xffffffff
    s[b] = rotl(s[b] ^ s[c], 7)

  state = ([0x61707865, 0x3320646e, 0x79622d32, 0x6b206574] +
           [int.from_bytes(key[i:i + 4], 'little') for i in range(0, 32, 4)] +
           [counter, 0, 0, 0])
  work = list(state)
  for _ in range(10):
    quarter(work, 0, 4, 8, 12)
    quarter(work, 1, 5, 9, 13)
    quarter(work, 2, 6, 10, 14)
    quarter(work, 3, 7, 11, 15)
    quarter(work, 0, 5, 10, 15)
    quarter(work, 1, 6, 11, 12)
    quarter(work, 2, 7, 8, 13)
    quarter(work, 3, 4, 9, 14)
  return b''.join(((w + s) & 0xffffffff).to_bytes(4, 'little')
                  for w, s in zip(work, state))


class KeystreamTest(absltest.TestCase):

  def test_oracle_matches_rfc8439(self):
    self.assertEqual(_chacha20_block(bytes(32), 0) +
                     _chacha20_block(bytes(32), 1), _ZERO_KEY_BLOCKS)

  def test_words_are_the_rfc8439_keystream_little_endian(self):
    words = prg.keystream_words(bytes(32), 16)
    self.assertEqual(words.dtype, np.uint64)
    self.assertEqual(words.astype('<u8').tobytes(), _ZERO_KEY_BLOCKS)

  def test_random_key_across_blocks_matches_oracle(self):
    key = os.urandom(32)
    words = prg.keystream_words(key, 40)  # 5 blocks.
    stream = b''.join(_chacha20_block(key, i) for i in range(5))
    expected = [int.from_bytes(stream[8 * i:8 * i + 8], 'little')
                for i in range(40)]
    self.assertEqual([int(w) for w in words], expected)

  def test_expand_keeps_low_bits(self):
    key = os.urandom(32)
    words = prg.keystream_words(key, 100)
    for bits in (1, 13, 32, 62):
      values = prg.expand(key, 100, bits)
      self.assertEqual([int(v) for v in values],
                       [int(w) % 2**bits for w in words])

  def test_expand_is_uniform_mod_2b(self):
    # Chi-square over 64 bins of the top 6 of 13 bits (false failure 1e-6).
    values = prg.expand(os.urandom(32), 64 * 2000, 13)
    counts = np.bincount((values >> np.uint64(7)).astype(np.int64),
                         minlength=64)
    self.assertGreater(stats.chisquare(counts).pvalue, 1e-6)

  def test_add_stream_signs(self):
    key = os.urandom(32)
    acc = np.zeros(50, np.uint64)
    prg.add_stream(acc, key, +1)
    np.testing.assert_array_equal(acc, prg.keystream_words(key, 50))
    prg.add_stream(acc, key, -1)
    np.testing.assert_array_equal(acc, np.zeros(50, np.uint64))
    prg.add_stream(acc, key, -1)
    self.assertEqual([int(v) for v in prg.reduce(acc, 20)],
                     [(-int(w)) % 2**20
                      for w in prg.keystream_words(key, 50)])

  def test_bad_arguments(self):
    with self.assertRaises(ValueError):
      prg.keystream_words(b'short', 3)
    with self.assertRaises(ValueError):
      prg.expand(bytes(32), 3, 63)
    with self.assertRaises(ValueError):
      prg.expand(bytes(32), 3, 0)


class PackTest(absltest.TestCase):

  def test_round_trip_all_widths(self):
    rng = np.random.default_rng(0)
    for bits in range(1, prg.MAX_BITS + 1):
      for length in (1, 7, 63, 64, 65, 200):
        values = rng.integers(0, 2**bits, length, dtype=np.uint64)
        data = prg.pack(values, bits)
        self.assertLen(data, (length * bits + 7) // 8)
        np.testing.assert_array_equal(prg.unpack(data, bits, length), values)

  def test_matches_big_integer_packing(self):
    rng = np.random.default_rng(1)
    for bits in (3, 8, 17, 32, 45, 62):
      values = rng.integers(0, 2**bits, 70, dtype=np.uint64)
      number = sum(int(v) << (i * bits) for i, v in enumerate(values))
      expected = number.to_bytes((70 * bits + 7) // 8, 'little')
      self.assertEqual(prg.pack(values, bits), expected, msg=bits)

  def test_refuses_wrong_sizes_and_values(self):
    with self.assertRaisesRegex(ValueError, 'expected 4'):
      prg.unpack(bytes(5), 8, 4)
    with self.assertRaisesRegex(ValueError, 'expected'):
      prg.unpack(bytes(3), 13, 2)
    with self.assertRaisesRegex(ValueError, 'does not fit'):
      prg.pack(np.array([8], np.uint64), 3)
    with self.assertRaises(ValueError):
      prg.pack(np.zeros((2, 2), np.uint64), 8)


if __name__ == '__main__':
  absltest.main()
