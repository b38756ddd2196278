"""Per-client TFRecord shards plus a manifest.json that describes them.

Layout of a shard directory:
  manifest.json                   the Manifest below; written last
  clients/<client_id>.tfrecord    one tf.train.Example per example
  eval.tfrecord                   held-out examples, same format (optional)

Each feature is described by a spec entry, saved in the manifest:
  {"kind": "bytes", "dtype": "uint8", "shape": [28, 28]}  raw array bytes
  {"kind": "int64", "shape": []}                          fixed-size ints
  {"kind": "float", "shape": [3]}                         fixed-size float32
  {"kind": "string", "shape": []}                         one byte string
The reading side (`parse_batch`, `shard_path`) is pure TF so it can run inside
tf.function / TFF computations.
"""

import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from typing import Any, Callable, Iterable

from absl import logging

import numpy as np
import tensorflow as tf

from data_prep import errors

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
CLIENTS_DIR = "clients"
EVAL_FILE = "eval.tfrecord"
EVAL_ID = "eval"
SHARD_SUFFIX = ".tfrecord"
KINDS = ("bytes", "int64", "float", "string")
# dtypes tf.io.decode_raw can decode.
BYTES_DTYPES = ("uint8", "int8", "uint16", "int16", "int32", "int64",
                "float16", "float32", "float64", "bool")
_SPEC_KEYS = {
    "bytes": {"kind", "dtype", "shape"},
    "int64": {"kind", "shape"},
    "float": {"kind", "shape"},
    "string": {"kind", "shape"},
}
_CLIENT_ID = re.compile(r"[A-Za-z0-9_.-]+")
_HASH_CHUNK = 1 << 20
_READ_BATCH = 4096
_MANIFEST_KEYS = ("format_version", "task", "features", "num_classes",
                  "partition", "source", "clients", "eval")


@dataclasses.dataclass(frozen=True)
class ShardInfo:
  """One shard file as recorded in the manifest."""
  client_id: str
  file: str  # Relative to shard_dir.
  num_examples: int
  sha256: str
  label_histogram: list[int] | None
  # Size lets verify_shards flag truncation before hashing. Optional so
  # ShardInfo can still be built from the five spec'd fields.
  num_bytes: int | None = None


@dataclasses.dataclass(frozen=True)
class Manifest:
  """Contents of manifest.json plus the directory it was read from."""
  shard_dir: str  # Absolute; not stored, so a shard dir can be moved.
  task: str
  features: dict
  num_classes: int | None
  partition: dict  # {"method", "alpha", "num_clients", "seed"}.
  source: dict
  clients: tuple[ShardInfo, ...]
  eval: ShardInfo | None
  format_version: int

  def client_ids(self) -> list[str]:
    """Returns client ids in manifest order."""
    return [info.client_id for info in self.clients]

  def client(self, client_id: str) -> ShardInfo:
    """Returns a client's ShardInfo; raises ShardError for unknown ids."""
    info = self._by_id.get(client_id)
    if info is None:
      raise errors.ShardError(
          f"client id {client_id!r} is not in {self.shard_dir}/"
          f"{MANIFEST_FILE} ({len(self.clients)} clients, e.g. "
          f"{self.client_ids()[:3]}); use an id from "
          "Manifest.client_ids() or rebuild the shards with more clients")
    return info

  def path(self, info: ShardInfo) -> str:
    """Returns the absolute path of a shard."""
    return os.path.join(self.shard_dir, info.file)

  @functools.cached_property
  def _by_id(self) -> dict[str, ShardInfo]:
    return {info.client_id: info for info in self.clients}


def check_features_spec(features_spec: dict) -> dict:
  """Validates a features spec; returns a normalized JSON-ready copy.

  Raises:
    ValueError: unknown kind, missing/extra keys, bad dtype or shape.
  """
  if not isinstance(features_spec, dict) or not features_spec:
    raise ValueError(f"features spec must be a non-empty dict, got "
                     f"{features_spec!r}")
  normalized = {}
  for name, feature in features_spec.items():
    if not isinstance(name, str) or not isinstance(feature, dict):
      raise ValueError(f"feature {name!r}: spec must map a name to a "
                       f"dict, got {feature!r}")
    kind = feature.get("kind")
    if kind not in KINDS:
      raise ValueError(f"feature {name!r}: kind {kind!r} is not one of "
                       f"{KINDS}")
    extra = set(feature) - _SPEC_KEYS[kind]
    if extra:
      raise ValueError(f"feature {name!r}: unexpected keys "
                       f"{sorted(extra)} for kind {kind!r}")
    shape = feature.get("shape", [] if kind == "string" else None)
    if (not isinstance(shape, (list, tuple)) or
            not all(isinstance(d, int) and d >= 0 for d in shape)):
      raise ValueError(f"feature {name!r}: shape must be a list of "
                       f"non-negative ints, got {shape!r}")
    if kind == "string" and list(shape):
      raise ValueError(f"feature {name!r}: string features have shape "
                       f"[], got {shape!r}")
    entry = {"kind": kind}
    if kind == "bytes":
      if feature.get("dtype") not in BYTES_DTYPES:
        raise ValueError(f"feature {name!r}: dtype "
                         f"{feature.get('dtype')!r} is not one of "
                         f"{BYTES_DTYPES}")
      entry["dtype"] = feature["dtype"]
    entry["shape"] = list(shape)
    normalized[name] = entry
  return normalized


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
  _check_replaceable(shard_dir)
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


