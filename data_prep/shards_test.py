"""Tests for data_prep.shards."""

import json
import os
import threading
from unittest import mock

from absl.testing import absltest
import numpy as np
import tensorflow as tf

from data_prep import errors
from data_prep import shards

_SPEC = {
    "pixels": {"kind": "bytes", "dtype": "uint8", "shape": [4, 3]},
    "label": {"kind": "int64", "shape": []},
}
_MIXED_SPEC = {
    "audio": {"kind": "bytes", "dtype": "int16", "shape": [2, 5]},
    "tokens": {"kind": "int64", "shape": [3]},
    "weights": {"kind": "float", "shape": [2]},
    "text": {"kind": "string", "shape": []},
    "label": {"kind": "int64", "shape": []},
}
_PARTITION = {"method": "iid", "alpha": None, "num_clients": 3, "seed": 0}
_SOURCE = {"data_dir": "/nowhere", "files": [], "emnist_subset": None}


def _columns(rng, n, num_classes=5):
  return {
      "pixels": rng.integers(0, 256, (n, 4, 3), dtype=np.uint8),
      "label": rng.integers(0, num_classes, n),
  }


def _mixed_columns(rng, n):
  return {
      "audio": rng.integers(-30000, 30000, (n, 2, 5)).astype(np.int16),
      "tokens": rng.integers(-2**40, 2**40, (n, 3)),
      "weights": rng.normal(size=(n, 2)).astype(np.float32),
      "text": np.array([f"ex {i} \u00e9".encode() for i in range(n)],
                       dtype=object),
      "label": rng.integers(0, 3, n),
  }


