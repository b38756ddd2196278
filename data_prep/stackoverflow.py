"""Builds per-owner shards of Stack Overflow questions in bounded memory.

Usage:
  python -m data_prep.stackoverflow --input=FILE_OR_DIR --output_dir=DIR
      [--vocab_size=10000] [--num_tags=500] [--num_clients=0]
      [--eval_fraction=0.1] [--seed=0] [--num_buckets=0]

--input is a BigQuery export of bigquery-public-data.stackoverflow.
posts_questions as TSV or CSV (.gz allowed; a directory holding one
posts_questions.{tsv,csv}[.gz] works too). The header row must name at least
owner_user_id, title, body and tags; body is HTML, tags are |-separated.
Rows without an owner are skipped and counted.

Shards: one client per owner (client id owner_<owner_user_id>), one example
per question with two string features:
  tokens  normalized title + body tokens, space-joined
  tags    the question's tags, lowercased, |-joined
so tag prediction (bag of words -> tags) and next-word prediction can both be
built from the same shards. manifest.source holds the vocabularies: `vocab`,
the --vocab_size most frequent words, and `tags`, the --num_tags most
frequent tags, most frequent first, ties by code point order. Out-of-vocab
words and tags stay in the shards; the training side maps them.

Text normalization (title and body, joined): the body's HTML is reduced to
its text with html.parser (entities unescaped). The contents of <pre> blocks
(multi-line code listings), <script> and <style> are dropped: they are long,
full of identifiers that would flood the vocabulary and are not language;
inline <code> is kept because it is part of the sentence ("run `wsl`").
Titles are plain text (only entities are unescaped). Text is lowercased and
split into tokens with TOKEN_PATTERN: words are runs of word characters
joined by inner . ' : / @ % + # = & ~ - (don't, node.js, 22.04,
std::vector, docker_engine, most urls), with a trailing +/# kept (c++, c#)
and a leading "." kept before a word (.net); any other punctuation becomes
tokens of one repeated character ("?", "(", "<", "..."). TFF's
stackoverflow data splits on whitespace only, which leaves "running." and
"running" as different words.

Held-out owners: an owner is held out for eval when a seeded hash of its id
falls below --eval_fraction, so the choice needs no memory, does not depend
on row order and is stable when rows are added; the held-out share is
--eval_fraction in expectation (each owner is drawn independently). With
--num_clients=N > 0 only the N training owners with the most questions
become clients, and the eval shard keeps the round(N * f / (1 - f))
held-out owners with the most questions (f = --eval_fraction), so eval
owners stay the same share of the owners kept. Ties are broken by the owner
hash. Vocabularies are counted over the questions of all non-held-out
owners; the counts behind them may be low by at most
source["vocab_error_bound"] (["tags_error_bound"]), which is 0 when every
distinct word fit the counter.

Memory does not grow with the input size. One streaming pass (a) counts
word and tag frequencies with `HeavyHitters` (Misra-Gries, capacity
HEAVY_HITTERS_FACTOR x the vocabulary size) and (b) spills normalized rows
to K bucket files by a hash of the owner; then (c) each bucket is grouped by
owner in memory and written as client shards. Peak memory is about one
bucket (about input size / K; K defaults to one bucket per
BUCKET_TARGET_BYTES of input, capped by the open-file limit; a bucket holds
at least all questions of its busiest owner) plus the counters (~30 MB for
10000 words), plus one entry per client in the manifest, plus the eval
examples: shards.write_shards takes the eval shard as in-memory columns, so
eval questions are held in memory (use --num_clients or a small
--eval_fraction for multi-GB exports). Buckets split the owner-hash range
and owners are written in hash order, so the output does not depend on K.
Spill files go to a hidden directory beside --output_dir and are removed.
"""

import collections
import contextlib
import csv
import dataclasses
import gzip
import hashlib
import heapq
import html
import html.parser
import itertools
import math
import os
import re
import resource
import shutil
import statistics
import tempfile
from typing import Iterable, Iterator
import zlib

from absl import flags
from absl import logging
import numpy as np

# cli must stay the first data_prep import: it quiets TF's import-time
# logging before shards imports TensorFlow.
from data_prep import cli
from data_prep import entry_point
from data_prep import errors
from data_prep import shards

