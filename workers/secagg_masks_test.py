import os
import tempfile

from absl.testing import absltest
import numpy as np
from scipy import stats

from workers import secagg_masks

_KEY = bytes(range(32))
# RFC 8439 section 2.4.2: the "sunscreen" plaintext and its ciphertext.
_PLAINTEXT = (b"Ladies and Gentlemen of the class of '99: If I could offer you "
              b'only one tip for the future, sunscreen would be it.')
_CIPHERTEXT = bytes.fromhex(
    '6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0b'
    'f91b65c5524733ab8f593dabcd62b3571639d624e65152ab8f530c359f0861d8'
    '07ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab7793736'
    '5af90bbf74a35be6b40b8eedf2785e42874d')
# RFC 8439 section 2.3.2: the serialized block for counter 1.
_BLOCK = bytes.fromhex(
    '10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e'
    'd2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e')
# RFC 8439 appendix A.1, test vector 1: zero key, zero nonce, counter 0.
_ZERO_BLOCK = bytes.fromhex(
    '76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7'
    'da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586')


def _xor(a: bytes, b: bytes) -> bytes:
  return bytes(x ^ y for x, y in zip(a, b))


def _layout(*pairs):
  return secagg_masks.Layout(tuple(p[0] for p in pairs),
                             tuple(p[1] for p in pairs))


class ChaCha20Test(absltest.TestCase):

  def test_rfc8439_block_function(self):
    nonce = bytes.fromhex('000000090000004a00000000')
    self.assertEqual(secagg_masks.chacha20_keystream(_KEY, 64, nonce, 1),
                     _BLOCK)

  def test_rfc8439_encryption(self):
    nonce = bytes.fromhex('000000000000004a00000000')
    stream = secagg_masks.chacha20_keystream(_KEY, len(_PLAINTEXT), nonce, 1)
    self.assertEqual(_xor(_PLAINTEXT, stream), _CIPHERTEXT)

  def test_rfc8439_appendix_zero_key(self):
    self.assertEqual(secagg_masks.chacha20_keystream(bytes(32), 64),
                     _ZERO_BLOCK)

  def test_bad_key_length(self):
    with self.assertRaisesRegex(secagg_masks.SecAggError, '32-byte key'):
      secagg_masks.chacha20_keystream(b'short', 64)


class MaskTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    # Three pods, clients spread over them.
    self.pods = {f'pod{i}': secagg_masks.PodKeys(
        secagg_masks.new_secret(), [f'c{i}{j}' for j in range(3)])
                 for i in range(3)}
    self.public = {c: bytes.fromhex(k) for pod in self.pods.values()
                   for c, k in pod.public_keys.items()}
    self.layout = _layout((1000, 2**37), (7, 2**20), (5, 1000003))

  def _masks(self, public, tag='r1-a1'):
    masks = {}
    for name, pod in self.pods.items():
      secret = pod._secret  # pylint: disable=protected-access
      for client in pod.client_ids:
        if client in public:
          masks[client] = secagg_masks.client_mask(
              secagg_masks.client_private_key(secret, client), client,
              public, tag, self.layout)
      del name
    return masks

  def _sum(self, masks):
    total, out = np.sum(list(masks.values()), axis=0), []
    offset = 0
    for size, modulus in zip(self.layout.sizes, self.layout.moduli):
      out.append(np.mod(total[offset:offset + size], modulus))
      offset += size
    return np.concatenate(out)

  def test_masks_cancel_over_all_participants(self):
    masks = self._masks(self.public)
    self.assertLen(masks, 9)
    self.assertEqual(self._sum(masks).tolist(), [0] * self.layout.total)

  def test_masks_do_not_cancel_over_a_pod(self):
    masks = self._masks(self.public)
    pod_sum = self._sum({c: masks[c] for c in self.pods['pod1'].client_ids})
    self.assertGreater(np.count_nonzero(pod_sum), 0.99 * self.layout.total)

  def test_pod_partial_is_uniform(self):
    layout = _layout((20000, 2**37))
    self.layout = layout
    masks = self._masks(self.public)
    pod_sum = self._sum({c: masks[c] for c in self.pods['pod0'].client_ids})
    # Kolmogorov-Smirnov against U[0, 1): a sum that did not cancel mod M
    # must look uniform; p is far above 1e-3 for a true uniform.
    self.assertGreater(stats.kstest(pod_sum / 2**37, 'uniform').pvalue, 1e-3)
    counts = np.bincount((pod_sum * 16 // 2**37).astype(int), minlength=16)
    self.assertGreater(stats.chisquare(counts).pvalue, 1e-3)

  def test_new_participant_set_or_tag_gives_fresh_masks(self):
    first = self._masks(self.public)
    survivors = {c: k for c, k in self.public.items() if not c.startswith('c2')}
    redone = self._masks(survivors)
    self.assertEqual(self._sum(redone).tolist(), [0] * self.layout.total)
    self.assertFalse(np.array_equal(first['c00'], redone['c00']))
    other_round = self._masks(self.public, tag='r2-a1')
    self.assertFalse(np.array_equal(first['c00'], other_round['c00']))

  def test_same_inputs_same_masks(self):
    self.assertTrue(np.array_equal(self._masks(self.public)['c11'],
                                   self._masks(self.public)['c11']))

  def test_wrong_own_public_key_is_refused(self):
    public = dict(self.public, c00=bytes(32))
    pod = self.pods['pod0']
    with self.assertRaisesRegex(secagg_masks.SecAggError,
                                'different public key for client c00'):
      secagg_masks.client_mask(
          secagg_masks.client_private_key(pod._secret, 'c00'), 'c00',  # pylint: disable=protected-access
          public, 't', self.layout)

  def test_prepare_round_writes_masks_and_drops_old_rounds(self):
    root = tempfile.mkdtemp()
    pod = self.pods['pod0']
    request = {'tag': 'r1-a1', 'clients': ['c00', 'c01'],
               'public_keys': {c: k.hex() for c, k in self.public.items()},
               'layout': self.layout.to_json()}
    pod.prepare_round(root, request)
    path = secagg_masks.mask_path(root, 'r1-a1', 'c00')
    self.assertEqual(os.path.getsize(path), 8 * self.layout.total)
    pod.prepare_round(root, dict(request, tag='r2-a1'))
    self.assertFalse(os.path.exists(path))
    self.assertTrue(os.path.exists(
        secagg_masks.mask_path(root, 'r2-a1', 'c01')))

  def test_prepare_round_refuses_bad_requests(self):
    pod = self.pods['pod0']
    good = {'tag': 'r1', 'clients': ['c00'],
            'public_keys': {c: k.hex() for c, k in self.public.items()},
            'layout': self.layout.to_json()}
    cases = {
        'does not hold': dict(good, clients=['c10']),
        'bad round tag': dict(good, tag='../etc'),
        'lacks': {k: v for k, v in good.items() if k != 'layout'},
        'hex': dict(good, public_keys={'c00': 'zz'}),
        'modulus': dict(good, layout=[[3, 2**70]]),
    }
    for message, request in cases.items():
      with self.subTest(message):
        with self.assertRaisesRegex(secagg_masks.SecAggError, message):
          pod.prepare_round(tempfile.mkdtemp(), request)
    # '.' and '..' would name the mask dir itself or its parent.
    for tag in ('.', '..', 'a/b', 'a.b', ''):
      with self.subTest(tag=tag):
        with self.assertRaisesRegex(secagg_masks.SecAggError, 'bad round tag'):
          pod.prepare_round(tempfile.mkdtemp(), dict(good, tag=tag))

  def test_secret_file_created_private_and_reused(self):
    path = os.path.join(tempfile.mkdtemp(), 'secagg.key')
    first = secagg_masks.load_or_create_secret(path)
    self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
    self.assertEqual(secagg_masks.load_or_create_secret(path), first)
    with open(path, 'wb') as f:
      f.write(b'short')
    with self.assertRaisesRegex(secagg_masks.SecAggError, 'holds 5 bytes'):
      secagg_masks.load_or_create_secret(path)


if __name__ == '__main__':
  absltest.main()