class ShardsTestBase(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.root = self.create_tempdir().full_path
    self.shard_dir = os.path.join(self.root, "shards")
    self.rng = np.random.default_rng(0)
    self.clients = {f"client_{i:04d}": _columns(self.rng, n)
                    for i, n in enumerate((7, 1, 12))}
    self.eval = _columns(self.rng, 9)

  def _write(self, shard_dir=None, clients=None, eval_examples="default"):
    return shards.write_shards(
        shard_dir or self.shard_dir, "fashion_mnist", _SPEC,
        (clients or self.clients).items(),
        self.eval if eval_examples == "default" else eval_examples,
        num_classes=5, partition=_PARTITION, source=_SOURCE)


class WriteLoadTest(ShardsTestBase):

  def test_round_trip(self):
    written = self._write()
    loaded = shards.load_manifest(self.shard_dir)
    self.assertEqual(loaded, written)
    self.assertEqual(loaded.shard_dir, self.shard_dir)
    self.assertEqual(os.stat(self.shard_dir).st_mode & 0o777, 0o755)
    self.assertEqual(loaded.client_ids(), list(self.clients))
    self.assertEqual(loaded.features, _SPEC)
    self.assertEqual(loaded.partition, _PARTITION)
    self.assertEqual(loaded.source, _SOURCE)
    self.assertEqual(loaded.format_version, shards.FORMAT_VERSION)
    shards.verify_shards(loaded)
    for client_id, columns in self.clients.items():
      info = loaded.client(client_id)
      self.assertEqual(info.file, f"clients/{client_id}.tfrecord")
      self.assertEqual(info.num_examples, len(columns["label"]))
      self.assertEqual(info.label_histogram,
                       np.bincount(columns["label"], minlength=5).tolist())
      self.assertEqual(info.num_bytes,
                       os.path.getsize(loaded.path(info)))
      got = shards.read_numpy(loaded, info)
      np.testing.assert_array_equal(got["pixels"], columns["pixels"])
      np.testing.assert_array_equal(got["label"], columns["label"])
    got = shards.read_numpy(loaded, loaded.eval)
    self.assertEqual(loaded.path(loaded.eval),
                     os.path.join(self.shard_dir, "eval.tfrecord"))
    np.testing.assert_array_equal(got["pixels"], self.eval["pixels"])

  def test_all_kinds_round_trip(self):
    columns = _mixed_columns(self.rng, 6)
    manifest = shards.write_shards(
        self.shard_dir, "text", _MIXED_SPEC, [("a", columns)], None,
        num_classes=None, partition=_PARTITION, source=_SOURCE)
    self.assertIsNone(manifest.eval)
    self.assertIsNone(manifest.client("a").label_histogram)
    got = shards.read_numpy(shards.load_manifest(self.shard_dir),
                            manifest.client("a"))
    for name, values in columns.items():
      with self.subTest(name=name):
        np.testing.assert_array_equal(got[name], values)
    self.assertEqual(got["audio"].dtype, np.int16)
    self.assertEqual(got["weights"].dtype, np.float32)

  def test_empty_client(self):
    empty = {"pixels": np.zeros((0, 4, 3), np.uint8),
             "label": np.zeros((0,), np.int64)}
    manifest = self._write(clients={"empty": empty})
    got = shards.read_numpy(manifest, manifest.client("empty"))
    self.assertEqual(got["pixels"].shape, (0, 4, 3))
    self.assertEqual(manifest.client("empty").label_histogram, [0] * 5)

  def test_manifest_is_json_with_one_line_per_client(self):
    self._write()
    with open(os.path.join(self.shard_dir, "manifest.json")) as f:
      text = f.read()
    raw = json.loads(text)
    self.assertLen(raw["clients"], 3)
    client_lines = [line for line in text.splitlines()
                    if '"client_id": "client_' in line]
    self.assertLen(client_lines, 3)

  def test_unknown_client_names_id_and_dir(self):
    manifest = self._write()
    with self.assertRaises(errors.ShardError) as cm:
      manifest.client("client_9999")
    self.assertIn("client_9999", str(cm.exception))
    self.assertIn(self.shard_dir, str(cm.exception))

  def test_unsafe_client_ids_rejected(self):
    for bad in ("../evil", "a/b", "", "sp ace", 7):
      with self.subTest(client_id=bad):
        with self.assertRaisesRegex(errors.DataPrepError,
                                    "not a safe file name"):
          self._write(clients={bad: _columns(self.rng, 2)})
    self.assertFalse(os.path.exists(self.shard_dir))
    self.assertEqual(os.listdir(self.root), [])

  def test_duplicate_client_ids_rejected(self):
    pairs = [("a", _columns(self.rng, 2)), ("a", _columns(self.rng, 2))]
    with self.assertRaisesRegex(errors.DataPrepError, "appears twice"):
      shards.write_shards(self.shard_dir, "t", _SPEC, pairs, None, 5,
                          _PARTITION, _SOURCE)

  def test_label_out_of_range(self):
    columns = _columns(self.rng, 4)
    columns["label"][2] = 5
    with self.assertRaisesRegex(errors.DataPrepError,
                                "label 5 at example 2 is outside 0..4"):
      self._write(clients={"a": columns})

  def test_columns_must_match_spec(self):
    columns = _columns(self.rng, 4)
    with self.assertRaisesRegex(ValueError, r"shape \(4, 12\)"):
      self._write(clients={"a": {**columns,
                                 "pixels": np.zeros((4, 12), np.uint8)}})
    with self.assertRaisesRegex(ValueError, "do not match"):
      self._write(clients={"a": {"pixels": columns["pixels"]}})
    with self.assertRaisesRegex(ValueError, "different lengths"):
      self._write(clients={"a": {**columns, "label": np.zeros(3, int)}})
    with self.assertRaisesRegex(ValueError, "do not fit dtype uint8"):
      self._write(clients={"a": {**columns, "pixels": np.full(
          (4, 4, 3), 300)}})

  def test_spec_validation(self):
    bad_specs = [
        {},
        {"x": {"kind": "tensor", "shape": []}},
        {"x": {"kind": "bytes", "dtype": "uint32", "shape": [2]}},
        {"x": {"kind": "int64"}},
        {"x": {"kind": "string", "shape": [2]}},
        {"x": {"kind": "float", "shape": [2], "dtype": "float64"}},
    ]
    for spec in bad_specs:
      with self.subTest(spec=spec):
        with self.assertRaises(ValueError):
          shards.check_features_spec(spec)


class AtomicWriteTest(ShardsTestBase):

  def test_failed_rewrite_keeps_old_shards(self):
    old = self._write()

    def exploding_clients():
      yield "client_0000", _columns(self.rng, 3)
      raise RuntimeError("disk on fire")

    with self.assertRaisesRegex(RuntimeError, "disk on fire"):
      shards.write_shards(self.shard_dir, "fashion_mnist", _SPEC,
                          exploding_clients(), None, 5, _PARTITION,
                          _SOURCE)
    self.assertEqual(shards.load_manifest(self.shard_dir), old)
    shards.verify_shards(old)
    self.assertEqual(os.listdir(self.root), ["shards"])

  def test_rewrite_replaces_completely(self):
    self._write()
    new = self._write(clients={"only": _columns(self.rng, 2)},
                      eval_examples=None)
    loaded = shards.load_manifest(self.shard_dir)
    self.assertEqual(loaded, new)
    self.assertEqual(loaded.client_ids(), ["only"])
    self.assertEqual(os.listdir(os.path.join(self.shard_dir, "clients")),
                     ["only.tfrecord"])
    self.assertFalse(os.path.exists(
        os.path.join(self.shard_dir, "eval.tfrecord")))
    self.assertEqual(os.listdir(self.root), ["shards"])

  def test_no_manifest_until_complete(self):
    seen = []

    def watching_clients():
      for item in self.clients.items():
        seen.append(os.path.exists(self.shard_dir))
        yield item

    shards.write_shards(self.shard_dir, "t", _SPEC, watching_clients(),
                        None, 5, _PARTITION, _SOURCE)
    self.assertEqual(seen, [False] * 3)
    self.assertTrue(os.path.exists(
        os.path.join(self.shard_dir, "manifest.json")))

  def test_refuses_to_replace_foreign_directory(self):
    os.makedirs(self.shard_dir)
    precious = os.path.join(self.shard_dir, "thesis.tex")
    open(precious, "w").close()
    with self.assertRaisesRegex(errors.DataPrepError,
                                "refusing to replace"):
      self._write()
    self.assertTrue(os.path.exists(precious))

  def test_empty_directory_is_replaced(self):
    os.makedirs(self.shard_dir)
    self._write()
    shards.verify_shards(shards.load_manifest(self.shard_dir))


  def test_writer_that_finishes_first_is_replaced_not_fatal(self):
    # Another writer (e.g. a second run sharing the cache) puts the shard
    # folder in place after our existence check and before our rename,
    # which then fails with ENOTEMPTY. That writer finishes inside the
    # last check, once ours is staged whole.
    real_lexists = os.path.lexists
    raced = []

    def lexists_then_race(path):
      found = real_lexists(path)
      staged = [n for n in os.listdir(self.root)
                if n.startswith(".shards.tmp-") and
                os.path.isfile(os.path.join(self.root, n, "manifest.json"))]
      if path == self.shard_dir and staged and not raced:
        raced.append(True)  # Before: the other writer checks too.
        self._write()
      return found

    with mock.patch.object(shards.os.path, "lexists", lexists_then_race):
      manifest = shards.write_shards(
          self.shard_dir, "fashion_mnist", _SPEC,
          {"only": _columns(self.rng, 2)}.items(), None, 5, _PARTITION,
          _SOURCE)
    self.assertEqual(raced, [True])
    self.assertEqual(shards.load_manifest(self.shard_dir), manifest)
    self.assertEqual(manifest.client_ids(), ["only"])
    shards.verify_shards(manifest)
    self.assertEqual(os.listdir(self.root), ["shards"])

  def test_exclusive_makes_a_second_preparer_wait(self):
    order = []
    first_in = threading.Event()

    def second():
      first_in.wait(timeout=30)
      with shards.exclusive(self.shard_dir):
        order.append("second")

    thread = threading.Thread(target=second, daemon=True)
    thread.start()
    with shards.exclusive(self.shard_dir):
      first_in.set()
      thread.join(timeout=0.5)  # It must still be waiting on the lock.
      order.append("first")
    thread.join(timeout=30)
    self.assertEqual(order, ["first", "second"])


class VerifyTest(ShardsTestBase):

  def test_flipped_byte_names_file(self):
    manifest = self._write()
    info = manifest.client("client_0002")
    path = manifest.path(info)
    with open(path, "r+b") as f:
      f.seek(40)
      byte = f.read(1)
      f.seek(40)
      f.write(bytes([byte[0] ^ 0x01]))
    shards.verify_shards(manifest, ["client_0000", "client_0001"])
    with self.assertRaises(errors.ShardError) as cm:
      shards.verify_shards(manifest)
    message = str(cm.exception)
    self.assertIn(path, message)
    self.assertIn("sha256 mismatch", message)
    self.assertIn("python -m data_prep.fashion_mnist", message)
    self.assertIn(f"--output_dir={self.shard_dir}", message)

  def test_truncated_names_file(self):
    manifest = self._write()
    path = manifest.path(manifest.eval)
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) - 5)
    with self.assertRaises(errors.ShardError) as cm:
      shards.verify_shards(manifest)
    self.assertIn(path, str(cm.exception))
    self.assertIn("truncated", str(cm.exception))
    with self.assertRaisesRegex(errors.ShardError, "corrupt"):
      shards.read_numpy(manifest, manifest.eval)

  def test_missing_shard(self):
    manifest = self._write()
    path = manifest.path(manifest.client("client_0001"))
    os.remove(path)
    with self.assertRaisesRegex(errors.ShardError, "missing"):
      shards.verify_shards(manifest, ["client_0001"])
    with self.assertRaisesRegex(errors.ShardError, "missing"):
      shards.read_numpy(manifest, manifest.client("client_0001"))

  def test_verify_unknown_client(self):
    manifest = self._write()
    with self.assertRaisesRegex(errors.ShardError, "'nobody'"):
      shards.verify_shards(manifest, ["nobody"])