TASK = "stackoverflow"
FEATURES_SPEC = {
    "tokens": {"kind": "string", "shape": []},
    "tags": {"kind": "string", "shape": []},
}
REQUIRED_COLUMNS = ("owner_user_id", "title", "body", "tags")
FORMATS = ("tsv", "csv")
DEFAULT_VOCAB_SIZE = 10000
DEFAULT_NUM_TAGS = 500
DEFAULT_EVAL_FRACTION = 0.1
# Heavy-hitters capacity per requested vocabulary entry.
HEAVY_HITTERS_FACTOR = 10
# Input bytes per spill bucket when --num_buckets=0 (gzip input counts 5x);
# a bucket takes about its input size in memory when grouped.
BUCKET_TARGET_BYTES = 16 << 20
MAX_BUCKETS = 4096
# File descriptors left for everything else while all buckets are open.
_RESERVED_FDS = 64
# Longest field accepted; Stack Overflow bodies are below 64k characters,
# so a longer field is almost surely an unterminated quote.
MAX_FIELD_CHARS = 1 << 22
# Bumped whenever normalization changes, so find_or_prepare rebuilds.
NORMALIZATION = "html.parser-no-pre/lower/token-pattern-v1"
TOKEN_PATTERN = re.compile(
    r"(\.?\w+(?:[.'\u2019:/@%+#=&~-]+\w+)*[+#]*"
    r"|([^\s\w])\2*)")
INPUT_NAMES = tuple(f"posts_questions.{fmt}{gz}"
                    for fmt in FORMATS for gz in ("", ".gz"))
_OWNER = re.compile(r"[A-Za-z0-9_.-]+")
_SKIPPED_TAGS = frozenset({"pre", "script", "style"})
_SPACES = re.compile(r"\s+")
_EXPORT_HINT = ("export bigquery-public-data.stackoverflow.posts_questions "
                "with a header row (at least owner_user_id, title, body, "
                "tags)")


@dataclasses.dataclass
class ReadStats:
  """Counts kept while reading rows."""
  rows: int = 0  # Data rows read (not the header or blank lines).
  skipped_no_owner: int = 0  # Rows with an empty owner_user_id.


@dataclasses.dataclass(frozen=True)
class Question:
  """One question row, raw."""
  line: int  # 1-based line where the row starts.
  owner: str
  title: str
  body: str  # HTML.
  tags: str  # |-separated.


class HeavyHitters:
  """Approximate frequent-item counts in bounded memory (Misra-Gries).

  Keeps at most 2 * capacity counters. When more are needed, the
  (capacity + 1)-th largest count d is subtracted from every counter and
  non-positive ones are dropped (the mergeable-summaries form of
  Misra-Gries: amortized O(1) per item). Each reduction removes at least
  (capacity + 1) * d from the total, so for every item x with true count
  c(x) among `total` items:
    c(x) - error <= estimate(x) <= c(x),  error <= total / (capacity + 1),
  and every item with c(x) > total / (capacity + 1) is kept.
  """

  def __init__(self, capacity: int):
    if capacity < 1:
      raise ValueError(f"capacity must be positive, got {capacity}")
    self.capacity = capacity
    self.total = 0  # Items seen.
    self.error = 0  # Sum of all reductions; bounds the undercount.
    self._counts = collections.Counter()

  def update(self, items: Iterable[str]) -> None:
    """Counts each item once per occurrence."""
    if not isinstance(items, (list, tuple)):
      items = list(items)
    self._counts.update(items)  # Counter.update counts in C.
    self.total += len(items)
    if len(self._counts) > 2 * self.capacity:
      self._reduce()

  def estimate(self, item: str) -> int:
    """Returns a lower bound of item's count, at most `error` below it."""
    return self._counts.get(item, 0)

  def most_common(self, k: int) -> list[tuple[str, int]]:
    """The k items with the largest estimates, ties by item order."""
    return heapq.nsmallest(k, self._counts.items(),
                           key=lambda kv: (-kv[1], kv[0]))

  def __len__(self) -> int:
    return len(self._counts)

  def _reduce(self) -> None:
    delta = heapq.nlargest(self.capacity + 1, self._counts.values())[-1]
    self.error += delta
    self._counts = collections.Counter(
        {item: count - delta for item, count in self._counts.items()
         if count > delta})


