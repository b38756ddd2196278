"""Tests for data_prep.image_datasets."""

import gzip
import os

from absl.testing import absltest
import numpy as np

from data_prep import errors
from data_prep import idx
from data_prep import image_datasets

_FASHION_DIR = image_datasets.DEFAULT_DATA_DIRS["fashion_mnist"]


def _write_split(data_dir, names, images, labels, compress=True):
  suffix = ".gz" if compress else ""
  idx.write_idx(os.path.join(data_dir, names[0] + suffix), images, compress)
  idx.write_idx(os.path.join(data_dir, names[1] + suffix), labels, compress)


def _mnist_names(split):
  prefix = {"train": "train", "test": "t10k"}[split]
  return (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")


def _emnist_names(subset, split):
  return (f"emnist-{subset}-{split}-images-idx3-ubyte",
          f"emnist-{subset}-{split}-labels-idx1-ubyte")


class SyntheticTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path
    rng = np.random.default_rng(1)
    self.images = rng.integers(0, 256, size=(12, 28, 28), dtype=np.uint8)
    self.labels = rng.integers(0, 10, size=12).astype(np.uint8)

  def test_mnist_layout_round_trip(self):
    for split in ("train", "test"):
      _write_split(self.dir, _mnist_names(split), self.images,
                   self.labels)
      got = image_datasets.load_split("mnist", self.dir, split)
      np.testing.assert_array_equal(got.images, self.images)
      np.testing.assert_array_equal(got.labels, self.labels)
      self.assertEqual(got.labels.dtype, np.int64)
      self.assertEqual(got.num_classes, 10)
      self.assertEqual(got.files, tuple(
          os.path.join(self.dir, n + ".gz") for n in _mnist_names(split)))

  def test_uncompressed_names_accepted(self):
    _write_split(self.dir, _mnist_names("train"), self.images, self.labels,
                 compress=False)
    got = image_datasets.load_split("mnist", self.dir, "train")
    np.testing.assert_array_equal(got.images, self.images)
    self.assertEqual(got.files[0],
                     os.path.join(self.dir, "train-images-idx3-ubyte"))

  def test_emnist_images_are_transposed_upright(self):
    # Published EMNIST files store each image transposed.
    _write_split(self.dir, _emnist_names("digits", "train"),
                 self.images.transpose(0, 2, 1), self.labels)
    got = image_datasets.load_split("emnist", self.dir, "train")
    np.testing.assert_array_equal(got.images, self.images)
    self.assertTrue(got.images.flags.c_contiguous)
    np.testing.assert_array_equal(got.labels, self.labels)
    self.assertEqual(got.num_classes, 10)

  def test_emnist_letters_shifted_to_zero_based(self):
    labels = np.arange(1, 27, dtype=np.uint8)
    images = np.zeros((26, 28, 28), np.uint8)
    _write_split(self.dir, _emnist_names("letters", "test"), images, labels)
    got = image_datasets.load_split("emnist", self.dir, "test")
    np.testing.assert_array_equal(got.labels, np.arange(26))
    self.assertEqual(got.num_classes, 26)

  def test_emnist_letters_zero_label_rejected(self):
    labels = np.array([1, 0, 5], np.uint8)
    _write_split(self.dir, _emnist_names("letters", "train"),
                 np.zeros((3, 28, 28), np.uint8), labels)
    with self.assertRaises(errors.DataFormatError) as cm:
      image_datasets.load_split("emnist", self.dir, "train")
    self.assertIn("emnist-letters-train-labels-idx1-ubyte.gz",
                  str(cm.exception))
    self.assertIn("label 0 at record 1", str(cm.exception))
    self.assertIn("1..26", str(cm.exception))

  def test_emnist_num_classes_per_subset(self):
    for subset, num_classes in image_datasets.EMNIST_NUM_CLASSES.items():
      with self.subTest(subset=subset):
        data_dir = self.create_tempdir().full_path
        # 1..9 is a valid label range for every subset.
        _write_split(data_dir, _emnist_names(subset, "train"),
                     self.images, self.labels % 9 + 1)
        got = image_datasets.load_split("emnist", data_dir, "train",
                                        emnist_subset=subset)
        self.assertEqual(got.num_classes, num_classes)

  def test_emnist_several_subsets_need_flag(self):
    for subset in ("balanced", "digits"):
      _write_split(self.dir, _emnist_names(subset, "train"), self.images,
                   self.labels)
    with self.assertRaises(errors.DataPrepError) as cm:
      image_datasets.load_split("emnist", self.dir, "train")
    self.assertIn("balanced, digits", str(cm.exception))
    self.assertIn("--emnist_subset", str(cm.exception))
    got = image_datasets.load_split("emnist", self.dir, "train",
                                    emnist_subset="balanced")
    self.assertEqual(got.num_classes, 47)

  def test_emnist_task_reads_mnist_named_files_as_is(self):
    _write_split(self.dir, _mnist_names("train"), self.images, self.labels)
    got = image_datasets.load_split("emnist", self.dir, "train")
    np.testing.assert_array_equal(got.images, self.images)
    self.assertEqual(got.num_classes, 10)

  def test_unknown_emnist_subset(self):
    with self.assertRaisesRegex(errors.DataPrepError, "'cursive'"):
      image_datasets.load_split("emnist", self.dir, "train",
                                emnist_subset="cursive")

  def test_missing_dir_message(self):
    missing = os.path.join(self.dir, "nowhere")
    with self.assertRaises(errors.DataPrepError) as cm:
      image_datasets.load_split("fashion_mnist", missing, "train")
    message = str(cm.exception)
    self.assertIn(missing, message)
    self.assertIn("train-images-idx3-ubyte.gz", message)
    self.assertIn("t10k-labels-idx1-ubyte.gz", message)
    self.assertIn("apt-get install dataset-fashion-mnist", message)
    self.assertIn("--data_dir", message)

  def test_missing_files_message(self):
    idx.write_idx(os.path.join(self.dir, "train-images-idx3-ubyte.gz"),
                  self.images)
    with self.assertRaises(errors.DataPrepError) as cm:
      image_datasets.load_split("mnist", self.dir, "train")
    self.assertIn(f"missing in {self.dir}: train-labels-idx1-ubyte.gz",
                  str(cm.exception))

  def test_no_default_dir_for_mnist_and_emnist(self):
    for task in ("mnist", "emnist"):
      with self.subTest(task=task):
        with self.assertRaisesRegex(errors.DataPrepError,
                                    "--data_dir"):
          image_datasets.load_split(task, None, "train")

  def test_count_mismatch_names_both_files(self):
    _write_split(self.dir, _mnist_names("train"), self.images,
                 self.labels[:-1])
    with self.assertRaises(errors.DataFormatError) as cm:
      image_datasets.load_split("mnist", self.dir, "train")
    self.assertIn("12 images", str(cm.exception))
    self.assertIn("11 labels", str(cm.exception))
    self.assertIn("train-labels-idx1-ubyte.gz", str(cm.exception))

  def test_wrong_image_shape(self):
    _write_split(self.dir, _mnist_names("train"),
                 np.zeros((12, 32, 32), np.uint8), self.labels)
    with self.assertRaisesRegex(errors.DataFormatError,
                                r"train-images-idx3-ubyte.gz holds uint8 "
                                r"array of shape \(12, 32, 32\)"):
      image_datasets.load_split("mnist", self.dir, "train")

  def test_label_out_of_range(self):
    labels = self.labels.copy()
    labels[7] = 10
    _write_split(self.dir, _mnist_names("train"), self.images, labels)
    with self.assertRaisesRegex(errors.DataFormatError,
                                "label 10 at record 7"):
      image_datasets.load_split("mnist", self.dir, "train")

  def test_bad_task_and_split(self):
    with self.assertRaises(ValueError):
      image_datasets.load_split("cifar", self.dir, "train")
    with self.assertRaises(ValueError):
      image_datasets.load_split("mnist", self.dir, "valid")


class RealFashionMnistTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    if not os.path.isdir(_FASHION_DIR):
      self.skipTest(f"{_FASHION_DIR} missing; apt-get install "
                    "dataset-fashion-mnist")

  def test_sizes_and_class_balance(self):
    for split, n in (("train", 60000), ("test", 10000)):
      with self.subTest(split=split):
        got = image_datasets.load_split("fashion_mnist", None, split)
        self.assertEqual(got.images.shape, (n, 28, 28))
        self.assertEqual(got.images.dtype, np.uint8)
        self.assertEqual(got.num_classes, 10)
        # Fashion-MNIST is exactly class balanced.
        np.testing.assert_array_equal(
            np.bincount(got.labels, minlength=10), [n // 10] * 10)

  def test_matches_independent_parse_and_is_upright(self):
    got = image_datasets.load_split("fashion_mnist", _FASHION_DIR, "test")
    with gzip.open(got.files[0], "rb") as f:
      raw = np.frombuffer(f.read()[16:], np.uint8).reshape(-1, 28, 28)
    np.testing.assert_array_equal(got.images, raw)
    # Trousers (class 1) are two vertical legs: upright images vary far
    # more across columns than across rows.
    trousers = got.images[got.labels == 1].astype(np.float64).mean(0)
    self.assertGreater(trousers.mean(0).std(), 2 * trousers.mean(1).std())


if __name__ == "__main__":
  absltest.main()