class LoadManifestErrorsTest(ShardsTestBase):

  def _edit_manifest(self, edit):
    self._write()
    path = os.path.join(self.shard_dir, "manifest.json")
    with open(path) as f:
      raw = json.load(f)
    edit(raw)
    with open(path, "w") as f:
      json.dump(raw, f)
    return path

  def assert_shard_error(self, *fragments):
    with self.assertRaises(errors.ShardError) as cm:
      shards.load_manifest(self.shard_dir)
    for fragment in fragments:
      self.assertIn(fragment, str(cm.exception))
    self.assertNotIn("\n", str(cm.exception))

  def test_missing_dir(self):
    self.assert_shard_error(self.shard_dir, "does not exist",
                            "--output_dir")

  def test_missing_file(self):
    os.makedirs(self.shard_dir)
    self.assert_shard_error("manifest.json is missing", "rebuild")

  def test_bad_json(self):
    self._write()
    with open(os.path.join(self.shard_dir, "manifest.json"), "w") as f:
      f.write('{"task": ')
    self.assert_shard_error("manifest.json is not valid JSON", "rebuild")

  def test_wrong_format_version(self):
    path = self._edit_manifest(lambda raw: raw.update(format_version=99))
    self.assert_shard_error(path, "format_version is 99",
                            "data_prep.fashion_mnist")

  def test_missing_key(self):
    self._edit_manifest(lambda raw: raw.pop("features"))
    self.assert_shard_error("missing keys ['features']")

  def test_missing_client_key(self):
    self._edit_manifest(lambda raw: raw["clients"][1].pop("sha256"))
    self.assert_shard_error("clients[1] lacks 'sha256'")

  def test_path_escape(self):
    self._edit_manifest(
        lambda raw: raw["clients"][0].update(file="../../x.tfrecord"))
    self.assert_shard_error("not a relative .tfrecord path")