class _HtmlText(html.parser.HTMLParser):
  """Text of an HTML fragment: tags become spaces, <pre> etc. dropped."""

  def __init__(self):
    super().__init__(convert_charrefs=True)
    self._parts, self._skip = [], 0

  def text(self, fragment: str) -> str:
    self.feed(fragment)
    self.close()
    return "".join(self._parts)

  def handle_starttag(self, tag, attrs):
    del attrs  # Unused: alt texts, links and image urls are not prose.
    if tag in _SKIPPED_TAGS:
      self._skip += 1
    self._parts.append(" ")

  def handle_endtag(self, tag):
    if tag in _SKIPPED_TAGS and self._skip:
      self._skip -= 1
    self._parts.append(" ")

  def handle_startendtag(self, tag, attrs):
    del tag, attrs  # <br/>, <img .../>: a word break, never content.
    self._parts.append(" ")

  def handle_data(self, data):
    if not self._skip:
      self._parts.append(data)


def html_to_text(fragment: str) -> str:
  """Returns the text of an HTML fragment; see the module docstring."""
  if "<" not in fragment:
    return html.unescape(fragment)
  try:
    return _HtmlText().text(fragment)
  except (AssertionError, ValueError):
    # html.parser gives up on a few malformed constructs; strip tags
    # crudely rather than fail a multi-GB run on one body.
    return html.unescape(re.sub(r"<[^>]*>", " ", fragment))


def tokenize(text: str) -> list[str]:
  """Lowercases text and splits it with TOKEN_PATTERN."""
  return [match[0] for match in TOKEN_PATTERN.findall(text.lower())]


def normalize(title: str, body_html: str) -> list[str]:
  """Tokens of a question: title then the body's text."""
  return tokenize(html.unescape(title) + "\n" + html_to_text(body_html))


def split_tags(tags: str) -> list[str]:
  """Splits |-separated tags; lowercases, drops empties, spaces -> '-'."""
  return [_SPACES.sub("-", tag.strip().lower())
          for tag in tags.split("|") if tag.strip()]


def detect_format(path: str) -> str:
  """Returns "tsv" or "csv" from the extension (.gz ignored) or header.

  Raises:
    DataFormatError: no extension hint and a header with neither tabs nor
      commas.
  """
  stem = path[:-3] if path.endswith(".gz") else path
  ext = os.path.splitext(stem)[1].lower()
  if ext in (".tsv", ".tab"):
    return "tsv"
  if ext == ".csv":
    return "csv"
  try:
    with _open_text(path) as f:
      first = f.readline()
  except UnicodeDecodeError as e:
    raise errors.DataFormatError(
        f"{path} line 1: not valid UTF-8 ({e.reason}); re-export the table "
        "as UTF-8") from None
  return _sniff(first, path)


def read_questions(lines: Iterable[str], name: str, fmt: str = "auto",
                   stats: ReadStats | None = None) -> Iterator[Question]:
  """Parses question rows from lines of a TSV/CSV export, streaming.

  Args:
    lines: the file's lines, as from a file opened with newline="" (so
      quoted fields may hold newlines).
    name: file name for messages.
    fmt: "tsv", "csv" or "auto" (sniff the header line).
    stats: updated with row counts if given.

  Yields:
    Questions with a non-empty owner, in input order.

  Raises:
    DataFormatError: missing columns, a row with the wrong number of
      fields, bad quoting, or an owner id that is not a plain id.
  """
  stats = stats if stats is not None else ReadStats()
  lines, fmt = _resolve_format(lines, fmt, name)
  if fmt not in FORMATS:
    raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
  reader = csv.reader(lines, delimiter="\t" if fmt == "tsv" else ",",
                      quotechar='"', doublequote=True, strict=True)
  with _field_size_limit(MAX_FIELD_CHARS):
    header = _next_row(reader, name, fmt)
    if header is None:
      raise errors.DataFormatError(
          f"{name} is empty; {_EXPORT_HINT}")
    header = [column.strip().lstrip("\ufeff").lower() for column in header]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
      raise errors.DataFormatError(
          f"{name} line 1: header (read as {fmt.upper()}) lacks column"
          f"{'s' if len(missing) > 1 else ''} {', '.join(missing)}; "
          f"{_EXPORT_HINT}")
    owner_i, title_i, body_i, tags_i = (header.index(c)
                                        for c in REQUIRED_COLUMNS)
    width = len(header)
    while True:
      start = reader.line_num + 1
      row = _next_row(reader, name, fmt)
      if row is None:
        return
      if not row:
        continue  # Blank line.
      if len(row) != width:
        raise errors.DataFormatError(
            f"{name} line {start}: {len(row)} fields, the header has "
            f"{width}; fix the row's quoting or delimiters, or re-export "
            f"the table as {fmt.upper()}")
      stats.rows += 1
      owner = row[owner_i].strip()
      if not owner:
        stats.skipped_no_owner += 1
        continue
      if not _OWNER.fullmatch(owner):
        raise errors.DataFormatError(
            f"{name} line {start}: owner_user_id {owner[:40]!r} is not a "
            "plain id (letters, digits, '_', '.', '-'); fix the row or "
            "the export")
      yield Question(start, owner, row[title_i], row[body_i], row[tags_i])


