import os
import pickle

from absl.testing import absltest
import numpy as np

from data_prep import cifar10
from data_prep import errors
from data_prep import shards
from data_prep import testing


class Cifar10Test(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path
    self.batches = testing.synthetic_cifar10_batches()

  def test_pixel_layout_is_the_published_one(self):
    # Row of the published format: 1024 red, 1024 green, 1024 blue bytes,
    # each plane row-major over the 32x32 image.
    data = np.zeros((1, 3072), np.uint8)
    data[0, 0 * 32 + 1] = 7  # Red of (row 0, column 1).
    data[0, 1024 + 2 * 32 + 3] = 8  # Green of (row 2, column 3).
    data[0, 2048 + 31 * 32 + 31] = 9  # Blue of (row 31, column 31).
    for write, read in (
        (testing.write_cifar10_python, cifar10.read_python_batch),
        (testing.write_cifar10_binary, cifar10.read_binary_batch)):
      with self.subTest(read.__name__):
        folder = os.path.join(self.dir, read.__name__)
        write(folder, {'one': (data, [4])})
        path = os.path.join(folder, 'one' + (
            '.bin' if read is cifar10.read_binary_batch else ''))
        images, labels = read(path)
        self.assertEqual(images.shape, (1, 32, 32, 3))
        self.assertEqual(labels.tolist(), [4])
        self.assertEqual(images[0, 0, 1, 0], 7)
        self.assertEqual(images[0, 2, 3, 1], 8)
        self.assertEqual(images[0, 31, 31, 2], 9)
        self.assertEqual(int(images.sum()), 24)

  def test_both_versions_give_the_same_shards(self):
    testing.write_cifar10_python(
        os.path.join(self.dir, 'py', 'cifar-10-batches-py'), self.batches)
    testing.write_cifar10_binary(os.path.join(self.dir, 'bin'), self.batches)
    made = {}
    for version in ('py', 'bin'):
      location = cifar10.locate(os.path.join(self.dir, version))
      self.assertEqual(location.version,
                       cifar10.PYTHON if version == 'py' else cifar10.BINARY)
      made[version] = cifar10.prepare(
          os.path.join(self.dir, version), os.path.join(self.dir, f's-{version}'),
          num_clients=4, partition='iid', seed=1)
    py, binary = made['py'], made['bin']
    self.assertEqual([c.sha256 for c in py.clients],
                     [c.sha256 for c in binary.clients])
    self.assertEqual(py.eval.sha256, binary.eval.sha256)
    self.assertEqual(sum(c.num_examples for c in py.clients), 100)
    self.assertEqual(py.eval.num_examples, 20)
    # The eval shard is test_batch, in order.
    test_data, test_labels = self.batches[cifar10.TEST_BATCH]
    rows = shards.read_numpy(py, py.eval)
    np.testing.assert_array_equal(rows['label'], test_labels)
    np.testing.assert_array_equal(
        rows['pixels'][5, :, :, 0].ravel(), test_data[5, :1024])

  def test_channel_statistics_match_numpy(self):
    images = np.random.default_rng(3).integers(0, 256, (50, 32, 32, 3),
                                               dtype=np.uint8)
    mean, std = cifar10.channel_statistics(images)
    scaled = images.astype(np.float64) / 255.0
    np.testing.assert_allclose(mean, scaled.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(std, scaled.std(axis=(0, 1, 2)), rtol=1e-10)

  def test_a_pickle_that_would_run_code_is_refused(self):
    marker = os.path.join(self.dir, 'pwned')

    class Evil:

      def __reduce__(self):
        return (os.system, ('touch ' + marker,))

    path = os.path.join(self.dir, 'data_batch_1')
    with open(path, 'wb') as f:
      pickle.dump({b'data': Evil(), b'labels': [1]}, f, protocol=2)
    with self.assertRaisesRegex(errors.DataFormatError,
                                f'{path} is not a CIFAR-10 batch .*refusing '
                                'to load posix.system'):
      cifar10.read_python_batch(path)
    self.assertFalse(os.path.exists(marker))

  def test_malformed_batches_are_named(self):
    folder = os.path.join(self.dir, 'bin')
    testing.write_cifar10_binary(folder, {'cut': self.batches['test_batch']})
    path = os.path.join(folder, 'cut.bin')
    with open(path, 'r+b') as f:
      f.truncate(3073 * 2 + 100)
    with self.assertRaisesRegex(errors.DataFormatError,
                                f'{path} .*6246 bytes is not a whole number'):
      cifar10.read_binary_batch(path)
    data, _ = self.batches['test_batch']
    testing.write_cifar10_binary(folder, {'label': (data[:2], [3, 11])})
    with self.assertRaisesRegex(errors.DataFormatError,
                                'label 11 of image 1 is outside 0..9'):
      cifar10.read_binary_batch(os.path.join(folder, 'label.bin'))
    testing.write_cifar10_python(folder, {'shape': (data[:, :100], [1] * 20)})
    with self.assertRaisesRegex(errors.DataFormatError, r'not uint8 \[N, 3072\]'):
      cifar10.read_python_batch(os.path.join(folder, 'shape'))
    with self.assertRaisesRegex(errors.DataPrepError, 'holds neither'):
      cifar10.locate(folder)

  def test_reuses_unchanged_files(self):
    testing.write_cifar10_binary(self.dir, self.batches)
    shard_dir = os.path.join(self.dir, 's')
    first = cifar10.find_or_prepare(self.dir, shard_dir, num_clients=2,
                                    partition='dirichlet')
    mtime = os.stat(os.path.join(shard_dir, 'manifest.json')).st_mtime_ns
    self.assertEqual(cifar10.find_or_prepare(self.dir, shard_dir,
                                             num_clients=2,
                                             partition='dirichlet'), first)
    self.assertEqual(
        os.stat(os.path.join(shard_dir, 'manifest.json')).st_mtime_ns, mtime)
    with self.assertRaisesRegex(errors.DataPrepError, 'no owners'):
      cifar10.prepare(self.dir, shard_dir, partition='natural')


if __name__ == '__main__':
  absltest.main()