class TfReadTest(ShardsTestBase):

  def test_parse_batch_in_tf_function(self):
    manifest = self._write()
    columns = self.clients["client_0002"]

    @tf.function
    def read_client(client_id):
      path = shards.shard_path(manifest.shard_dir, client_id)
      dataset = tf.data.TFRecordDataset(path).batch(5).map(
          lambda s: shards.parse_batch(s, manifest.features))
      return dataset.reduce(
          (tf.zeros([0, 4, 3], tf.uint8), tf.zeros([0], tf.int64)),
          lambda acc, b: (tf.concat([acc[0], b["pixels"]], 0),
                          tf.concat([acc[1], b["label"]], 0)))

    pixels, labels = read_client(tf.constant("client_0002"))
    self.assertEqual(pixels.dtype, tf.uint8)
    np.testing.assert_array_equal(pixels.numpy(), columns["pixels"])
    np.testing.assert_array_equal(labels.numpy(), columns["label"])

  def test_parse_batch_static_shapes(self):
    manifest = self._write()
    spec = tf.TensorSpec([None], tf.string)
    graph = tf.function(
        lambda s: shards.parse_batch(s, manifest.features)
    ).get_concrete_function(spec)
    self.assertEqual(graph.structured_outputs["pixels"].shape.as_list(),
                     [None, 4, 3])
    self.assertEqual(graph.structured_outputs["label"].shape.as_list(),
                     [None])

  def test_parse_batch_all_kinds(self):
    columns = _mixed_columns(self.rng, 4)
    manifest = shards.write_shards(
        self.shard_dir, "text", _MIXED_SPEC, [("a", columns)], None,
        None, _PARTITION, _SOURCE)
    serialized = tf.constant(list(tf.data.TFRecordDataset(
        manifest.path(manifest.client("a"))).as_numpy_iterator()))
    got = tf.function(shards.parse_batch)(serialized, manifest.features)
    for name, values in columns.items():
      with self.subTest(name=name):
        np.testing.assert_array_equal(got[name].numpy(), values)

  def test_shard_path(self):
    got = shards.shard_path("/data/shards", tf.constant(["a", "b_1"]))
    self.assertEqual(got.numpy().tolist(),
                     [b"/data/shards/clients/a.tfrecord",
                      b"/data/shards/clients/b_1.tfrecord"])

  def test_parse_batch_in_tff_computation(self):
    import tensorflow_federated as tff  # Slow import; only needed here.

    manifest = self._write()

    @tff.tensorflow.computation(tf.string)
    def label_sum(client_id):
      path = shards.shard_path(manifest.shard_dir, client_id)
      dataset = tf.data.TFRecordDataset(path).batch(4).map(
          lambda s: shards.parse_batch(s, manifest.features))
      return dataset.reduce(
          tf.constant(0, tf.int64),
          lambda acc, b: acc + tf.reduce_sum(
              b["label"]) + tf.reduce_sum(tf.cast(b["pixels"],
                                                  tf.int64)))

    columns = self.clients["client_0000"]
    expected = (columns["label"].sum() +
                columns["pixels"].astype(np.int64).sum())
    self.assertEqual(label_sum("client_0000"), expected)


if __name__ == "__main__":
  absltest.main()
