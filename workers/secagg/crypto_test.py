import os

from absl.testing import absltest
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from workers.secagg import crypto
from workers.secagg import messages
from workers.secagg import shamir

_RID = messages.RoundId('0123456789abcdef0123456789abcdef', 3, 1)


class VectorsTest(absltest.TestCase):

  def test_hkdf_rfc5869_case_1(self):
    okm = bytes.fromhex('3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db0'
                        '2d56ecc4c5bf34007208d5b887185865')
    # HKDF-Expand's first 32 bytes are T(1): a prefix of the 42-byte OKM.
    self.assertEqual(crypto.hkdf(b'\x0b' * 22, bytes(range(13)),
                                  bytes(range(0xf0, 0xfa))), okm[:32])

  def test_chacha20_poly1305_rfc8439_section_2_8_2(self):
    plaintext = (b"Ladies and Gentlemen of the class of '99: If I could offer "
                 b'you only one tip for the future, sunscreen would be it.')
    expected = bytes.fromhex(
        'd31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6'
        '3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36'
        '92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc'
        '3ff4def08e4b7a9de576d26586cec64b6116'
        '1ae10b594f09e26a7e902ecbd0600691')
    aead = ChaCha20Poly1305(bytes(range(0x80, 0xa0)))
    self.assertEqual(aead.encrypt(bytes.fromhex('070000004041424344454647'),
                                  plaintext,
                                  bytes.fromhex('50515253c0c1c2c3c4c5c6c7')),
                     expected)


class EncodingTest(absltest.TestCase):

  def test_length_prefix_is_unambiguous(self):
    self.assertNotEqual(crypto.lp('ab', 'c'), crypto.lp('a', 'bc'))
    self.assertNotEqual(crypto.lp(1), crypto.lp(b'\x01'))
    self.assertEqual(crypto.lp(b'xy'), b'\x00\x00\x00\x02xy')

  def test_context_binds_every_field(self):
    advert = ('a', os.urandom(32), os.urandom(32), os.urandom(32),
              os.urandom(64))
    base = crypto.context(_RID, 16, 10, (3, 2, 2, 2, 2), [advert])
    variants = [
        crypto.context(messages.RoundId(_RID.run, 4, 1), 16, 10,
                       (3, 2, 2, 2, 2), [advert]),
        crypto.context(messages.RoundId(_RID.run, 3, 2), 16, 10,
                       (3, 2, 2, 2, 2), [advert]),
        crypto.context(_RID, 17, 10, (3, 2, 2, 2, 2), [advert]),
        crypto.context(_RID, 16, 11, (3, 2, 2, 2, 2), [advert]),
        crypto.context(_RID, 16, 10, (3, 2, 3, 2, 2), [advert]),
        crypto.context(_RID, 16, 10, (3, 2, 2, 2, 2),
                       [advert[:1] + (os.urandom(32),) + advert[2:]]),
        crypto.context(_RID, 16, 10, (3, 2, 2, 2, 2), [advert, advert]),
    ]
    self.assertLen({base, *variants}, len(variants) + 1)
    r1, r2 = os.urandom(32), os.urandom(32)
    self.assertNotEqual(crypto.graph_seed(base, [r1, r2]),
                        crypto.graph_seed(base, [r2, r1]))


class KeyDerivationTest(absltest.TestCase):

  def test_pair_keys_agree_and_share_keys_have_direction(self):
    a = x25519.X25519PrivateKey.generate()
    b = x25519.X25519PrivateKey.generate()
    salt = os.urandom(32)
    self.assertEqual(crypto.pair_key(a, b.public_key(), salt, 'a', 'b'),
                     crypto.pair_key(b, a.public_key(), salt, 'b', 'a'))
    self.assertNotEqual(crypto.pair_key(a, b.public_key(), salt, 'a', 'b'),
                        crypto.pair_key(a, b.public_key(), os.urandom(32),
                                        'a', 'b'))
    ab = crypto.share_key(a, b.public_key(), salt, 'a', 'b')
    self.assertEqual(ab, crypto.share_key(b, a.public_key(), salt, 'a', 'b'))
    self.assertNotEqual(ab, crypto.share_key(b, a.public_key(), salt, 'b',
                                             'a'))

  def test_share_ciphertexts(self):
    key, salt = os.urandom(32), os.urandom(32)
    ad = crypto.share_ad(salt, 'a', 'b')
    b_share, s_share = shamir.PRIME - 1, 12345
    sealed = crypto.seal_shares(key, ad, 7, b_share, s_share)
    self.assertLen(sealed, crypto.SHARE_CIPHERTEXT_BYTES)
    self.assertEqual(crypto.open_shares(key, ad, sealed), (7, b_share, s_share))
    for bad_ad in (crypto.share_ad(salt, 'b', 'a'),
                   crypto.share_ad(os.urandom(32), 'a', 'b'),
                   crypto.share_ad(salt, 'a', 'c')):
      with self.assertRaisesRegex(messages.ProtocolError, 'authenticate'):
        crypto.open_shares(key, bad_ad, sealed)
    for i in (0, 50, len(sealed) - 1):
      tampered = bytearray(sealed)
      tampered[i] ^= 1
      with self.assertRaisesRegex(messages.ProtocolError, 'authenticate'):
        crypto.open_shares(key, ad, bytes(tampered))
    with self.assertRaisesRegex(messages.ProtocolError, 'bytes, expected'):
      crypto.open_shares(key, ad, sealed[:-1])

  def test_plaintext_out_of_field_is_refused(self):
    key, ad = os.urandom(32), b'ad'
    plaintext = (bytes(4) + shamir.PRIME.to_bytes(66, 'big') +
                 bytes(shamir.SHARE_BYTES))
    sealed = ChaCha20Poly1305(key).encrypt(bytes(12), plaintext, ad)
    with self.assertRaisesRegex(messages.ProtocolError, 'field element'):
      crypto.open_shares(key, ad, sealed)


if __name__ == '__main__':
  absltest.main()
