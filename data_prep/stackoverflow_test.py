"""Tests for data_prep.stackoverflow."""

import collections
import contextlib
import csv
import gzip
import io
import json
import os
import resource
import subprocess
import sys
import time

from absl import flags
from absl import logging
from absl.testing import absltest
import numpy as np

from data_prep import cli
from data_prep import errors
from data_prep import shards
from data_prep import stackoverflow
from data_prep import testing
from tests import testutil

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SAMPLE = os.path.join(testutil.shared_data_dir(), "stackoverflow-sample",
                       "posts_questions.tsv")
_HEADER = ["id", "title", "body", "owner_user_id", "tags"]


def _tsv(rows, header=_HEADER, delimiter="\t"):
  """Rows (lists of fields) as export text, quoting like BigQuery."""
  out = io.StringIO(newline="")
  writer = csv.writer(out, delimiter=delimiter, lineterminator="\r\n")
  writer.writerow(header)
  writer.writerows(rows)
  return out.getvalue()


def _lines(text):
  return io.StringIO(text, newline="")


def _run_main(*args):
  """Runs make_main with fresh flags; returns (exit code, out, err)."""
  flag_values = flags.FlagValues()
  stackoverflow.define_flags(flag_values)
  flag_values(["prog", *args])
  stdout, stderr = io.StringIO(), io.StringIO()
  code = 0
  with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
    try:
      stackoverflow.make_main(flag_values)(["prog"])
    except SystemExit as e:
      code = e.code
  return code, stdout.getvalue(), stderr.getvalue()


def _read_all(manifest, infos):
  """[(tokens, tags)] of shards `infos`, as str."""
  rows = []
  for info in infos:
    columns = shards.read_numpy(manifest, info)
    rows.extend(zip((t.decode() for t in columns["tokens"]),
                    (t.decode() for t in columns["tags"])))
  return rows


# Generated exports: many owners, long-tailed vocabulary, HTML bodies.


def generated_lines(target_bytes, seed=0, num_owners=20000,
                    num_words=300000, num_tags=3000, rows_per_batch=500):
  """Yields lines of a TSV export of about target_bytes, on the fly.

  Words and tags are Zipf-distributed, so a few are very frequent and most
  are rare; owners follow a Zipf-Mandelbrot law (p(k) ~ (k + 30)^-1.2), so
  the busiest owner asks about 1% of the questions and most ask one.
  Every 50th row has no owner. Bodies are HTML with <pre> blocks, entities
  and embedded newlines (quoted); titles contain doubled quotes.
  """
  rng = np.random.default_rng(seed)
  owner_p = (np.arange(num_owners) + 30.0)**-1.2
  owner_p /= owner_p.sum()
  words = np.array([f"w{np.base_repr(i, 36).lower()}"
                    for i in range(num_words)], dtype=object)
  yield "\t".join(_HEADER) + "\r\n"
  produced, row_id = 0, 0
  while produced < target_bytes:
    out = io.StringIO(newline="")
    lengths = rng.integers(20, 300, rows_per_batch)
    word_ids = (rng.zipf(1.15, int(lengths.sum())) - 1) % num_words
    owners = rng.choice(num_owners, rows_per_batch, p=owner_p)
    tag_ids = (rng.zipf(1.3, 5 * rows_per_batch) - 1) % num_tags
    offset = 0
    for i in range(rows_per_batch):
      text = words[word_ids[offset:offset + lengths[i]]]
      offset += lengths[i]
      half = len(text) // 2
      title = " ".join(text[:8])
      body = (f"<p>{' '.join(text[8:half])} &amp; x&lt;y</p>\n<pre><code>"
              f"int zzcode = 1;\n</code></pre>\n<p>{' '.join(text[half:])}"
              "</p>")
      owner = "" if row_id % 50 == 7 else str(owners[i] + 1)
      tags = "|".join(f"t{t}" for t in
                      sorted(set(tag_ids[5 * i:5 * i + 1 + i % 5])))
      out.write(f'{row_id}\t"""{title}"" q"\t"{body}"\t{owner}\t{tags}\r\n')
      row_id += 1
    text = out.getvalue()
    produced += len(text)
    yield from io.StringIO(text, newline="")


