"""Tests for data_prep.movielens."""

import collections
import contextlib
import io
import os
import shutil
import time

from absl import flags
from absl import logging
from absl.testing import absltest
import numpy as np

from data_prep import cli
from data_prep import errors
from data_prep import movielens
from data_prep import shards
from data_prep import testing
from tests import testutil


_ML100K_DIR = os.path.join(testutil.shared_data_dir(), "movielens-100k")


def _write(path, rows, sep="\t", tail="\n"):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="latin-1", newline="") as f:
    f.write("\n".join(sep.join(str(v) for v in row) for row in rows) + tail)
  return path


def _random_ratings(rng, num_users=30, num_items=50, per_user=(1, 25)):
  rows = []
  for user in range(1, num_users + 1):
    n = int(rng.integers(*per_user))
    items = rng.choice(np.arange(1, num_items + 1), n, replace=False)
    for item in items:
      rows.append((user, int(item), int(rng.integers(1, 6)),
                   int(rng.integers(8e8, 9e8))))
  order = rng.permutation(len(rows))
  return [rows[i] for i in order]


def _run_main(*args):
  """Runs make_main with fresh flags; returns (exit code, out, err)."""
  flag_values = flags.FlagValues()
  movielens.define_flags(flag_values)
  flag_values(["prog", *args])
  stdout, stderr = io.StringIO(), io.StringIO()
  code = 0
  with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
    try:
      movielens.make_main(flag_values)(["prog"])
    except SystemExit as e:
      code = e.code
  return code, stdout.getvalue(), stderr.getvalue()


def _all_rows(manifest, infos):
  """{feature: concatenated column} over shards `infos`."""
  parts = [shards.read_numpy(manifest, info) for info in infos]
  return {name: np.concatenate([p[name] for p in parts])
          for name in movielens.FEATURES_SPEC}


class ReadRatingsTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.root = self.create_tempdir().full_path

  def _error(self, content, sep="\t"):
    path = os.path.join(self.root, "u.data")
    with open(path, "w", encoding="latin-1", newline="") as f:
      f.write(content)
    with self.assertRaises(errors.DataFormatError) as ctx:
      movielens.read_ratings(path, sep)
    message = str(ctx.exception)
    self.assertNotIn("\n", message)
    self.assertIn(path, message)
    return message

  def test_reads_columns(self):
    path = _write(os.path.join(self.root, "r.dat"),
                  [(3, 10, 5, 100), (1, 7, 1, 50)], sep="::")
    got = movielens.read_ratings(path, "::")
    np.testing.assert_array_equal(got.users, [3, 1])
    np.testing.assert_array_equal(got.items, [10, 7])
    np.testing.assert_array_equal(got.ratings, [5, 1])
    np.testing.assert_array_equal(got.timestamps, [100, 50])
    self.assertLen(got, 2)

  def test_crlf_accepted(self):
    path = os.path.join(self.root, "crlf")
    with open(path, "w", newline="") as f:
      f.write("1\t2\t3\t4\r\n5\t6\t4\t8\r\n")
    self.assertLen(movielens.read_ratings(path, "\t"), 2)

  def test_wrong_field_count(self):
    message = self._error("1\t2\t3\t4\n1\t2\t3\n")
    self.assertIn("line 2: expected 4", message)
    self.assertIn("got 3", message)

  def test_wrong_separator_names_line_1(self):
    self.assertIn("line 1: expected 4", self._error("1::2::3::4\n"))

  def test_non_integer(self):
    message = self._error("1\t2\t3\t4\n1\t2\t3\t4\n1\t2\t3.5\t4\n")
    self.assertIn("line 3: fields must be integers", message)

  def test_rating_out_of_range(self):
    for rating in (0, 6):
      message = self._error(f"1\t2\t3\t4\n1\t2\t{rating}\t4\n")
      self.assertIn(f"line 2: rating {rating} is outside 1..5", message)

  def test_negative_id(self):
    self.assertIn("line 1: user and item ids must be non-negative",
                  self._error("-1\t2\t3\t4\n"))

  def test_truncated_last_line(self):
    # Cut inside the last record: the partial line still names its number.
    self.assertIn("line 3: the last line '1\\t2\\t3\\t4' has no newline",
                  self._error("1\t2\t3\t4\n1\t2\t3\t4\n1\t2\t3\t4"))
    self.assertIn("line 2: the last line", self._error("1\t2\t3\t4\n1\t2"))

  def test_empty_line(self):
    self.assertIn("line 2: expected 4", self._error("1\t2\t3\t4\n\n"))

  def test_empty_file(self):
    self.assertIn("is empty", self._error(""))

  def test_missing_file(self):
    with self.assertRaisesRegex(errors.DataPrepError, "cannot read"):
      movielens.read_ratings(os.path.join(self.root, "nope"), "\t")