def prepare(input_path: str, shard_dir: str,
            vocab_size: int = DEFAULT_VOCAB_SIZE,
            num_tags: int = DEFAULT_NUM_TAGS, num_clients: int = 0,
            eval_fraction: float = DEFAULT_EVAL_FRACTION, seed: int = 0,
            num_buckets: int = 0) -> shards.Manifest:
  """Reads a posts_questions export and writes per-owner shards.

  Args:
    input_path: TSV/CSV file (optionally .gz), or a directory holding one
      of INPUT_NAMES.
    shard_dir: output directory, replaced atomically.
    vocab_size: number of words in the vocabulary.
    num_tags: number of tags in the tag vocabulary.
    num_clients: keep only the N training owners with most questions; 0
      keeps all.
    eval_fraction: share of owners held out for eval, in [0, 1).
    seed: seed of the held-out choice.
    num_buckets: spill buckets; 0 picks one per BUCKET_TARGET_BYTES of
      input.

  Returns:
    The written manifest; see the module docstring.

  Raises:
    DataPrepError: bad request, missing input.
    DataFormatError: malformed input (names the file and line).
  """
  _check_request(vocab_size, num_tags, num_clients, eval_fraction,
                 num_buckets)
  path = locate_input(input_path)
  source = _source_record(path, vocab_size, num_tags)
  if not num_buckets:
    size = source["files"][0]["bytes"] * (5 if path.endswith(".gz") else 1)
    wanted = max(1, math.ceil(size / BUCKET_TARGET_BYTES))
    num_buckets = min(wanted, max_open_buckets())
    if num_buckets < wanted:
      logging.warning(
          "using %d spill buckets, not %d: the open-file limit (ulimit -n) "
          "is too low; buckets and memory use grow accordingly",
          num_buckets, wanted)
  with _open_text(path) as f:
    return prepare_lines(f, path, shard_dir, fmt=source["format"],
                         vocab_size=vocab_size, num_tags=num_tags,
                         num_clients=num_clients,
                         eval_fraction=eval_fraction, seed=seed,
                         num_buckets=num_buckets, source=source)


def find_or_prepare(input_path: str, shard_dir: str,
                    vocab_size: int = DEFAULT_VOCAB_SIZE,
                    num_tags: int = DEFAULT_NUM_TAGS, num_clients: int = 0,
                    eval_fraction: float = DEFAULT_EVAL_FRACTION,
                    seed: int = 0, num_buckets: int = 0) -> shards.Manifest:
  """Returns existing shards if built from the same request, else builds.

  "Same request" means equal task, partition record and request part of
  the source record (input path, size, mtime and format, vocabulary sizes,
  normalization version). num_buckets does not change the output. Shard
  contents are not hashed here; call shards.verify_shards for that.

  Args/Raises: as for `prepare`.
  """
  _check_request(vocab_size, num_tags, num_clients, eval_fraction,
                 num_buckets)
  wanted_source = _source_record(locate_input(input_path), vocab_size,
                                 num_tags)
  wanted_partition = _partition_record(num_clients, eval_fraction, seed)
  manifest = shards.load_if_matching(
      shard_dir, lambda manifest: (manifest.task == TASK and
                                  manifest.partition == wanted_partition and
                                  {k: manifest.source.get(k) for k in wanted_source} ==
                                  wanted_source))
  if manifest is not None:
    return manifest
  return prepare(input_path, shard_dir, vocab_size, num_tags, num_clients,
                 eval_fraction, seed, num_buckets)