def _rss_kib() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def stream_child(argv):
  """Child-process body of the memory tests; prints one JSON line."""
  target_mb, num_buckets, out_dir = int(argv[0]), int(argv[1]), argv[2]
  eval_fraction = float(argv[3])
  # Warm up TF's writer and the code paths on a tiny input first, so the
  # baseline includes one-time allocations.
  stackoverflow.prepare_lines(generated_lines(200_000), "warmup",
                              out_dir + "-warmup", num_buckets=2)
  # Start the generator (it builds its word list before the header) so the
  # baseline holds the generator's own state.
  lines = generated_lines(target_mb << 20)
  header = next(lines)
  rss_before = _rss_kib()
  maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  counted = [len(header)]

  def counting(lines):
    yield header
    for line in lines:
      counted[0] += len(line)
      yield line

  start = time.monotonic()
  manifest = stackoverflow.prepare_lines(
      counting(lines), "generated", out_dir,
      num_buckets=num_buckets, eval_fraction=eval_fraction)
  seconds = time.monotonic() - start
  maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  print(json.dumps({
      "bytes": counted[0], "seconds": seconds,
      "mb_per_s": counted[0] / seconds / 2**20,
      "rss_before_kib": rss_before, "maxrss_before_kib": maxrss_before,
      "maxrss_after_kib": maxrss_after,
      "growth_mib": (maxrss_after - rss_before) / 1024,
      "clients": len(manifest.clients),
      "questions": sum(c.num_examples for c in manifest.clients),
      "eval_questions": manifest.eval.num_examples if manifest.eval else 0,
      "rows": manifest.source["num_rows"],
      "skipped": manifest.source["num_skipped_no_owner"],
      "vocab_error_bound": manifest.source["vocab_error_bound"],
      "vocab": len(manifest.source["vocab"]),
  }))


def _run_stream_child(target_mb, num_buckets, out_dir, eval_fraction):
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([_REPO_ROOT, *sys.path])
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  code = ("import sys; from data_prep import stackoverflow_test as t; "
          "t.stream_child(sys.argv[1:])")
  result = subprocess.run(
      [sys.executable, "-c", code, str(target_mb), str(num_buckets), out_dir,
       str(eval_fraction)], cwd=_REPO_ROOT, env=env, capture_output=True,
      text=True, timeout=1800, check=False)
  if result.returncode:
    raise AssertionError(f"child failed: {result.stderr[-3000:]}")
  stats = json.loads(result.stdout.strip().splitlines()[-1])
  logging.info("stream %d MB, %d buckets: %s", target_mb, num_buckets, stats)
  print(f"stream {target_mb} MB, {num_buckets} buckets: {stats}",
        file=sys.stderr)
  return stats


