"""Per-client TFRecord shards plus a manifest.json that describes them.

Layout of a shard directory:
  manifest.json                   the Manifest below; written last
  clients/<client_id>.tfrecord    one tf.train.Example per example
  eval.tfrecord                   held-out examples, same format (optional)
  held_out/                       optional: a shard dir (same layout) of
                                  per-client held-out examples, for tasks
                                  evaluated on the clients themselves

Each feature is described by a spec entry, saved in the manifest:
  {"kind": "bytes", "dtype": "uint8", "shape": [28, 28]}  raw array bytes
  {"kind": "int64", "shape": []}                          fixed-size ints
  {"kind": "float", "shape": [3]}                         fixed-size float32
  {"kind": "string", "shape": []}                         one byte string
The reading side (`parse_batch`, `shard_path`) is pure TF so it can run inside
tf.function / TFF computations.
"""

import contextlib
import errno
import fcntl
import json
import math
import os
import re
import shutil
import tempfile
from typing import Any, Callable, Iterable, Iterator

from absl import logging

import numpy as np
import tensorflow as tf

from data_prep import errors
from data_prep.manifest import (  # pylint: disable=unused-import  (re-exported)
    FORMAT_VERSION,
    MANIFEST_FILE,
    CLIENTS_DIR,
    EVAL_FILE,
    EVAL_ID,
    HELD_OUT_DIR,
    SHARD_SUFFIX,
    NOT_HELD_MARKER,
    KINDS,
    BYTES_DTYPES,
    _SPEC_KEYS,
    _HASH_CHUNK,
    _MANIFEST_KEYS,
    ShardInfo,
    Manifest,
    check_features_spec,
    load_manifest,
    load_held_out,
    manifest_to_json,
    manifest_from_json,
    write_manifest,
    verify_shards,
    ShardVerifier,
    verify_eval,
    _manifest_json,
    _write_text,
    _sha256,
    _manifest_from_json,
    _shard_info,
    _expect,
)

_CLIENT_ID = re.compile(r"[A-Za-z0-9_.-]+")
_READ_BATCH = 4096
def write_shards(shard_dir: str,
                 task: str,
                 features_spec: dict,
                 clients: Iterable[tuple[str, dict[str, np.ndarray]]],
                 eval_examples: dict[str, np.ndarray] | None,
                 num_classes: int | None,
                 partition: dict,
                 source: dict,
                 label_key: str | None = "label") -> Manifest:
  """Writes per-client shards, an optional eval shard and manifest.json.

  Everything is written into a temporary sibling directory that replaces
  `shard_dir` only once complete, so readers never see a partial shard dir.
  An existing `shard_dir` is replaced only if it is empty or holds a
  manifest.json (i.e. looks like an earlier shard dir), never an arbitrary
  directory.

  Args:
    shard_dir: output directory.
    task: task name recorded in the manifest (e.g. "fashion_mnist").
    features_spec: {name: spec}; see the module docstring.
    clients: (client_id, {feature name: [n, *shape] array}) pairs; ids must
      match [A-Za-z0-9_.-]+ and be unique.
    eval_examples: held-out examples in the same form, or None.
    num_classes: number of label classes, or None.
    partition: how clients were formed; recorded as-is.
    source: where the data came from; recorded as-is.
    label_key: feature holding int labels, for per-shard histograms.

  Returns:
    The manifest that was written.

  Raises:
    ValueError: bad spec or columns that do not match it.
    DataPrepError: unsafe client id, label out of range, or an output path
      that cannot be replaced.
  """
  spec = check_features_spec(features_spec)
  shard_dir = os.path.abspath(shard_dir)
  check_replaceable(shard_dir)
  parent = os.path.dirname(shard_dir)
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f".{os.path.basename(shard_dir)}.tmp-",
                             dir=parent)
  try:
    # mkdtemp makes the dir owner-only; shards are read by other processes
    # (and users, e.g. workers), so give it a plain directory's mode.
    os.chmod(staging, 0o755)
    os.mkdir(os.path.join(staging, CLIENTS_DIR))
    histogram_key = label_key if num_classes and label_key in spec else None
    infos, seen = [], set()
    for client_id, columns in clients:
      _check_client_id(client_id, seen)
      infos.append(_write_shard(
          staging, f"{CLIENTS_DIR}/{client_id}{SHARD_SUFFIX}", client_id,
          spec, columns, histogram_key, num_classes))
    eval_info = None
    if eval_examples is not None:
      eval_info = _write_shard(staging, EVAL_FILE, EVAL_ID, spec,
                               eval_examples, histogram_key, num_classes)
    manifest = Manifest(shard_dir=shard_dir, task=task, features=spec,
                        num_classes=num_classes, partition=dict(partition),
                        source=dict(source), clients=tuple(infos),
                        eval=eval_info, format_version=FORMAT_VERSION)
    _write_text(os.path.join(staging, MANIFEST_FILE),
                _manifest_json(manifest))
    _move_into_place(staging, shard_dir)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return manifest