class PerUserSplitTest(absltest.TestCase):

  def _ratings(self, rows):
    users, items, ratings, times = (np.array(c, dtype=np.int64)
                                    for c in zip(*rows))
    return movielens.Ratings(users, items, ratings, times, path="x")

  def test_properties(self):
    rows = _random_ratings(np.random.default_rng(1), num_users=60)
    ratings = self._ratings(rows)
    for fraction in (0.0, 0.2, 0.5, 0.9):
      train, evaluation = movielens.per_user_split(ratings, fraction)
      self.assertEqual(len(train) + len(evaluation), len(rows))
      for user in np.unique(ratings.users):
        n = int(np.sum(ratings.users == user))
        t = train.timestamps[train.users == user]
        e = evaluation.timestamps[evaluation.users == user]
        # At least one train rating; the latest round(f * n) to eval.
        self.assertLen(e, min(n - 1, int(np.floor(fraction * n + 0.5))))
        self.assertLen(t, n - len(e))
        if len(e):
          self.assertLessEqual(t.max(), e.min())

  def test_small_users(self):
    rows = [(1, 5, 3, 10),  # One rating: stays in train.
            (2, 5, 3, 10), (2, 6, 3, 20),  # 2 * 0.2 rounds to 0.
            (3, 1, 3, 10), (3, 2, 3, 20), (3, 3, 3, 30)]  # 3 * 0.2 -> 1.
    train, evaluation = movielens.per_user_split(self._ratings(rows), 0.2)
    np.testing.assert_array_equal(train.users, [1, 2, 2, 3, 3])
    np.testing.assert_array_equal(evaluation.users, [3])
    np.testing.assert_array_equal(evaluation.items, [3])
    _, evaluation = movielens.per_user_split(self._ratings(rows), 0.5)
    np.testing.assert_array_equal(evaluation.users, [2, 3, 3])
    np.testing.assert_array_equal(evaluation.items, [6, 2, 3])

  def test_timestamp_ties_broken_by_item_not_line_order(self):
    rows = [(1, 9, 3, 10), (1, 4, 3, 10), (1, 7, 3, 10), (1, 1, 3, 5)]
    for perm in ([0, 1, 2, 3], [3, 2, 1, 0]):
      _, evaluation = movielens.per_user_split(
          self._ratings([rows[i] for i in perm]), 0.5)
      np.testing.assert_array_equal(evaluation.items, [7, 9])


class SyntheticPrepareTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.root = self.create_tempdir().full_path
    self.rows = _random_ratings(np.random.default_rng(0))
    self.ml1m = os.path.join(self.root, "ml-1m")
    _write(os.path.join(self.ml1m, "ratings.dat"), self.rows, sep="::")

  def test_1m_format_per_user(self):
    self.assertEqual(movielens.detect_dataset(self.ml1m), movielens.ML_1M)
    manifest = movielens.prepare(self.ml1m, os.path.join(self.root, "s"))
    self.assertEqual(manifest.partition,
                     {"method": "natural", "unit": "user",
                      "split": "per_user", "eval_fraction": 0.2})
    self.assertIsNone(manifest.num_classes)
    source = manifest.source
    self.assertEqual(source["dataset"], "ml-1m")
    users = sorted({r[0] for r in self.rows})
    items = sorted({r[1] for r in self.rows})
    self.assertEqual(source["user_ids"], users)
    self.assertEqual(source["item_ids"], items)
    self.assertEqual(source["num_users"], len(users))
    self.assertEqual(source["num_items"], len(items))
    self.assertEqual(source["dropped_eval_ratings"], 0)
    self.assertEqual(manifest.client_ids(),
                     [f"user_{u:04d}" for u in users])
    index = movielens.item_index(manifest)
    # Every rating is in exactly one shard, with dense indices.
    got = collections.Counter()
    for i, info in enumerate(manifest.clients):
      columns = shards.read_numpy(manifest, info)
      self.assertTrue(np.all(columns["user"] == i))
      got.update(zip(columns["user"].tolist(), columns["item"].tolist(),
                     columns["rating"].tolist()))
    columns = shards.read_numpy(manifest, manifest.eval)
    self.assertTrue(np.all(np.diff(columns["user"]) >= 0))
    got.update(zip(columns["user"].tolist(), columns["item"].tolist(),
                   columns["rating"].tolist()))
    want = collections.Counter((users.index(u), index[i], float(r))
                               for u, i, r, _ in self.rows)
    self.assertEqual(got, want)
    self.assertEqual(sum(c.num_examples for c in manifest.clients) +
                     manifest.eval.num_examples, len(self.rows))
    shards.verify_shards(shards.load_manifest(manifest.shard_dir))

  def test_held_out_holds_each_users_eval_ratings(self):
    manifest = movielens.prepare(self.ml1m, os.path.join(self.root, "s"))
    held_out = shards.load_held_out(manifest)
    self.assertEqual(held_out.shard_dir,
                     os.path.join(manifest.shard_dir, shards.HELD_OUT_DIR))
    shards.verify_shards(held_out)
    eval_rows = shards.read_numpy(manifest, manifest.eval)
    names = movielens.user_client_ids(np.array(manifest.source["user_ids"]))
    want = collections.defaultdict(list)
    for user, item, rating in zip(eval_rows["user"], eval_rows["item"],
                                  eval_rows["rating"]):
      want[names[user]].append((user, item, rating))
    self.assertEqual(held_out.client_ids(), sorted(want))
    for info in held_out.clients:
      columns = shards.read_numpy(held_out, info)
      self.assertEqual(
          list(zip(columns["user"], columns["item"], columns["rating"])),
          want[info.client_id])
    # A shard dir without it (an earlier version's) gets it on reuse; a
    # stale one (eval split changed) is rebuilt.
    shutil.rmtree(held_out.shard_dir)
    movielens.find_or_prepare(self.ml1m, manifest.shard_dir)
    self.assertEqual(shards.load_held_out(manifest).client_ids(),
                     held_out.client_ids())
    other = movielens.find_or_prepare(self.ml1m, manifest.shard_dir,
                                      eval_fraction=0.5)
    self.assertEqual(
        sum(c.num_examples for c in shards.load_held_out(other).clients),
        other.eval.num_examples)

  def test_client_ratings_sorted_by_time(self):
    manifest = movielens.prepare(self.ml1m, os.path.join(self.root, "s"),
                                 eval_fraction=0.0)
    self.assertIsNone(manifest.eval)
    self.assertEmpty(shards.load_held_out(manifest).clients)
    by_user = collections.defaultdict(list)
    for user, item, _, ts in self.rows:
      by_user[user].append((ts, item))
    index = movielens.item_index(manifest)
    info = manifest.clients[3]
    user = manifest.source["user_ids"][3]
    want = [index[item] for _, item in sorted(by_user[user])]
    self.assertEqual(
        shards.read_numpy(manifest, info)["item"].tolist(), want)

  def test_u1_rejected_for_1m(self):
    with self.assertRaisesRegex(errors.DataPrepError,
                                "--split=u1 needs MovieLens 100K"):
      movielens.prepare(self.ml1m, os.path.join(self.root, "s"), "u1")

  def test_bad_eval_fraction(self):
    for fraction in (1.0, -0.1, float("nan")):
      with self.assertRaisesRegex(errors.DataPrepError, "--eval_fraction"):
        movielens.prepare(self.ml1m, os.path.join(self.root, "s"),
                          eval_fraction=fraction)

  def test_detect_errors(self):
    with self.assertRaisesRegex(errors.DataPrepError, "does not exist"):
      movielens.detect_dataset(os.path.join(self.root, "missing"))
    with self.assertRaisesRegex(errors.DataPrepError,
                                "neither u.data .* nor ratings.dat"):
      movielens.detect_dataset(self.root)
    _write(os.path.join(self.ml1m, "u.data"), self.rows)
    with self.assertRaisesRegex(errors.DataPrepError, "holds both"):
      movielens.detect_dataset(self.ml1m)

  def test_bad_line_reported_through_prepare(self):
    path = os.path.join(self.ml1m, "ratings.dat")
    with open(path, "a") as f:
      f.write("1::2::x::4\n")
    with self.assertRaisesRegex(
        errors.DataFormatError,
        rf"{path} line {len(self.rows) + 1}: fields must be integers"):
      movielens.prepare(self.ml1m, os.path.join(self.root, "s"))

  def test_deterministic(self):
    a = movielens.prepare(self.ml1m, os.path.join(self.root, "a"))
    b = movielens.prepare(self.ml1m, os.path.join(self.root, "b"))
    self.assertEqual([(c.client_id, c.sha256) for c in a.clients],
                     [(c.client_id, c.sha256) for c in b.clients])
    self.assertEqual(a.eval.sha256, b.eval.sha256)
    # Line order does not matter either.
    shuffled = os.path.join(self.root, "shuffled")
    _write(os.path.join(shuffled, "ratings.dat"), self.rows[::-1], sep="::")
    c = movielens.prepare(shuffled, os.path.join(self.root, "c"))
    self.assertEqual([x.sha256 for x in a.clients],
                     [x.sha256 for x in c.clients])
    self.assertEqual(a.eval.sha256, c.eval.sha256)

  def test_u1_drops_eval_only_users(self):
    ml100k = os.path.join(self.root, "ml-100k")
    base = [(1, 10, 4, 5), (1, 11, 3, 6), (2, 10, 5, 7), (9, 12, 1, 1)]
    test = [(1, 12, 2, 9), (3, 10, 4, 9), (3, 13, 4, 9), (4, 11, 1, 9),
            (2, 14, 3, 9)]
    _write(os.path.join(ml100k, "u.data"), base + test)
    _write(os.path.join(ml100k, "u1.base"), base)
    _write(os.path.join(ml100k, "u1.test"), test)
    manifest = movielens.prepare(ml100k, os.path.join(self.root, "s"))
    source = manifest.source
    self.assertEqual(manifest.partition["split"], "u1")
    self.assertIsNone(manifest.partition["eval_fraction"])
    self.assertEqual(manifest.client_ids(),
                     ["user_0001", "user_0002", "user_0009"])
    self.assertEqual((source["dropped_eval_ratings"],
                      source["dropped_eval_users"]), (3, 2))
    self.assertEqual(source["num_eval_ratings"], 2)
    # Items seen only in eval (13 was dropped with user 3; 14 kept) still
    # get an index.
    self.assertEqual(source["item_ids"], [10, 11, 12, 13, 14])
    columns = shards.read_numpy(manifest, manifest.eval)
    self.assertEqual(columns["user"].tolist(), [0, 1])
    self.assertEqual(columns["item"].tolist(), [2, 4])
    code, out, err = _run_main(f"--data_dir={ml100k}",
                               f"--output_dir={self.root}/cli")
    self.assertEqual(code, 0, err)
    self.assertIn("dropped 3 eval ratings of 2 users without train ratings",
                  out)
    # u1 needs both split files.
    os.remove(os.path.join(ml100k, "u1.test"))
    with self.assertRaisesRegex(errors.DataPrepError,
                                "--split=u1 needs u1.test in"):
      movielens.prepare(ml100k, os.path.join(self.root, "s"))
    per_user = movielens.prepare(ml100k, os.path.join(self.root, "s"),
                                 "per_user")
    self.assertEqual(per_user.source["files"][0]["path"],
                     os.path.join(ml100k, "u.data"))

  def test_find_or_prepare_reuses_and_rebuilds(self):
    shard_dir = os.path.join(self.root, "s")
    first = movielens.find_or_prepare(self.ml1m, shard_dir)
    manifest_path = os.path.join(shard_dir, shards.MANIFEST_FILE)
    mtime = os.stat(manifest_path).st_mtime_ns
    again = movielens.find_or_prepare(self.ml1m, shard_dir)
    self.assertEqual(os.stat(manifest_path).st_mtime_ns, mtime)
    self.assertEqual(again.client_ids(), first.client_ids())
    other = movielens.find_or_prepare(self.ml1m, shard_dir,
                                      eval_fraction=0.5)
    self.assertEqual(other.partition["eval_fraction"], 0.5)
    _write(os.path.join(self.ml1m, "ratings.dat"), self.rows[:40], sep="::")
    changed = movielens.find_or_prepare(self.ml1m, shard_dir,
                                        eval_fraction=0.5)
    self.assertEqual(changed.source["num_train_ratings"] +
                     changed.source["num_eval_ratings"], 40)


class CliTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.root = self.create_tempdir().full_path
    self.data_dir = os.path.join(self.root, "ml-1m")
    _write(os.path.join(self.data_dir, "ratings.dat"),
           _random_ratings(np.random.default_rng(2), num_users=5,
                           per_user=(5, 6)), sep="::")

  def test_success_prints_summary(self):
    out_dir = os.path.join(self.root, "out")
    code, out, err = _run_main(f"--data_dir={self.data_dir}",
                               f"--output_dir={out_dir}")
    self.assertEqual(code, 0, err)
    self.assertRegex(
        out, r"^movielens ml-1m \(split per_user\): 5 clients, 20 train "
        r"ratings \(per client min 4 / median 4 / max 4\), 5 eval ratings, "
        rf"\d+ items; dropped 0 eval ratings of 0 users without train "
        rf"ratings -> {out_dir} in [0-9.]+ s\n$")

  def test_data_error_is_one_line_exit_2(self):
    with open(os.path.join(self.data_dir, "ratings.dat"), "a") as f:
      f.write("1::2::3")
    code, out, err = _run_main(f"--data_dir={self.data_dir}",
                               f"--output_dir={self.root}/out")
    self.assertEqual(code, cli.EXIT_DATA_ERROR)
    self.assertEqual(out, "")
    self.assertRegex(err, r"^error: \S+ratings.dat line 26: the last line "
                     r"'1::2::3' has no newline.*\n$")

  def test_entry_point(self):
    out_dir = os.path.join(self.root, "out")
    result = testing.run_module("data_prep.movielens",
                                f"--data_dir={self.data_dir}",
                                f"--output_dir={out_dir}", "--split=u1")
    self.assertEqual(result.returncode, cli.EXIT_DATA_ERROR, result.stderr)
    self.assertRegex(result.stderr,
                     r"^error: --split=u1 needs MovieLens 100K's .*\n$")