class HeavyHittersTest(absltest.TestCase):

  def test_guarantee_on_zipf_stream(self):
    rng = np.random.default_rng(0)
    for capacity, a in ((50, 1.1), (200, 1.3), (1000, 1.05)):
      items = [f"x{i}" for i in rng.zipf(a, 200_000) % 100_000]
      hh = stackoverflow.HeavyHitters(capacity)
      pos = 0
      while pos < len(items):  # Uneven batches, like question lengths.
        n = int(rng.integers(1, 400))
        hh.update(items[pos:pos + n])
        pos += n
      exact = collections.Counter(items)
      self.assertEqual(hh.total, len(items))
      self.assertGreater(hh.error, 0)  # Reductions happened.
      self.assertLessEqual(hh.error, hh.total / (capacity + 1))
      self.assertLessEqual(len(hh), 2 * capacity)
      for item, count in exact.items():
        estimate = hh.estimate(item)
        self.assertBetween(count - estimate, 0, hh.error)
        if count > hh.total / (capacity + 1):
          self.assertGreater(estimate, 0, item)
      # The top items are exact enough to rank: the 10 most frequent of a
      # Zipf stream are far apart.
      self.assertEqual([w for w, _ in hh.most_common(10)],
                       [w for w, _ in sorted(exact.items(),
                                             key=lambda kv: (-kv[1], kv[0]))
                        [:10]])

  def test_exact_below_capacity_and_ties(self):
    hh = stackoverflow.HeavyHitters(3)
    hh.update(["b", "a", "c", "b", "a", "d"])
    self.assertEqual(hh.error, 0)
    self.assertEqual(hh.most_common(3), [("a", 2), ("b", 2), ("c", 1)])
    self.assertEqual(hh.most_common(10)[-1], ("d", 1))
    hh.update(iter(["e", "f", "g"]))  # 7 distinct > 2 * 3: reduce.
    self.assertLessEqual(len(hh), 3)
    self.assertEqual(hh.total, 9)
    with self.assertRaises(ValueError):
      stackoverflow.HeavyHitters(0)


class NormalizeTest(absltest.TestCase):

  def test_tokenize(self):
    self.assertEqual(stackoverflow.tokenize("Hello, World!"),
                     ["hello", ",", "world", "!"])
    self.assertEqual(
        stackoverflow.tokenize("Don't use C++ or C#. (see Node.js)..."),
        ["don't", "use", "c++", "or", "c#", ".", "(", "see", "node.js",
         ")", "..."])
    self.assertEqual(stackoverflow.tokenize("ASP.NET vs .NET 4.5?!"),
                     ["asp.net", "vs", ".net", "4.5", "?", "!"])
    self.assertEqual(stackoverflow.tokenize("run -v --fix {a_b}"),
                     ["run", "-", "v", "--", "fix", "{", "a_b", "}"])
    self.assertEqual(stackoverflow.tokenize("Ünïcode  straße\n\tok"),
                     ["ünïcode", "straße", "ok"])
    self.assertEqual(stackoverflow.tokenize("f(x),g[1]; a=b http://x.io/p"),
                     ["f", "(", "x", ")", ",", "g", "[", "1", "]", ";",
                      "a=b", "http://x.io/p"])
    self.assertEqual(stackoverflow.tokenize(""), [])

  def test_html_to_text(self):
    text = stackoverflow.html_to_text(
        "<p>Use <code>wsl</code> &amp; <em>docker</em>.</p>\n<pre><code>"
        "sudo dockerd\n</code></pre><p>x&lt;y<br>z<img src=\"u.png\" "
        "alt=\"pic\" /></p>")
    self.assertEqual(text.split(), ["Use", "wsl", "&", "docker", ".",
                                    "x<y", "z"])
    self.assertEqual(stackoverflow.html_to_text("a &gt; b"), "a > b")

  def test_normalize_title_is_plain_text(self):
    self.assertEqual(
        stackoverflow.normalize("std::vector<int> &amp; me",
                                "<p>Why?</p>"),
        ["std::vector", "<", "int", ">", "&", "me", "why", "?"])

  def test_split_tags(self):
    self.assertEqual(stackoverflow.split_tags("Python|pandas||data frame|"),
                     ["python", "pandas", "data-frame"])
    self.assertEqual(stackoverflow.split_tags(""), [])