def load_manifest(shard_dir: str) -> Manifest:
  """Reads and validates shard_dir/manifest.json.

  Raises:
    ShardError: missing directory or file, bad JSON, unsupported
      format_version, missing or mistyped keys.
  """
  shard_dir = os.path.abspath(shard_dir)
  path = os.path.join(shard_dir, MANIFEST_FILE)
  if not os.path.isdir(shard_dir):
    raise errors.ShardError(
        f"shard directory {shard_dir} does not exist; build it with "
        f"`python -m data_prep.<task> --output_dir={shard_dir}`")
  try:
    with open(path, encoding="utf-8") as f:
      raw = json.load(f)
  except FileNotFoundError as e:
    raise errors.ShardError(
        f"{path} is missing, so {shard_dir} is not a complete shard "
        f"directory; {errors.rebuild_hint(shard_dir)}") from e
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise errors.ShardError(
        f"{path} is not valid JSON ({e}); "
        f"{errors.rebuild_hint(shard_dir)}") from e
  except OSError as e:
    raise errors.ShardError(
        f"cannot read {path} ({e.strerror}); check its permissions") from e
  task = raw.get("task") if isinstance(raw, dict) else None
  try:
    return _manifest_from_json(raw, shard_dir)
  except (KeyError, TypeError, ValueError) as e:
    raise errors.ShardError(
        f"{path} is malformed ({e}); "
        f"{errors.rebuild_hint(shard_dir, task)}") from e


def manifest_to_json(manifest: Manifest) -> str:
  """The manifest.json text of `manifest`."""
  return _manifest_json(manifest)


def manifest_from_json(raw: Any, shard_dir: str, where: str) -> Manifest:
  """Builds a Manifest from parsed manifest.json content sent by `where`.

  Raises:
    ShardError: naming `where`, when the content is malformed.
  """
  try:
    return _manifest_from_json(raw, shard_dir)
  except (KeyError, TypeError, ValueError) as e:
    raise errors.ShardError(f"manifest from {where} is malformed ({e}); "
                            "rebuild that shard directory") from e


def write_manifest(manifest: Manifest) -> None:
  """Writes manifest.json into manifest.shard_dir (atomically)."""
  path = os.path.join(manifest.shard_dir, MANIFEST_FILE)
  _write_text(path + ".tmp", _manifest_json(manifest))
  os.replace(path + ".tmp", path)


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


def verify_shards(manifest: Manifest,
                  client_ids: Iterable[str] | None = None) -> None:
  """Checks shard files exist and match the manifest's size and sha256.

  Args:
    manifest: a loaded manifest.
    client_ids: clients to check; None checks every client and eval.

  Raises:
    ShardError: unknown client id, missing, truncated or corrupt shard.
  """
  if client_ids is None:
    infos = list(manifest.clients)
    if manifest.eval is not None:
      infos.append(manifest.eval)
  else:
    infos = [manifest.client(c) for c in client_ids]
  hint = errors.rebuild_hint(manifest.shard_dir, manifest.task)
  for info in infos:
    path = manifest.path(info)
    try:
      size = os.path.getsize(path)
    except OSError as e:
      raise errors.ShardError(
          f"shard {path} is missing or unreadable ({e.strerror}; listed "
          f"in {MANIFEST_FILE}); {hint}") from e
    if info.num_bytes is not None and size != info.num_bytes:
      problem = "truncated" if size < info.num_bytes else "oversize"
      raise errors.ShardError(
          f"shard {path} is {problem} ({size} bytes, {MANIFEST_FILE} "
          f"says {info.num_bytes}); {hint}")
    if _sha256(path) != info.sha256:
      raise errors.ShardError(
          f"shard {path} is corrupt (sha256 mismatch with "
          f"{MANIFEST_FILE}); {hint}")


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


def _check_replaceable(shard_dir: str) -> None:
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