def prepare_lines(lines: Iterable[str], name: str, shard_dir: str, *,
                  fmt: str = "auto", vocab_size: int = DEFAULT_VOCAB_SIZE,
                  num_tags: int = DEFAULT_NUM_TAGS, num_clients: int = 0,
                  eval_fraction: float = DEFAULT_EVAL_FRACTION,
                  seed: int = 0, num_buckets: int = 1,
                  source: dict | None = None) -> shards.Manifest:
  """Like `prepare`, from any stream of lines (e.g. a generator).

  Args:
    lines: the export's lines, as from a file opened with newline="".
    name: input name for messages and the default source record.
    shard_dir: output directory, replaced atomically.
    fmt: "tsv", "csv" or "auto".
    vocab_size, num_tags, num_clients, eval_fraction, seed: see `prepare`.
    num_buckets: number of spill buckets (>= 1); the stream's size is
      unknown here, so pick about input bytes / BUCKET_TARGET_BYTES.
    source: base of the manifest's source record; default {"files":
      [{"path": name}], "format": <the format read>}.

  Returns/Raises: as for `prepare`.
  """
  _check_request(vocab_size, num_tags, num_clients, eval_fraction,
                 num_buckets)
  if num_buckets < 1:
    raise errors.DataPrepError(
        f"--num_buckets={num_buckets} must be at least 1 for a stream")
  if num_buckets > max_open_buckets():
    raise errors.DataPrepError(
        f"--num_buckets={num_buckets} needs more open files than the limit "
        f"allows (at most {max_open_buckets()} buckets); raise `ulimit -n` "
        "or pass fewer --num_buckets")
  shard_dir = os.path.abspath(shard_dir)
  # Fails early (before a long read) where write_shards would fail late.
  shards.check_replaceable(shard_dir)
  parent = os.path.dirname(shard_dir)
  os.makedirs(parent, exist_ok=True)
  spill_dir = tempfile.mkdtemp(
      prefix=f".{os.path.basename(shard_dir)}.spill-", dir=parent)
  try:
    spill = _spill(lines, name, fmt, spill_dir, num_buckets, vocab_size,
                   num_tags, eval_fraction, seed)
    return _write(spill, name, shard_dir, vocab_size, num_tags, num_clients,
                  eval_fraction, seed,
                  source or {"files": [{"path": name}], "format": spill.fmt})
  finally:
    shutil.rmtree(spill_dir, ignore_errors=True)


def locate_input(input_path: str) -> str:
  """Returns the export file: input_path or its one posts_questions file.

  Raises:
    DataPrepError: missing path, or a directory without exactly one of
      INPUT_NAMES.
  """
  path = os.path.abspath(input_path)
  if os.path.isfile(path):
    return path
  if not os.path.isdir(path):
    raise errors.DataPrepError(
        f"Stack Overflow input {path} does not exist; pass --input=<TSV or "
        f"CSV export of posts_questions> ({_EXPORT_HINT})")
  found = [os.path.join(path, n) for n in INPUT_NAMES
           if os.path.isfile(os.path.join(path, n))]
  if len(found) != 1:
    problem = "holds none" if not found else "holds several"
    raise errors.DataPrepError(
        f"directory {path} {problem} of {', '.join(INPUT_NAMES)}; pass "
        "--input=<the export file>")
  return found[0]


def max_open_buckets() -> int:
  """Most buckets the open-file limit allows (at most MAX_BUCKETS)."""
  soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
  if soft == resource.RLIM_INFINITY:
    return MAX_BUCKETS
  return max(1, min(MAX_BUCKETS, soft - _RESERVED_FDS))


def client_id(owner: str) -> str:
  """Client id of an owner: owner_<owner_user_id>."""
  return f"owner_{owner}"


# Streaming pass: read, normalize, count, spill.


@dataclasses.dataclass
class _Spill:
  """What the streaming pass leaves behind."""
  buckets: list[str]  # Bucket file paths, in owner-hash order.
  read: ReadStats
  words: HeavyHitters
  tags: HeavyHitters
  fmt: str


def _resolve_format(lines: Iterable[str], fmt: str, name: str
                    ) -> tuple[Iterator[str], str]:
  """(lines, fmt) with fmt="auto" decided from the header line."""
  lines = iter(lines)
  if fmt != "auto":
    return lines, fmt
  first = next(lines, "")
  if not first:
    raise errors.DataFormatError(f"{name} is empty; {_EXPORT_HINT}")
  return itertools.chain([first], lines), _sniff(first, name)