class ReadQuestionsTest(absltest.TestCase):

  def _read(self, text, fmt="auto", name="in.tsv"):
    stats = stackoverflow.ReadStats()
    return list(stackoverflow.read_questions(_lines(text), name, fmt,
                                             stats)), stats

  def _error(self, text, fmt="auto"):
    with self.assertRaises(errors.DataFormatError) as ctx:
      self._read(text, fmt)
    message = str(ctx.exception)
    self.assertNotIn("\n", message)
    self.assertStartsWith(message, "in.tsv ")
    return message

  def test_tsv_with_embedded_newlines(self):
    text = _tsv([["1", 'say "hi"', "<p>a\nb</p>\n<p>c</p>", "7", "x|y"],
                 ["2", "t", "b", "", "z"],
                 ["3", "t2", "multi\r\nline\nbody", "8", ""]])
    questions, stats = self._read(text)
    self.assertEqual([(q.line, q.owner, q.title, q.tags)
                      for q in questions],
                     [(2, "7", 'say "hi"', "x|y"), (6, "8", "t2", "")])
    self.assertEqual(questions[0].body, "<p>a\nb</p>\n<p>c</p>")
    self.assertEqual(questions[1].body, "multi\r\nline\nbody")
    self.assertEqual((stats.rows, stats.skipped_no_owner), (3, 1))

  def test_csv_sniffed_and_explicit(self):
    text = _tsv([["1", "a, b", "<p>x,\ny</p>", "5", "t"]], delimiter=",")
    for fmt in ("auto", "csv"):
      questions, _ = self._read(text, fmt)
      self.assertEqual([(q.owner, q.title) for q in questions],
                       [("5", "a, b")])

  def test_header_case_bom_and_extra_columns(self):
    text = _tsv([["x", "7", "t", "b", "g", "y"]],
                header=["\ufeffExtra", "Owner_User_Id", "Title", "Body",
                        "Tags", "more"])
    questions, _ = self._read(text)
    self.assertEqual(questions[0].owner, "7")

  def test_missing_columns(self):
    message = self._error(_tsv([["1", "t", "b"]],
                               header=["id", "title", "body"]))
    self.assertIn("line 1: header (read as TSV) lacks columns "
                  "owner_user_id, tags", message)
    message = self._error(_tsv([["1", "t", "b", "o"]],
                               header=["id", "title", "body",
                                       "owner_user_id"]), fmt="tsv")
    self.assertIn("line 1: header (read as TSV) lacks column tags;",
                  message)

  def test_wrong_field_count_names_line(self):
    text = _tsv([["1", "t", "two\nlines", "7", "x"]]) + "2\tt\tb\t7\r\n"
    self.assertIn("line 4: 4 fields, the header has 5", self._error(text))

  def test_unterminated_quote_at_eof(self):
    text = _tsv([["1", "t", "b", "7", "x"]]) + '2\tt\t"never closed\n\nx\n'
    self.assertIn("line 3: unterminated quoted field at end of file",
                  self._error(text))

  def test_junk_after_quote(self):
    text = _tsv([["1", "t", "b", "7", "x"]]) + '2\t"t"x\tb\t7\tx\r\n'
    self.assertIn("line 3: malformed TSV", self._error(text))

  def test_bad_owner(self):
    text = _tsv([["1", "t", "b", "7 8", "x"]])
    self.assertIn("line 2: owner_user_id '7 8' is not a plain id",
                  self._error(text))

  def test_empty_and_unsniffable(self):
    self.assertIn("is empty", self._error(""))
    self.assertIn("cannot tell TSV from CSV", self._error("justoneword\n"))

  def test_blank_lines_skipped(self):
    text = _tsv([["1", "t", "b", "7", "x"]]) + "\r\n\r\n"
    questions, stats = self._read(text)
    self.assertLen(questions, 1)
    self.assertEqual(stats.rows, 1)

  def test_detect_format(self):
    root = self.create_tempdir().full_path
    for name, content, want in (("a.tsv", "x,y\n", "tsv"),
                                ("a.CSV", "x\ty\n", "csv"),
                                ("a.txt", "x\ty\n", "tsv"),
                                ("a", "x,y\n", "csv")):
      path = os.path.join(root, name)
      with open(path, "w") as f:
        f.write(content)
      self.assertEqual(stackoverflow.detect_format(path), want, name)
    path = os.path.join(root, "b.csv.gz")
    with gzip.open(path, "wt") as f:
      f.write("x\ty\n")
    self.assertEqual(stackoverflow.detect_format(path), "csv")


class SyntheticPrepareTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.root = self.create_tempdir().full_path

  def test_buckets_do_not_change_output(self):
    text = "".join(generated_lines(2 << 20, seed=3, num_owners=300))
    manifests = []
    for num_buckets in (1, 7):
      manifests.append(stackoverflow.prepare_lines(
          _lines(text), "gen", os.path.join(self.root, f"b{num_buckets}"),
          num_buckets=num_buckets, vocab_size=500, num_tags=20))
    one, seven = manifests
    self.assertGreater(len(one.clients), 50)
    self.assertEqual([(c.client_id, c.sha256) for c in one.clients],
                     [(c.client_id, c.sha256) for c in seven.clients])
    self.assertEqual(one.eval.sha256, seven.eval.sha256)
    self.assertEqual(one.source, seven.source)
    self.assertGreater(one.source["vocab_error_bound"], 0)
    # No spill directories are left behind.
    self.assertCountEqual(os.listdir(self.root), ["b1", "b7"])
    # Every question with an owner is in exactly one shard.
    source = one.source
    self.assertEqual(
        sum(c.num_examples for c in one.clients) + one.eval.num_examples,
        source["num_rows"] - source["num_skipped_no_owner"])
    self.assertEqual(source["num_questions"],
                     source["num_rows"] - source["num_skipped_no_owner"])
    self.assertGreater(source["num_skipped_no_owner"], 0)
    self.assertLen(source["vocab"], 500)
    self.assertLen(source["tags"], 20)
    tokens, _ = zip(*_read_all(one, one.clients[:5]))
    self.assertNotIn("zzcode", " ".join(tokens))  # <pre> dropped.
    self.assertIn(" & x < y ", " ".join(tokens))

  def test_num_clients_keeps_biggest_owners(self):
    text = "".join(generated_lines(1 << 20, seed=4, num_owners=200))
    everyone = stackoverflow.prepare_lines(
        _lines(text), "gen", os.path.join(self.root, "all"), num_buckets=3,
        eval_fraction=0.2, seed=5)
    some = stackoverflow.prepare_lines(
        _lines(text), "gen", os.path.join(self.root, "some"), num_buckets=3,
        eval_fraction=0.2, seed=5, num_clients=8)
    sizes = sorted((c.num_examples for c in everyone.clients), reverse=True)
    self.assertLen(some.clients, 8)
    self.assertEqual(sorted((c.num_examples for c in some.clients),
                            reverse=True), sizes[:8])
    self.assertEqual(some.source["num_eval_owners"], 2)  # 8 * .2 / .8.
    self.assertEqual(some.partition, {"method": "natural", "unit": "owner",
                                      "num_clients": 8,
                                      "eval_fraction": 0.2, "seed": 5})
    # Kept clients appear in the same (owner hash) order as in the full
    # build, with the same shards.
    full = {c.client_id: c.sha256 for c in everyone.clients}
    kept = some.client_ids()
    order = everyone.client_ids()
    self.assertEqual(kept, sorted(kept, key=order.index))
    for info in some.clients:
      self.assertEqual(info.sha256, full[info.client_id])

  def test_seed_changes_held_out_owners(self):
    text = "".join(generated_lines(300_000, seed=5, num_owners=100))
    ids = []
    for seed in (0, 0, 1):
      manifest = stackoverflow.prepare_lines(
          _lines(text), "gen", os.path.join(self.root, "s"), seed=seed,
          eval_fraction=0.3, num_buckets=2)
      ids.append(manifest.client_ids())
    self.assertEqual(ids[0], ids[1])
    self.assertNotEqual(ids[0], ids[2])

  def test_zero_eval_fraction_writes_no_eval(self):
    text = _tsv([["1", "a", "<p>b</p>", "7", "x"]])
    manifest = stackoverflow.prepare_lines(
        _lines(text), "one", os.path.join(self.root, "z"), eval_fraction=0)
    self.assertIsNone(manifest.eval)
    self.assertEqual(_read_all(manifest, manifest.clients),
                     [("a b", "x")])

  def test_all_rows_without_owner(self):
    text = _tsv([["1", "a", "b", "", "x"]])
    with self.assertRaisesRegex(errors.DataPrepError,
                                "no training owners .*1 without owner"):
      stackoverflow.prepare_lines(_lines(text), "one",
                                  os.path.join(self.root, "z"))

  def test_request_errors(self):
    text = _tsv([["1", "a", "b", "7", "x"]])
    for kwargs, pattern in (({"vocab_size": 0}, "--vocab_size=0"),
                            ({"num_tags": 0}, "--num_tags=0"),
                            ({"num_clients": -1}, "--num_clients=-1"),
                            ({"eval_fraction": 1.0}, "--eval_fraction=1.0"),
                            ({"num_buckets": 0}, "--num_buckets=0")):
      with self.assertRaisesRegex(errors.DataPrepError, pattern):
        stackoverflow.prepare_lines(_lines(text), "x",
                                    os.path.join(self.root, "z"), **kwargs)

  def test_refuses_foreign_output_dir_before_reading(self):
    out = os.path.join(self.root, "busy")
    os.makedirs(out)
    open(os.path.join(out, "precious.txt"), "w").close()

    def lines():
      raise AssertionError("read before checking the output dir")
      yield  # pylint: disable=unreachable

    with self.assertRaisesRegex(errors.DataPrepError, "refusing to replace"):
      stackoverflow.prepare_lines(lines(), "x", out)

  def test_prepare_file_errors(self):
    path = os.path.join(self.root, "q.csv")
    with open(path, "w", newline="") as f:
      f.write(_tsv([["1", "a", "b", "7"]], header=["id", "title", "body",
                                                    "owner_user_id"],
                   delimiter=","))
    with self.assertRaisesRegex(
        errors.DataFormatError,
        rf"^{path} line 1: header \(read as CSV\) lacks column tags;"):
      stackoverflow.prepare(path, os.path.join(self.root, "s"))
    with self.assertRaisesRegex(errors.DataPrepError, "does not exist"):
      stackoverflow.prepare(os.path.join(self.root, "nope.tsv"),
                            os.path.join(self.root, "s"))
    with self.assertRaisesRegex(errors.DataPrepError, "holds none of"):
      stackoverflow.prepare(self.create_tempdir().full_path,
                            os.path.join(self.root, "s"))

  def test_gzip_input_and_directory(self):
    data_dir = os.path.join(self.root, "export")
    os.makedirs(data_dir)
    with gzip.open(os.path.join(data_dir, "posts_questions.tsv.gz"), "wt",
                   newline="") as f:
      f.write(_tsv([["1", "a", "<p>b</p>", "7", "x|y"],
                    ["2", "c", "d", "8", "y"]]))
    manifest = stackoverflow.prepare(data_dir, os.path.join(self.root, "s"),
                                     eval_fraction=0)
    self.assertEqual(manifest.client_ids(), sorted(
        manifest.client_ids(),
        key=lambda c: stackoverflow._owner_hash(c[len("owner_"):])))
    self.assertCountEqual(manifest.client_ids(), ["owner_7", "owner_8"])
    self.assertEqual(manifest.source["tags"], ["y", "x"])
    self.assertEqual(manifest.source["vocab"], ["a", "b", "c", "d"])

  def test_find_or_prepare_reuses_and_rebuilds(self):
    path = os.path.join(self.root, "q.tsv")
    with open(path, "w", newline="") as f:
      f.write(_tsv([["1", "a", "b", "7", "x"], ["2", "c", "d", "8", "y"]]))
    shard_dir = os.path.join(self.root, "s")
    stackoverflow.find_or_prepare(path, shard_dir, eval_fraction=0)
    manifest_path = os.path.join(shard_dir, shards.MANIFEST_FILE)
    mtime = os.stat(manifest_path).st_mtime_ns
    stackoverflow.find_or_prepare(path, shard_dir, eval_fraction=0,
                                  num_buckets=3)
    self.assertEqual(os.stat(manifest_path).st_mtime_ns, mtime)
    rebuilt = stackoverflow.find_or_prepare(path, shard_dir,
                                            eval_fraction=0, vocab_size=1)
    self.assertEqual(rebuilt.source["vocab"], ["a"])


