"""Tests for data_prep.images."""

import os
import time

from absl.testing import absltest
import numpy as np

from data_prep import errors
from data_prep import image_datasets
from data_prep import images
from data_prep import partition
from data_prep import shards
from data_prep import testing

_FASHION_DIR = image_datasets.DEFAULT_DATA_DIRS["fashion_mnist"]


class ClientIdsTest(absltest.TestCase):

  def test_padding(self):
    self.assertEqual(images.client_ids(3),
                     ["client_0000", "client_0001", "client_0002"])
    ids = images.client_ids(12345)
    self.assertEqual(ids[-1], "client_12344")
    self.assertEqual(ids[7], "client_00007")
    self.assertEqual(ids, sorted(ids))


class SyntheticPrepareTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.root = self.create_tempdir().full_path
    self.data_dir = os.path.join(self.root, "raw")
    self.shard_dir = os.path.join(self.root, "shards")
    testing.write_dataset(self.data_dir, np.random.default_rng(0))

  def test_iid_round_trip(self):
    manifest = images.prepare("mnist", self.data_dir, self.shard_dir,
                              num_clients=7, partition="iid",
                              partition_alpha=0.5, seed=3)
    train = image_datasets.load_split("mnist", self.data_dir, "train")
    parts = partition.iid(300, 7, np.random.default_rng(3))
    self.assertEqual(manifest.client_ids(), images.client_ids(7))
    self.assertEqual(manifest.partition, {"method": "iid", "alpha": None,
                                          "num_clients": 7, "seed": 3})
    self.assertEqual(manifest.source["data_dir"], self.data_dir)
    self.assertEqual(manifest.source["files"][0],
                     os.path.join(self.data_dir,
                                  "train-images-idx3-ubyte.gz"))
    self.assertIsNone(manifest.source["emnist_subset"])
    for info, indices in zip(manifest.clients, parts):
      got = shards.read_numpy(manifest, info)
      np.testing.assert_array_equal(got["pixels"], train.images[indices])
      np.testing.assert_array_equal(got["label"], train.labels[indices])
    self.assertEqual(manifest.eval.num_examples, 50)
    shards.verify_shards(shards.load_manifest(self.shard_dir))

  def test_same_seed_same_shards(self):
    hashes = []
    for name in ("a", "b"):
      manifest = images.prepare("mnist", self.data_dir,
                                os.path.join(self.root, name), 5,
                                "dirichlet", 0.5, seed=11)
      hashes.append([c.sha256 for c in manifest.clients])
    self.assertEqual(hashes[0], hashes[1])
    other = images.prepare("mnist", self.data_dir,
                           os.path.join(self.root, "c"), 5, "dirichlet",
                           0.5, seed=12)
    self.assertNotEqual(hashes[0], [c.sha256 for c in other.clients])

  def test_emnist_letters(self):
    emnist_dir = os.path.join(self.root, "emnist")
    testing.write_dataset(emnist_dir, np.random.default_rng(1),
                          num_classes=26, emnist_subset="letters")
    manifest = images.prepare("emnist", emnist_dir, self.shard_dir, 3,
                              "iid", 0.5, 0)
    self.assertEqual(manifest.num_classes, 26)
    self.assertEqual(manifest.source["emnist_subset"], "letters")
    self.assertLen(manifest.clients[0].label_histogram, 26)

  def test_natural_rejected(self):
    with self.assertRaises(errors.DataPrepError) as cm:
      images.prepare("mnist", self.data_dir, self.shard_dir, 3,
                     "natural", 0.5, 0)
    self.assertEqual(
        str(cm.exception),
        "mnist idx files carry no owner ids; use --partition=iid or "
        "dirichlet")

  def test_bad_requests(self):
    cases = [
        (dict(num_clients=301), "--num_clients=301 exceeds the 300"),
        (dict(num_clients=0), "--num_clients=0 must be at least 1"),
        (dict(partition_alpha=0.0), "--partition_alpha=0.0"),
        (dict(partition="shards"), "unknown --partition=shards"),
    ]
    for overrides, message in cases:
      with self.subTest(message=message):
        args = dict(num_clients=3, partition="dirichlet",
                    partition_alpha=0.5, seed=0)
        args.update(overrides)
        with self.assertRaisesRegex(errors.DataPrepError, message):
          images.prepare("mnist", self.data_dir, self.shard_dir,
                         **args)
    self.assertFalse(os.path.exists(self.shard_dir))

  def test_find_or_prepare_reuses_matching_build(self):
    args = ("mnist", self.data_dir, self.shard_dir, 4, "dirichlet", 0.5, 1)
    first = images.find_or_prepare(*args)
    manifest_path = os.path.join(self.shard_dir, "manifest.json")
    stamp = os.stat(manifest_path).st_mtime_ns
    time.sleep(0.01)
    again = images.find_or_prepare(*args)
    self.assertEqual(again, first)
    self.assertEqual(os.stat(manifest_path).st_mtime_ns, stamp)

  def test_find_or_prepare_rebuilds_on_change(self):
    base = dict(task="mnist", data_dir=self.data_dir,
                shard_dir=self.shard_dir, num_clients=4,
                partition="dirichlet", partition_alpha=0.5, seed=1)
    images.find_or_prepare(**base)
    other_dir = os.path.join(self.root, "raw2")
    testing.write_dataset(other_dir, np.random.default_rng(5))
    changes = [dict(seed=2), dict(num_clients=5), dict(partition="iid"),
               dict(partition_alpha=0.1), dict(data_dir=other_dir)]
    for change in changes:
      with self.subTest(change=change):
        before = shards.load_manifest(self.shard_dir)
        got = images.find_or_prepare(**{**base, **change})
        self.assertNotEqual(got, before)
        self.assertEqual(got, shards.load_manifest(self.shard_dir))

  def test_find_or_prepare_rebuilds_broken_manifest(self):
    args = ("mnist", self.data_dir, self.shard_dir, 4, "iid", 0.5, 1)
    first = images.find_or_prepare(*args)
    with open(os.path.join(self.shard_dir, "manifest.json"), "w") as f:
      f.write("{")
    self.assertEqual(images.find_or_prepare(*args), first)


class RealFashionMnistTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    if not os.path.isdir(_FASHION_DIR):
      self.skipTest(f"{_FASHION_DIR} missing; apt-get install "
                    "dataset-fashion-mnist")

  def test_prepare_100_clients_dirichlet(self):
    shard_dir = os.path.join(self.create_tempdir().full_path, "fmnist")
    start = time.monotonic()
    manifest = images.prepare("fashion_mnist", None, shard_dir,
                              num_clients=100, partition="dirichlet",
                              partition_alpha=0.5, seed=0)
    elapsed = time.monotonic() - start
    self.assertLess(elapsed, 20)
    self.assertEqual(manifest, shards.load_manifest(shard_dir))
    self.assertLen(manifest.clients, 100)
    sizes = [c.num_examples for c in manifest.clients]
    self.assertEqual(sum(sizes), 60000)
    self.assertGreaterEqual(min(sizes), images.DIRICHLET_MIN_EXAMPLES)
    histograms = np.array([c.label_histogram for c in manifest.clients])
    self.assertEqual(histograms.sum(axis=1).tolist(), sizes)
    np.testing.assert_array_equal(histograms.sum(axis=0), [6000] * 10)
    self.assertEqual(manifest.eval.label_histogram, [1000] * 10)
    # alpha=0.5 is label-skewed: most clients lack some classes.
    self.assertGreater((histograms == 0).any(axis=1).mean(), 0.5)
    shards.verify_shards(manifest)
    # The partition is reproducible from the recorded seed, and shards
    # hold exactly the train examples it assigns.
    train = image_datasets.load_split("fashion_mnist", None, "train")
    parts = partition.dirichlet(train.labels, 100, 0.5,
                                np.random.default_rng(0))
    self.assertEqual(sizes, [len(p) for p in parts])
    for i in (0, 17, 99):
      got = shards.read_numpy(manifest, manifest.clients[i])
      np.testing.assert_array_equal(got["pixels"],
                                    train.images[parts[i]])
      np.testing.assert_array_equal(got["label"], train.labels[parts[i]])


if __name__ == "__main__":
  absltest.main()