def _manifest_json(manifest: Manifest) -> str:
  """Serializes a manifest with one line per client, for readable diffs."""
  head = {
      "format_version": manifest.format_version,
      "task": manifest.task,
      "features": manifest.features,
      "num_classes": manifest.num_classes,
      "partition": manifest.partition,
      "source": manifest.source,
      "eval": (dataclasses.asdict(manifest.eval)
               if manifest.eval is not None else None),
  }
  head_text = json.dumps(head, indent=2)
  client_lines = ",\n".join("    " + json.dumps(dataclasses.asdict(info))
                            for info in manifest.clients)
  return (head_text[:-2] + ',\n  "clients": [\n' + client_lines +
          "\n  ]\n}\n")


def _write_text(path: str, text: str) -> None:
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())


def _move_into_place(staging: str, shard_dir: str) -> None:
  """Renames staging to shard_dir, replacing any old shard_dir."""
  parent = os.path.dirname(shard_dir)
  if not os.path.lexists(shard_dir):
    os.rename(staging, shard_dir)
  else:
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


def _sha256(path: str, fsync: bool = False) -> str:
  digest = hashlib.sha256()
  buffer = bytearray(_HASH_CHUNK)
  view = memoryview(buffer)
  with open(path, "rb", buffering=0) as f:
    while n := f.readinto(buffer):
      digest.update(view[:n])
    if fsync:
      os.fsync(f.fileno())
  return digest.hexdigest()


# Reading.


def _manifest_from_json(raw: Any, shard_dir: str) -> Manifest:
  """Builds a Manifest; raises KeyError/TypeError/ValueError on bad input."""
  if not isinstance(raw, dict):
    raise TypeError(f"top level is {type(raw).__name__}, expected object")
  missing = [key for key in _MANIFEST_KEYS if key not in raw]
  if missing:
    raise KeyError(f"missing keys {missing}")
  if raw["format_version"] != FORMAT_VERSION:
    raise ValueError(f"format_version is {raw['format_version']!r}, this "
                     f"code reads {FORMAT_VERSION}")
  _expect(raw, "task", str)
  _expect(raw, "partition", dict)
  _expect(raw, "source", dict)
  _expect(raw, "clients", list)
  if raw["num_classes"] is not None:
    _expect(raw, "num_classes", int)
  features = check_features_spec(raw["features"])
  clients = tuple(_shard_info(entry, f"clients[{i}]")
                  for i, entry in enumerate(raw["clients"]))
  ids = [info.client_id for info in clients]
  if len(set(ids)) != len(ids):
    raise ValueError("duplicate client ids")
  eval_info = (_shard_info(raw["eval"], "eval")
               if raw["eval"] is not None else None)
  return Manifest(shard_dir=shard_dir, task=raw["task"], features=features,
                  num_classes=raw["num_classes"],
                  partition=raw["partition"], source=raw["source"],
                  clients=clients, eval=eval_info,
                  format_version=raw["format_version"])


def _shard_info(entry: Any, where: str) -> ShardInfo:
  if not isinstance(entry, dict):
    raise TypeError(f"{where} is {type(entry).__name__}, expected object")
  for key in ("client_id", "file", "num_examples", "sha256",
              "label_histogram"):
    if key not in entry:
      raise KeyError(f"{where} lacks {key!r}")
  _expect(entry, "client_id", str, where)
  _expect(entry, "file", str, where)
  _expect(entry, "num_examples", int, where)
  _expect(entry, "sha256", str, where)
  file = entry["file"]
  # Shard paths must stay inside shard_dir.
  if (os.path.isabs(file) or ".." in file.split("/") or
          not file.endswith(SHARD_SUFFIX)):
    raise ValueError(f"{where}.file {file!r} is not a relative "
                     f"{SHARD_SUFFIX} path inside the shard directory")
  histogram = entry["label_histogram"]
  if histogram is not None and not (
          isinstance(histogram, list) and
          all(isinstance(c, int) for c in histogram)):
    raise TypeError(f"{where}.label_histogram must be a list of ints")
  num_bytes = entry.get("num_bytes")
  if num_bytes is not None and not isinstance(num_bytes, int):
    raise TypeError(f"{where}.num_bytes must be an int")
  return ShardInfo(client_id=entry["client_id"], file=file,
                   num_examples=entry["num_examples"],
                   sha256=entry["sha256"], label_histogram=histogram,
                   num_bytes=num_bytes)


def _expect(obj: dict, key: str, kind: type, where: str = "manifest") -> None:
  # bool is an int subclass; a boolean count is always a mistake.
  if not isinstance(obj[key], kind) or isinstance(obj[key], bool):
    raise TypeError(f"{where}.{key} is {type(obj[key]).__name__}, "
                    f"expected {kind.__name__}")


def _empty_column(feature: dict) -> np.ndarray:
  kind = feature["kind"]
  if kind == "string":
    return np.empty((0,), dtype=object)
  dtype = {"bytes": feature.get("dtype"), "int64": np.int64,
           "float": np.float32}[kind]
  return np.empty((0, *feature["shape"]), dtype=dtype)