class StreamMemoryTest(absltest.TestCase):
  """Peak RSS stays bounded while streaming a generated export."""

  def test_20mb_spill_and_merge(self):
    out = os.path.join(self.create_tempdir().full_path, "s")
    stats = _run_stream_child(20, 4, out, eval_fraction=0.1)
    self.assertGreater(stats["bytes"], 20 << 20)
    self.assertGreater(stats["clients"], 1000)
    self.assertGreater(stats["vocab_error_bound"], 0)  # Counter reduced.
    self.assertEqual(stats["questions"] + stats["eval_questions"],
                     stats["rows"] - stats["skipped"])
    # Absolute growth is mostly the fixed-size word counter and varies by
    # environment (40-61 MiB seen); what must not happen is growth with the
    # input. Holding 10 MB more of questions in Python would add >= 30 MiB.
    small = _run_stream_child(10, 4, os.path.join(
        self.create_tempdir().full_path, "s"), eval_fraction=0.1)
    self.assertGreater(small["vocab_error_bound"], 0)  # Counter already full.
    self.assertLess(stats["growth_mib"] - small["growth_mib"], 20)

  @testutil.slow
  def test_200mb_bounded_memory(self):
    out = os.path.join(self.create_tempdir().full_path, "s")
    # Buckets auto-sized as prepare() would for a 200 MiB file; a small
    # eval share because write_shards holds the eval shard in memory.
    stats = _run_stream_child(200, 13, out, eval_fraction=0.01)
    self.assertGreater(stats["bytes"], 200 << 20)
    self.assertEqual(stats["questions"] + stats["eval_questions"],
                     stats["rows"] - stats["skipped"])
    # Measured: ~52 MiB here, ~42 MiB for the 20 MB stream.
    self.assertLess(stats["growth_mib"], 80)