@contextlib.contextmanager
def exclusive(shard_dir: str) -> Iterator[None]:
  """Holds an advisory lock on shard_dir while it is looked up or built.

  Two runs sharing a cache (or a trainer and its prepare child) may ask
  for the same shards at once; the second waits and then reuses the
  first's shards instead of racing it to the final rename.
  """
  shard_dir = os.path.abspath(shard_dir)
  parent = os.path.dirname(shard_dir)
  os.makedirs(parent, exist_ok=True)
  lock_path = os.path.join(parent, f".{os.path.basename(shard_dir)}.lock")
  with open(lock_path, "a", encoding="utf-8") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def load_if_matching(shard_dir: str,
                     matches: Callable[[Manifest], bool]) -> Manifest | None:
  """The manifest of an earlier build that `matches` this request, else None.

  Shared by the `find_or_prepare` functions: a missing, unreadable or
  different shard dir is rebuilt by the caller (and said so in the log).
  """
  if not os.path.exists(os.path.join(shard_dir, MANIFEST_FILE)):
    return None
  try:
    manifest = load_manifest(shard_dir)
  except errors.ShardError as e:
    logging.warning("rebuilding %s: %s", shard_dir, e)
    return None
  if not matches(manifest):
    logging.info("rebuilding %s: it was built from a different request",
                 shard_dir)
    return None
  logging.info("reusing shards in %s", shard_dir)
  return manifest


def read_numpy(manifest: Manifest, info: ShardInfo) -> dict[str, np.ndarray]:
  """Eagerly reads a whole shard into numpy arrays, one per feature.

  "string" features come back as object arrays of bytes.

  Raises:
    ShardError: missing or unreadable shard, or an example count that
      disagrees with the manifest.
  """
  path = manifest.path(info)
  hint = errors.rebuild_hint(manifest.shard_dir, manifest.task)
  if not os.path.isfile(path):
    raise errors.ShardError(f"shard {path} is missing (listed in "
                            f"{MANIFEST_FILE}); {hint}")
  spec = manifest.features
  dataset = tf.data.TFRecordDataset(path).batch(_READ_BATCH).map(
      lambda serialized: parse_batch(serialized, spec))
  chunks = {name: [] for name in spec}
  try:
    for batch in dataset:
      for name, tensor in batch.items():
        chunks[name].append(tensor.numpy())
  except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
    first_line = e.message.splitlines()[0] if e.message else type(e).__name__
    raise errors.ShardError(
        f"shard {path} is corrupt ({first_line}); {hint}") from e
  columns = {
      name: (np.concatenate(parts) if parts else _empty_column(spec[name]))
      for name, parts in chunks.items()
  }
  count = len(next(iter(columns.values())))
  if count != info.num_examples:
    raise errors.ShardError(
        f"shard {path} holds {count} examples but {MANIFEST_FILE} says "
        f"{info.num_examples}; {hint}")
  return columns


