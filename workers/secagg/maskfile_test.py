import os
import stat

from absl.testing import absltest
import numpy as np

from workers.secagg import maskfile
from workers.secagg import messages

_TAG = messages.RoundId('0f' * 16, 12, 2).tag


class MaskFileTest(absltest.TestCase):

  def test_write_read_remove(self):
    root = self.create_tempdir().full_path
    mask = np.array([0, 1, 2**62 - 1, 12345], np.uint64)
    target = maskfile.write(root, _TAG, mask)
    self.assertEqual(target, os.path.join(root, 'secagg', _TAG, 'pod.mask'))
    self.assertEqual(stat.S_IMODE(os.stat(target).st_mode), 0o600)
    self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(target)).st_mode),
                     0o700)
    with open(target, 'rb') as f:  # Little-endian int64, as TF reads it.
      self.assertEqual(f.read()[16:24], (2**62 - 1).to_bytes(8, 'little'))
    np.testing.assert_array_equal(maskfile.read(root, _TAG), mask)
    maskfile.remove(root, _TAG)
    self.assertFalse(os.path.exists(os.path.dirname(target)))
    maskfile.remove(root, _TAG)

  def test_hostile_tags_never_become_paths(self):
    root = self.create_tempdir().full_path
    for tag in ['..', '.', '../x', 'a/b', _TAG + '/..', '/etc', _TAG + '\n']:
      with self.assertRaises(messages.ProtocolError, msg=tag):
        maskfile.write(root, tag, np.zeros(2, np.uint64))
      with self.assertRaises(messages.ProtocolError, msg=tag):
        maskfile.remove(root, tag)
    self.assertEqual(os.listdir(root), [])

  def test_values_must_fit_int64_sums(self):
    with self.assertRaises(ValueError):
      maskfile.write(self.create_tempdir().full_path, _TAG,
                     np.array([2**62], np.uint64))


if __name__ == '__main__':
  absltest.main()