@absltest.skipUnless(os.path.isfile(os.path.join(_ML100K_DIR, "u1.base")),
                     f"MovieLens 100K not found in {_ML100K_DIR}")
class RealMovieLens100kTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.root = self.create_tempdir().full_path

  def test_u1(self):
    start = time.monotonic()
    manifest = movielens.prepare(_ML100K_DIR, os.path.join(self.root, "s"))
    logging.info("ml-100k u1 prepared in %.2f s",
                 time.monotonic() - start)
    source = manifest.source
    self.assertEqual(source["dataset"], "ml-100k")
    self.assertEqual(manifest.partition["split"], "u1")
    self.assertEqual((source["num_users"], source["num_items"]),
                     (943, 1682))
    self.assertEqual(source["item_ids"], list(range(1, 1683)))
    self.assertLen(manifest.clients, 943)
    self.assertEqual(manifest.client_ids()[:2], ["user_0001", "user_0002"])
    self.assertEqual(manifest.client_ids()[-1], "user_0943")
    self.assertEqual(sum(c.num_examples for c in manifest.clients), 80000)
    self.assertEqual(manifest.eval.num_examples, 20000)
    self.assertEqual((source["dropped_eval_ratings"],
                      source["dropped_eval_users"]), (0, 0))
    columns = shards.read_numpy(manifest, manifest.eval)
    # Every eval user has a client with local training data.
    sizes = np.array([c.num_examples for c in manifest.clients])
    self.assertTrue(np.all(sizes[np.unique(columns["user"])] > 0))
    self.assertTrue(np.all((columns["rating"] >= 1) &
                           (columns["rating"] <= 5)))
    # Spot-check user 1 against u1.base.
    base = movielens.read_ratings(os.path.join(_ML100K_DIR, "u1.base"),
                                  "\t")
    mine = base.users == 1
    got = shards.read_numpy(manifest, manifest.client("user_0001"))
    self.assertCountEqual(
        zip(got["item"].tolist(), got["rating"].tolist()),
        zip((base.items[mine] - 1).tolist(),
            base.ratings[mine].astype(float).tolist()))
    shards.verify_shards(shards.load_manifest(manifest.shard_dir))

  def test_per_user(self):
    manifest = movielens.prepare(_ML100K_DIR, os.path.join(self.root, "p"),
                                 "per_user")
    source = manifest.source
    self.assertEqual(source["num_users"], 943)
    self.assertEqual(source["num_train_ratings"] +
                     source["num_eval_ratings"], 100000)
    self.assertEqual(source["dropped_eval_ratings"], 0)
    # Each user has >= 20 ratings, so round(0.2 n) of them go to eval.
    self.assertBetween(source["num_eval_ratings"], 19500, 20500)


if __name__ == "__main__":
  absltest.main()
