"""Tests for data_prep.idx."""

import gzip
import os
import struct

from absl.testing import absltest
import numpy as np

from data_prep import errors
from data_prep import idx

_FASHION_DIR = "/usr/share/datasets/fashion-mnist"


class IdxTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path
    self.rng = np.random.default_rng(0)

  def _path(self, name):
    return os.path.join(self.dir, name)

  def test_round_trip_all_dtypes_gz_and_raw(self):
    for dtype in (np.uint8, np.int8, np.int16, np.int32, np.float32,
                  np.float64):
      for compress in (True, False):
        with self.subTest(dtype=dtype, compress=compress):
          array = (self.rng.normal(size=(3, 5, 7)) * 100).astype(dtype)
          path = self._path(f"a_{np.dtype(dtype).name}_{compress}")
          idx.write_idx(path, array, compress=compress)
          got = idx.read_idx(path)
          self.assertEqual(got.dtype, np.dtype(dtype))
          self.assertTrue(got.dtype.isnative)
          np.testing.assert_array_equal(got, array)

  def test_compression_detected_by_magic_not_suffix(self):
    array = self.rng.integers(0, 256, size=(4, 2), dtype=np.uint8)
    gz_named_raw = self._path("raw.gz")
    raw_named_gz = self._path("compressed.idx")
    idx.write_idx(gz_named_raw, array, compress=False)
    idx.write_idx(raw_named_gz, array, compress=True)
    with open(raw_named_gz, "rb") as f:
      self.assertEqual(f.read(2), b"\x1f\x8b")
    np.testing.assert_array_equal(idx.read_idx(gz_named_raw), array)
    np.testing.assert_array_equal(idx.read_idx(raw_named_gz), array)

  def test_header_layout_is_big_endian(self):
    path = self._path("be")
    idx.write_idx(path, np.array([[1, 2, 3]], np.int16), compress=False)
    with open(path, "rb") as f:
      data = f.read()
    self.assertEqual(data[:4], bytes([0, 0, 0x0B, 2]))
    self.assertEqual(struct.unpack(">2I", data[4:12]), (1, 3))
    self.assertEqual(struct.unpack(">3h", data[12:]), (1, 2, 3))

  def test_truncated_raw_payload_names_file_and_counts(self):
    path = self._path("trunc")
    idx.write_idx(path, np.zeros((10, 4), np.uint8), compress=False)
    with open(path, "r+b") as f:
      f.truncate(12 + 33)
    with self.assertRaises(errors.DataFormatError) as cm:
      idx.read_idx(path)
    message = str(cm.exception)
    self.assertIn(path, message)
    self.assertIn("truncated", message)
    self.assertIn("40 payload bytes", message)
    self.assertIn("holds 33", message)
    self.assertNotIn("\n", message)

  def test_truncated_gz_payload_names_file_and_counts(self):
    # A well-formed gzip stream whose content is short.
    path = self._path("trunc.gz")
    header = bytes([0, 0, 0x08, 1]) + struct.pack(">I", 100)
    with gzip.open(path, "wb") as f:
      f.write(header + bytes(90))
    with self.assertRaises(errors.DataFormatError) as cm:
      idx.read_idx(path)
    self.assertIn(path, str(cm.exception))
    self.assertIn("100 payload bytes", str(cm.exception))
    self.assertIn("holds 90", str(cm.exception))

  def test_oversize_payload(self):
    for compress in (True, False):
      with self.subTest(compress=compress):
        path = self._path(f"over_{compress}")
        header = bytes([0, 0, 0x08, 1]) + struct.pack(">I", 5)
        opener = gzip.open if compress else open
        with opener(path, "wb") as f:
          f.write(header + bytes(8))
        with self.assertRaises(errors.DataFormatError) as cm:
          idx.read_idx(path)
        self.assertIn("oversize", str(cm.exception))
        self.assertIn("5 payload bytes", str(cm.exception))
        self.assertIn("holds 8", str(cm.exception))

  def test_truncated_header(self):
    path = self._path("short_header")
    with open(path, "wb") as f:
      f.write(bytes([0, 0, 0x08, 3]) + struct.pack(">I", 7))
    with self.assertRaisesRegex(errors.DataFormatError,
                                "truncated in its header"):
      idx.read_idx(path)

  def test_bad_magic(self):
    path = self._path("bad_magic")
    with open(path, "wb") as f:
      f.write(b"\x01\x02\x08\x01" + struct.pack(">I", 1) + b"\x00")
    with self.assertRaises(errors.DataFormatError) as cm:
      idx.read_idx(path)
    self.assertIn(path, str(cm.exception))
    self.assertIn("bad magic 01020801", str(cm.exception))

  def test_unknown_type_code(self):
    path = self._path("bad_type")
    with open(path, "wb") as f:
      f.write(b"\x00\x00\x0a\x01" + struct.pack(">I", 1) + b"\x00")
    with self.assertRaisesRegex(errors.DataFormatError,
                                "unknown type code 0x0a"):
      idx.read_idx(path)

  def test_empty_file(self):
    path = self._path("empty")
    open(path, "wb").close()
    with self.assertRaisesRegex(errors.DataFormatError, "bad magic"):
      idx.read_idx(path)

  def test_corrupt_gzip_stream(self):
    path = self._path("corrupt.gz")
    idx.write_idx(path, self.rng.integers(0, 256, (50, 50), np.uint8))
    with open(path, "rb") as f:
      data = bytearray(f.read())
    data[len(data) // 2] ^= 0xFF
    with open(path, "wb") as f:
      f.write(data)
    with self.assertRaises(errors.DataFormatError) as cm:
      idx.read_idx(path)
    self.assertIn(path, str(cm.exception))
    self.assertIn("gzip", str(cm.exception))

  def test_truncated_gzip_file(self):
    path = self._path("cut.gz")
    idx.write_idx(path, self.rng.integers(0, 256, (50, 50), np.uint8))
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
      f.truncate(size - 20)
    with self.assertRaisesRegex(errors.DataFormatError, "gzip"):
      idx.read_idx(path)

  def test_missing_file(self):
    path = self._path("nope")
    with self.assertRaises(errors.DataPrepError) as cm:
      idx.read_idx(path)
    self.assertIn(path, str(cm.exception))

  def test_write_rejects_unsupported_dtype(self):
    with self.assertRaisesRegex(ValueError, "uint16"):
      idx.write_idx(self._path("x"), np.zeros(3, np.uint16))

  def test_real_fashion_mnist_labels_match_independent_parse(self):
    path = os.path.join(_FASHION_DIR, "t10k-labels-idx1-ubyte.gz")
    if not os.path.exists(path):
      self.skipTest(f"{path} not installed (apt-get install "
                    "dataset-fashion-mnist)")
    with gzip.open(path, "rb") as f:
      raw = f.read()
    labels = idx.read_idx(path)
    self.assertEqual(labels.shape, (struct.unpack(">I", raw[4:8])[0],))
    np.testing.assert_array_equal(labels, np.frombuffer(raw[8:], np.uint8))


if __name__ == "__main__":
  absltest.main()