@absltest.skipUnless(os.path.isfile(_SAMPLE),
                     f"Stack Overflow sample not found at {_SAMPLE}")
class RealSampleTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.root = self.create_tempdir().full_path

  def test_sample(self):
    manifest = stackoverflow.prepare(_SAMPLE, os.path.join(self.root, "s"))
    source = manifest.source
    self.assertEqual(source["format"], "tsv")
    self.assertEqual((source["num_rows"], source["num_skipped_no_owner"],
                      source["num_questions"], source["num_owners"]),
                     (100, 0, 100, 99))
    self.assertEqual(len(manifest.clients) + source["num_eval_owners"], 99)
    self.assertBetween(source["num_eval_owners"], 3, 20)
    self.assertEqual(sum(c.num_examples for c in manifest.clients) +
                     manifest.eval.num_examples, 100)
    rows = _read_all(manifest, [*manifest.clients, manifest.eval])
    text = " ".join(tokens for tokens, _ in rows)
    self.assertNotIn("<p>", text)
    self.assertNotIn("< p >", text)
    self.assertNotIn("&quot;", text)
    for tokens, tags in rows:
      self.assertEqual(tokens, tokens.lower())
      self.assertNotIn(" ", tags)
      self.assertTrue(tags)
    shards.verify_shards(shards.load_manifest(manifest.shard_dir))

  def test_first_question_and_vocab_order(self):
    manifest = stackoverflow.prepare(_SAMPLE, os.path.join(self.root, "s"),
                                     eval_fraction=0, vocab_size=400,
                                     num_tags=50)
    rows = shards.read_numpy(manifest, manifest.client("owner_11226740"))
    tokens = rows["tokens"][0].decode().split()
    self.assertEqual(tokens[:4], ["az", "acr", "login", "raises"])
    self.assertIn("wsl", tokens)  # Inline <code> kept.
    self.assertNotIn("dockerd", tokens)  # <pre> dropped.
    self.assertEqual(rows["tags"][0], b"azure-container-registry|"
                     b"docker-daemon")
    # Vocabularies: exact counts (the sample fits the counters), most
    # frequent first, ties in code point order.
    all_rows = _read_all(manifest, manifest.clients)
    words = collections.Counter(w for t, _ in all_rows for w in t.split())
    tags = collections.Counter(g for _, t in all_rows for g in t.split("|"))
    by_count = lambda c: [k for k, _ in sorted(c.items(),
                                               key=lambda kv: (-kv[1],
                                                               kv[0]))]
    self.assertEqual(manifest.source["vocab"], by_count(words)[:400])
    self.assertEqual(manifest.source["tags"], by_count(tags)[:50])
    self.assertEqual(manifest.source["vocab_error_bound"], 0)
    self.assertEqual(manifest.source["tags_error_bound"], 0)

  def test_csv_variant_gives_same_shards(self):
    csv_path = os.path.join(self.root, "posts_questions.csv")
    with open(_SAMPLE, encoding="utf-8", newline="") as src, open(
        csv_path, "w", encoding="utf-8", newline="") as dst:
      csv.writer(dst).writerows(csv.reader(src, delimiter="\t"))
    tsv = stackoverflow.prepare(_SAMPLE, os.path.join(self.root, "t"))
    from_csv = stackoverflow.prepare(self.root, os.path.join(self.root, "c"))
    self.assertEqual(from_csv.source["format"], "csv")
    self.assertEqual([(c.client_id, c.sha256) for c in tsv.clients],
                     [(c.client_id, c.sha256) for c in from_csv.clients])
    self.assertEqual(tsv.source["vocab"], from_csv.source["vocab"])


class CliTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.root = self.create_tempdir().full_path
    self.path = os.path.join(self.root, "q.tsv")
    with open(self.path, "w", newline="") as f:
      f.write(_tsv([["1", "a b", "<p>c</p>", "7", "x"],
                    ["2", "d", "e", "8", "y|x"], ["3", "f", "g", "", "z"],
                    ["4", "h", "i", "7", "x"]]))

  def test_success_prints_summary(self):
    out_dir = os.path.join(self.root, "out")
    code, out, err = _run_main(f"--input={self.path}",
                               f"--output_dir={out_dir}",
                               "--eval_fraction=0")
    self.assertEqual(code, 0, err)
    self.assertRegex(
        out, r"^stackoverflow: 2 clients, 3 questions \(per client min 1 / "
        r"median 1.5 / max 2\), 0 eval questions of 0 owners, vocab 7 "
        rf"words / 2 tags, 1 rows without owner skipped -> {out_dir} in "
        r"[0-9.]+ s\n$")

  def test_data_error_is_one_line_exit_2(self):
    with open(self.path, "a") as f:
      f.write('5\t"open\tx\t9\tq\n')
    code, out, err = _run_main(f"--input={self.path}",
                               f"--output_dir={self.root}/out")
    self.assertEqual(code, cli.EXIT_DATA_ERROR)
    self.assertEqual(out, "")
    self.assertRegex(err, rf"^error: {self.path} line 6: unterminated "
                     r"quoted field at end of file.*\n$")

  def test_entry_point(self):
    result = testing.run_module("data_prep.stackoverflow",
                                f"--input={self.root}/missing.tsv",
                                f"--output_dir={self.root}/out")
    self.assertEqual(result.returncode, cli.EXIT_DATA_ERROR, result.stderr)
    self.assertRegex(result.stderr, r"^error: Stack Overflow input .* does "
                     r"not exist; .*\n$")


if __name__ == "__main__":
  absltest.main()