def parse_batch(serialized: tf.Tensor,
                features_spec: dict) -> dict[str, tf.Tensor]:
  """Parses a [batch] string tensor of serialized tf.train.Examples.

  Graph-safe (no Python-side data access). "bytes" features are decoded to
  [batch, *shape] tensors of their stored dtype (no scaling); "int64" and
  "float" features are [batch, *shape] int64 / float32; "string" features
  are [batch] tf.string.

  Args:
    serialized: rank-1 tf.string tensor.
    features_spec: the spec, e.g. Manifest.features.

  Returns:
    {feature name: tensor}.
  """
  description = {}
  for name, feature in features_spec.items():
    kind = feature["kind"]
    if kind in ("bytes", "string"):
      description[name] = tf.io.FixedLenFeature([], tf.string)
    elif kind == "int64":
      description[name] = tf.io.FixedLenFeature(feature["shape"],
                                                tf.int64)
    else:
      description[name] = tf.io.FixedLenFeature(feature["shape"],
                                                tf.float32)
  parsed = tf.io.parse_example(serialized, description)
  batch_size = tf.shape(serialized, out_type=tf.int32)[:1]
  for name, feature in features_spec.items():
    if feature["kind"] != "bytes":
      continue
    shape = list(feature["shape"])
    flat = tf.io.decode_raw(parsed[name], tf.as_dtype(feature["dtype"]),
                            little_endian=True)
    decoded = tf.reshape(
        flat, tf.concat([batch_size, tf.constant(shape, tf.int32,
                                                 shape=[len(shape)])], 0))
    decoded.set_shape(serialized.shape[:1].concatenate(shape))
    parsed[name] = decoded
  return parsed


def shard_path(shard_dir: str, client_id: tf.Tensor) -> tf.Tensor:
  """Returns shard_dir/clients/<client_id>.tfrecord as a tf.string tensor."""
  prefix = os.path.join(shard_dir, CLIENTS_DIR, "")
  return tf.strings.join([prefix, client_id, SHARD_SUFFIX])


# Writing.


def check_replaceable(shard_dir: str) -> None:
  """Raises DataPrepError if write_shards may not replace shard_dir."""
  if not os.path.lexists(shard_dir):
    return
  if not os.path.isdir(shard_dir) or os.path.islink(shard_dir):
    raise errors.DataPrepError(
        f"output path {shard_dir} exists and is not a directory; pass "
        "another --output_dir or remove it")
  if (os.listdir(shard_dir) and
          not os.path.exists(os.path.join(shard_dir, MANIFEST_FILE))):
    raise errors.DataPrepError(
        f"refusing to replace {shard_dir}: it is not empty and has no "
        f"{MANIFEST_FILE}, so it may not be a shard directory; pass a new "
        "or empty --output_dir, or delete it")


def _check_client_id(client_id: Any, seen: set[str]) -> None:
  if not isinstance(client_id, str) or not _CLIENT_ID.fullmatch(client_id):
    raise errors.DataPrepError(
        f"client id {client_id!r} is not a safe file name; use only "
        "letters, digits, '_', '.' and '-'")
  if client_id in seen:
    raise errors.DataPrepError(
        f"client id {client_id!r} appears twice; client ids must be "
        "unique")
  seen.add(client_id)


def _write_shard(root: str, rel_path: str, client_id: str, spec: dict,
                 columns: dict[str, np.ndarray], histogram_key: str | None,
                 num_classes: int | None) -> ShardInfo:
  """Writes one TFRecord file under root and describes it."""
  num_examples, encoders = _column_encoders(client_id, spec, columns)
  histogram = None
  if histogram_key is not None:
    histogram = _label_histogram(client_id, columns[histogram_key],
                                 num_classes)
  path = os.path.join(root, rel_path)
  with tf.io.TFRecordWriter(path) as writer:
    for i in range(num_examples):
      example = tf.train.Example()
      feature_map = example.features.feature
      for name, encode in encoders:
        encode(feature_map[name], i)
      writer.write(example.SerializeToString())
  return ShardInfo(client_id=client_id, file=rel_path,
                   num_examples=num_examples,
                   sha256=_sha256(path, fsync=True),
                   label_histogram=histogram,
                   num_bytes=os.path.getsize(path))