def _spill(lines: Iterable[str], name: str, fmt: str, spill_dir: str,
           num_buckets: int, vocab_size: int, num_tags: int,
           eval_fraction: float, seed: int) -> _Spill:
  """Streams rows once: counts words/tags and spills rows to buckets.

  Bucket lines are b"<e|t>\t<owner>\t<tags>\t<tokens>\n" (e: held out).
  """
  lines, fmt = _resolve_format(lines, fmt, name)
  stats = ReadStats()
  words = HeavyHitters(HEAVY_HITTERS_FACTOR * vocab_size)
  tags = HeavyHitters(HEAVY_HITTERS_FACTOR * num_tags)
  paths = [os.path.join(spill_dir, f"bucket-{i:04d}")
           for i in range(num_buckets)]
  buffering = max(1 << 13, min(1 << 20, (16 << 20) // num_buckets))
  with contextlib.ExitStack() as stack:
    files = [stack.enter_context(open(p, "wb", buffering=buffering))
             for p in paths]
    for question in read_questions(lines, name, fmt, stats):
      tokens = normalize(question.title, question.body)
      question_tags = split_tags(question.tags)
      held_out = _held_out(question.owner, eval_fraction, seed)
      if not held_out:
        words.update(tokens)
        tags.update(question_tags)
      bucket = (_owner_hash(question.owner) * num_buckets) >> 64
      files[bucket].write(
          b"%s\t%s\t%s\t%s\n" % (
              b"e" if held_out else b"t", question.owner.encode(),
              "|".join(question_tags).encode(), " ".join(tokens).encode()))
  return _Spill(paths, stats, words, tags, fmt)


# Bucket passes: select owners, gather eval, write client shards.


def _write(spill: _Spill, name: str, shard_dir: str, vocab_size: int,
           num_tags: int, num_clients: int, eval_fraction: float, seed: int,
           source: dict) -> shards.Manifest:
  """Groups the buckets by owner and writes the shard directory."""
  counts = _count_owners(spill.buckets, num_clients, eval_fraction)
  if not counts.train_owners:
    raise errors.DataPrepError(
        f"{name} has no training owners ({spill.read.rows} rows, "
        f"{spill.read.skipped_no_owner} without owner, "
        f"{counts.eval_owners} owners held out); pass a larger input or a "
        "smaller --eval_fraction")
  eval_columns, num_eval_owners = _gather_eval(spill.buckets,
                                               counts.eval_selected)
  source = dict(source)
  source.update({
      "normalization": NORMALIZATION,
      "vocab_size": vocab_size,
      "num_tags": num_tags,
      "num_rows": spill.read.rows,
      "num_skipped_no_owner": spill.read.skipped_no_owner,
      "num_questions": counts.questions,
      "num_owners": counts.train_owners + counts.eval_owners,
      "num_held_out_owners": counts.eval_owners,
      "num_eval_owners": num_eval_owners,
      "num_word_tokens": spill.words.total,
      "vocab_error_bound": spill.words.error,
      "tags_error_bound": spill.tags.error,
      "vocab": [w for w, _ in spill.words.most_common(vocab_size)],
      "tags": [t for t, _ in spill.tags.most_common(num_tags)],
  })
  return shards.write_shards(
      shard_dir, TASK, FEATURES_SPEC,
      _clients(spill.buckets, counts.train_selected),
      eval_examples=eval_columns if eval_fraction > 0 else None,
      num_classes=None,
      partition=_partition_record(num_clients, eval_fraction, seed),
      source=source, label_key=None)


@dataclasses.dataclass
class _OwnerCounts:
  questions: int  # Questions with an owner.
  train_owners: int  # Owners not held out.
  eval_owners: int  # Owners held out.
  train_selected: set[bytes] | None  # Owners to write; None: all.
  eval_selected: set[bytes] | None  # Held-out owners to keep; None: all.


def _count_owners(buckets: list[str], num_clients: int,
                  eval_fraction: float) -> _OwnerCounts:
  """Counts owners bucket by bucket; keeps the top N in bounded heaps."""
  num_eval = (round(num_clients * eval_fraction / (1 - eval_fraction))
              if num_clients else 0)
  heaps = {b"t": [], b"e": []}
  limits = {b"t": num_clients, b"e": num_eval}
  questions, owners = 0, {b"t": 0, b"e": 0}
  for path in buckets:
    per_owner = collections.Counter()
    with open(path, "rb") as f:
      for line in f:
        per_owner[line[:line.index(b"\t", 2)]] += 1
    questions += sum(per_owner.values())
    for key, count in per_owner.items():
      kind, owner = key[:1], key[2:]
      owners[kind] += 1
      if not num_clients:
        continue
      heap = heaps[kind]
      # Most questions first, then lowest hash (the output order).
      item = (count, -_owner_hash(owner.decode()), owner)
      if len(heap) < limits[kind]:
        heapq.heappush(heap, item)
      elif heap and item > heap[0]:
        heapq.heapreplace(heap, item)
  selected = ({kind: {owner for _, _, owner in heap}
               for kind, heap in heaps.items()}
              if num_clients else {b"t": None, b"e": None})
  return _OwnerCounts(questions, owners[b"t"], owners[b"e"],
                      selected[b"t"], selected[b"e"])


def _grouped(path: str, kind: bytes, selected: set[bytes] | None
             ) -> list[tuple[str, list[bytes], list[bytes]]]:
  """One bucket's (owner, tokens, tags) of kind, in owner-hash order."""
  groups = {}
  with open(path, "rb") as f:
    for line in f:
      if line[:1] != kind:
        continue
      _, owner, tags, tokens = line[:-1].split(b"\t")
      if selected is not None and owner not in selected:
        continue
      group = groups.get(owner)
      if group is None:
        group = groups[owner] = ([], [])
      group[0].append(tokens)
      group[1].append(tags)
  ordered = sorted((_owner_hash(owner.decode()), owner.decode())
                   for owner in groups)
  return [(owner, *groups[owner.encode()]) for _, owner in ordered]


def _gather_eval(buckets: list[str], selected: set[bytes] | None
                 ) -> tuple[dict[str, np.ndarray], int]:
  tokens, tags, num_owners = [], [], 0
  for path in buckets:
    for _, owner_tokens, owner_tags in _grouped(path, b"e", selected):
      tokens.extend(owner_tokens)
      tags.extend(owner_tags)
      num_owners += 1
  return ({"tokens": _object_array(tokens), "tags": _object_array(tags)},
          num_owners)


def _clients(buckets: list[str], selected: set[bytes] | None
             ) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
  for path in buckets:
    for owner, tokens, tags in _grouped(path, b"t", selected):
      yield client_id(owner), {"tokens": _object_array(tokens),
                               "tags": _object_array(tags)}


def _object_array(values: list[bytes]) -> np.ndarray:
  array = np.empty(len(values), dtype=object)
  array[:] = values
  return array


# Helpers.


def _owner_hash(owner: str) -> int:
  """64-bit hash of an owner id; fixes buckets and the output order."""
  return int.from_bytes(hashlib.blake2b(owner.encode(), digest_size=8,
                                        person=b"so-owner").digest(), "big")


def _held_out(owner: str, eval_fraction: float, seed: int) -> bool:
  if eval_fraction <= 0:
    return False
  digest = hashlib.blake2b(owner.encode(), digest_size=8,
                           key=str(seed).encode(), person=b"so-eval")
  return int.from_bytes(digest.digest(), "big") < eval_fraction * 2.0**64


def _sniff(first_line: str, name: str) -> str:
  if "\t" in first_line:
    return "tsv"
  if "," in first_line:
    return "csv"
  raise errors.DataFormatError(
      f"{name} line 1: cannot tell TSV from CSV (the header has neither "
      "tabs nor commas); name the file .tsv or .csv, or "
      f"{_EXPORT_HINT}")


def _next_row(reader, name: str, fmt: str) -> list[str] | None:
  """reader's next row, None at the end; errors name the row's line."""
  start = reader.line_num + 1
  try:
    return next(reader)
  except StopIteration:
    return None
  except csv.Error as e:
    text = str(e)
    if "unexpected end of data" in text:
      problem = ("unterminated quoted field at end of file (a '\"' opened "
                 "here is never closed)")
    elif "field larger than field limit" in text:
      problem = (f"a field longer than {MAX_FIELD_CHARS} characters, "
                 "probably an unterminated quote")
    else:
      problem = f"malformed {fmt.upper()} ({text})"
    raise errors.DataFormatError(
        f"{name} line {start}: {problem}; fix the quoting or re-export the "
        "table") from None
  except UnicodeDecodeError as e:
    raise errors.DataFormatError(
        f"{name} line {start}: not valid UTF-8 ({e.reason}); re-export the "
        "table as UTF-8") from None
  except (EOFError, zlib.error, gzip.BadGzipFile) as e:
    raise errors.DataFormatError(
        f"{name} line {start}: the gzip stream is truncated or corrupt "
        f"({e}); download or export the file again") from None


@contextlib.contextmanager
def _field_size_limit(limit: int):
  old = csv.field_size_limit(limit)
  try:
    yield
  finally:
    csv.field_size_limit(old)


def _open_text(path: str):
  if path.endswith(".gz"):
    return gzip.open(path, "rt", encoding="utf-8", newline="")
  return open(path, encoding="utf-8", newline="")


def _check_request(vocab_size: int, num_tags: int, num_clients: int,
                   eval_fraction: float, num_buckets: int) -> None:
  if vocab_size < 1:
    raise errors.DataPrepError(
        f"--vocab_size={vocab_size} must be at least 1")
  if num_tags < 1:
    raise errors.DataPrepError(f"--num_tags={num_tags} must be at least 1")
  if num_clients < 0:
    raise errors.DataPrepError(
        f"--num_clients={num_clients} must be 0 (all owners) or more")
  if not (0 <= eval_fraction < 1 and math.isfinite(eval_fraction)):
    raise errors.DataPrepError(
        f"--eval_fraction={eval_fraction} must be in [0, 1), e.g. 0.1")
  if not 0 <= num_buckets <= MAX_BUCKETS:
    raise errors.DataPrepError(
        f"--num_buckets={num_buckets} must be in 0..{MAX_BUCKETS} (0 picks "
        "one per 16 MiB of input)")


def _partition_record(num_clients: int, eval_fraction: float,
                      seed: int) -> dict:
  return {"method": "natural", "unit": "owner", "num_clients": num_clients,
          "eval_fraction": float(eval_fraction), "seed": seed}


def _source_record(path: str, vocab_size: int, num_tags: int) -> dict:
  """The request part of the source record; cheap (no full read)."""
  try:
    stat = os.stat(path)
  except OSError as e:
    raise errors.DataPrepError(
        f"cannot read Stack Overflow input {path} ({e.strerror}); check "
        "that it exists and is readable") from e
  return {"files": [{"path": path, "bytes": stat.st_size,
                     "mtime_ns": stat.st_mtime_ns}],
          "format": detect_format(path), "normalization": NORMALIZATION,
          "vocab_size": vocab_size, "num_tags": num_tags}


# Command line.


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the flags of `python -m data_prep.stackoverflow`."""
  flags.DEFINE_string(
      "input", None,
      "posts_questions export: .tsv/.csv (optionally .gz), or a directory "
      "holding one posts_questions.{tsv,csv}[.gz].",
      required=True, flag_values=flag_values)
  flags.DEFINE_string(
      "output_dir", None,
      "Directory for manifest.json, clients/*.tfrecord and eval.tfrecord; "
      "replaced atomically if it holds earlier shards.",
      required=True, flag_values=flag_values)
  flags.DEFINE_integer("vocab_size", DEFAULT_VOCAB_SIZE,
                       "Most frequent words kept in the vocabulary.",
                       flag_values=flag_values)
  flags.DEFINE_integer("num_tags", DEFAULT_NUM_TAGS,
                       "Most frequent tags kept in the tag vocabulary.",
                       flag_values=flag_values)
  flags.DEFINE_integer(
      "num_clients", 0,
      "Keep the N training owners with the most questions; 0 keeps all.",
      flag_values=flag_values)
  flags.DEFINE_float("eval_fraction", DEFAULT_EVAL_FRACTION,
                     "Share of owners held out for the eval shard.",
                     flag_values=flag_values)
  flags.DEFINE_integer("seed", 0, "Seed of the held-out owner choice.",
                       flag_values=flag_values)
  flags.DEFINE_integer(
      "num_buckets", 0,
      "Spill buckets (memory ~ input / buckets); 0 = one per 16 MiB.",
      flag_values=flag_values)


def make_main(flag_values: flags.FlagValues = flags.FLAGS):
  """Returns an absl main() that prepares Stack Overflow shards."""
  return cli.prepare_main(
      lambda fv: prepare(fv.input, fv.output_dir, fv.vocab_size, fv.num_tags,
                         fv.num_clients, fv.eval_fraction, fv.seed,
                         fv.num_buckets),
      summary, flag_values)


def summary(manifest: shards.Manifest, seconds: float) -> str:
  """One-line description of a finished build."""
  sizes = [info.num_examples for info in manifest.clients]
  source = manifest.source
  eval_questions = manifest.eval.num_examples if manifest.eval else 0
  return (f"{TASK}: {len(sizes)} clients, {sum(sizes)} questions (per "
          f"client min {min(sizes)} / median {statistics.median(sizes):g} "
          f"/ max {max(sizes)}), {eval_questions} eval questions of "
          f"{source['num_eval_owners']} owners, vocab "
          f"{len(source['vocab'])} words / {len(source['tags'])} tags, "
          f"{source['num_skipped_no_owner']} rows without owner skipped -> "
          f"{manifest.shard_dir} in {seconds:.1f} s")


if __name__ == "__main__":
  define_flags()
  entry_point.run(make_main())
