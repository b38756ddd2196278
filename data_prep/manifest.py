"""The manifest of a shard directory: what each shard holds, and checks.

No TensorFlow here: an edge pod loads and verifies its manifest (and serves
it to its edge server) without importing TF. `data_prep.shards` writes and
reads the shards themselves and re-exports these names.
"""

import dataclasses
import functools
import hashlib
import json
import os
import threading
from typing import Any, Iterable

from data_prep import errors

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
CLIENTS_DIR = "clients"
EVAL_FILE = "eval.tfrecord"
EVAL_ID = "eval"
# Optional nested shard dir of per-client held-out examples.
HELD_OUT_DIR = "held_out"
SHARD_SUFFIX = ".tfrecord"
# In the error a pod's dataset computation raises for a client whose shard it
# does not hold; the runtime matches it to classify the failure.
NOT_HELD_MARKER = "is not held by this edge pod"
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
_HASH_CHUNK = 1 << 20
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



def load_held_out(manifest: Manifest) -> Manifest | None:
  """The per-client held-out shard dir inside `manifest`'s, if it has one."""
  held_out_dir = os.path.join(manifest.shard_dir, HELD_OUT_DIR)
  if not os.path.exists(os.path.join(held_out_dir, MANIFEST_FILE)):
    return None
  return load_manifest(held_out_dir)

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


def verify_eval(manifest: Manifest) -> None:
  """`verify_shards` of the held-out shard (eval.tfrecord) alone, if any."""
  if manifest.eval is None:
    return
  verify_shards(dataclasses.replace(manifest, clients=(),
                                    eval=manifest.eval))


# Shard dirs with at most this many clients are verified whole at start.
VERIFY_AT_START_MAX = 1000


class ShardVerifier:
  """Verifies each shard (`verify_shards`) the first time it is used.

  Hashing every shard when a run or a pod starts costs time in proportion
  to the population; verifying the clients each round samples costs it in
  proportion to the clients that actually train, once each. Thread-safe.
  """

  def __init__(self, manifest: Manifest,
               held_out: "Manifest | None" = None):
    self._manifest = manifest
    self._held_out = held_out
    self._held_out_ids = (frozenset(held_out.client_ids())
                          if held_out is not None else frozenset())
    self._verified: set[str] = set()
    self._lock = threading.Lock()

  def verify(self, client_ids: Iterable[str]) -> int:
    """Verifies the shards of `client_ids` not verified yet; returns how many.

    A client with a held-out shard (HELD_OUT_DIR) has both checked.

    Raises:
      ShardError: unknown client id, missing, truncated or corrupt shard.
    """
    with self._lock:
      todo = sorted(set(client_ids) - self._verified)
    if not todo:
      return 0
    verify_shards(self._manifest, todo)
    held = [c for c in todo if c in self._held_out_ids]
    if held:
      verify_shards(self._held_out, held)
    with self._lock:
      self._verified.update(todo)
    return len(todo)

  def verify_if_few(self, limit: int = VERIFY_AT_START_MAX) -> bool:
    """Verifies every shard now if there are at most `limit` clients.

    Small datasets fail before anything starts, naming the file; large ones
    are verified client by client as they are used, so start-up time does
    not grow with the population beyond `limit` shards.

    Returns:
      Whether it verified everything.
    """
    if len(self._manifest.clients) > limit:
      return False
    self.verify(self._manifest.client_ids())
    return True


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