def _column_encoders(client_id: str, spec: dict,
                     columns: dict[str, np.ndarray]):
  """Validates columns against spec; returns (n, [(name, encode fn)]).

  encode(feature_proto, i) fills a tf.train.Feature with row i.
  """
  if set(columns) != set(spec):
    raise ValueError(f"{client_id}: columns {sorted(columns)} do not "
                     f"match features spec {sorted(spec)}")
  lengths = {name: len(columns[name]) for name in spec}
  if len(set(lengths.values())) != 1:
    raise ValueError(f"{client_id}: columns have different lengths "
                     f"{lengths}")
  num_examples = next(iter(lengths.values()))
  encoders = []
  for name, feature in spec.items():
    kind = feature["kind"]
    if kind == "string":
      rows = [v.encode("utf-8") if isinstance(v, str) else bytes(v)
              for v in columns[name]]
      encoders.append((name, _bytes_encoder(rows)))
      continue
    values = np.asarray(columns[name])
    expected_shape = (num_examples, *feature["shape"])
    width = math.prod(feature["shape"])
    if values.shape != expected_shape:
      raise ValueError(f"{client_id}: feature {name!r} has shape "
                       f"{values.shape}, expected {expected_shape}")
    if kind == "bytes":
      dtype = np.dtype(feature["dtype"]).newbyteorder("<")
      stored = _cast_exactly(client_id, name, values, dtype)
      rows = [row.tobytes() for row in stored]
      encoders.append((name, _bytes_encoder(rows)))
    elif kind == "int64":
      if values.dtype.kind not in "iub":
        raise ValueError(f"{client_id}: int64 feature {name!r} has "
                         f"dtype {values.dtype}")
      rows = _cast_exactly(client_id, name, values, np.int64).reshape(
          num_examples, width).tolist()
      encoders.append((name, _list_encoder(rows, "int64_list")))
    else:
      if values.dtype.kind not in "iubf":
        raise ValueError(f"{client_id}: float feature {name!r} has "
                         f"dtype {values.dtype}")
      rows = values.astype(np.float32).reshape(num_examples,
                                               width).tolist()
      encoders.append((name, _list_encoder(rows, "float_list")))
  return num_examples, encoders


def _bytes_encoder(rows: list[bytes]):
  def encode(feature, i):
    feature.bytes_list.value.append(rows[i])
  return encode


def _list_encoder(rows: list[list], field: str):
  def encode(feature, i):
    getattr(feature, field).value.extend(rows[i])
  return encode


def _cast_exactly(client_id: str, name: str, values: np.ndarray,
                  dtype: np.dtype) -> np.ndarray:
  cast = values.astype(dtype, copy=False)
  if cast is not values and not np.array_equal(
          cast, values, equal_nan=values.dtype.kind == "f"):
    raise ValueError(f"{client_id}: feature {name!r} values do not fit "
                     f"dtype {np.dtype(dtype).name}")
  return cast


def _label_histogram(client_id: str, labels: np.ndarray,
                     num_classes: int) -> list[int]:
  labels = np.asarray(labels).reshape(-1)
  bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
  if bad.size:
    raise errors.DataPrepError(
        f"shard {client_id}: label {labels[bad[0]]} at example {bad[0]} "
        f"is outside 0..{num_classes - 1}; fix the labels or num_classes")
  return np.bincount(labels.astype(np.int64),
                     minlength=num_classes).tolist()


def _move_into_place(staging: str, shard_dir: str) -> None:
  """Renames staging to shard_dir, replacing any old shard_dir."""
  parent = os.path.dirname(shard_dir)
  if not _rename_if_absent(staging, shard_dir):
    # Linux has no portable atomic directory swap; move the old one aside
    # first and put it back if the second rename fails.
    retired = staging + ".old"
    os.rename(shard_dir, retired)
    try:
      os.rename(staging, shard_dir)
    except BaseException:
      os.rename(retired, shard_dir)
      raise
    shutil.rmtree(retired, ignore_errors=True)
  dir_fd = os.open(parent, os.O_RDONLY)
  try:
    os.fsync(dir_fd)
  finally:
    os.close(dir_fd)


def _rename_if_absent(staging: str, shard_dir: str) -> bool:
  """Renames staging to shard_dir unless shard_dir exists (even if it
  appeared since the check: a writer outside `exclusive`)."""
  if os.path.lexists(shard_dir):
    return False
  try:
    os.rename(staging, shard_dir)
  except OSError as e:
    if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
      raise
    return False
  return True


# Reading.


def _empty_column(feature: dict) -> np.ndarray:
  kind = feature["kind"]
  if kind == "string":
    return np.empty((0,), dtype=object)
  dtype = {"bytes": feature.get("dtype"), "int64": np.int64,
           "float": np.float32}[kind]
  return np.empty((0, *feature["shape"]), dtype=dtype)

