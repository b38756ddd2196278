"""Builds per-client shards of CIFAR-10 from its published files.

Usage:
  python -m data_prep.cifar10 --data_dir=DIR --output_dir=DIR
      [--num_clients=100] [--partition=dirichlet] [--partition_alpha=0.5]
      [--seed=0]

Reads either published version (Krizhevsky 2009,
https://www.cs.toronto.edu/~kriz/cifar.html), unpacked into DIR (or into
DIR/cifar-10-batches-py, DIR/cifar-10-batches-bin):
  python   data_batch_1 .. data_batch_5, test_batch: pickled dicts whose
           b'data' is a uint8 [10000, 3072] array (each row a 32x32 image:
           1024 red values, then 1024 green, then 1024 blue, each plane
           row-major) and b'labels' a list of 10000 ints in 0..9;
  binary   data_batch_1.bin .. data_batch_5.bin, test_batch.bin: records of
           1 label byte followed by the same 3072 pixel bytes.
The pickles are read with an unpickler that builds only numpy arrays,
lists, dicts and strings, so a crafted file cannot run code.

Images are stored as uint8 [32, 32, 3] (height, width, RGB) with int64
labels; the training batches are split over --num_clients clients (iid or
Dirichlet label-skewed, FedML's hetero); the test batch is the eval shard.
manifest.source records the per-channel mean and standard deviation of the
training pixels (in [0, 1]), which the task standardizes with.
"""

import dataclasses
import io
import os
import pickle

from absl import flags
import numpy as np

# cli must stay the first data_prep import: it quiets TF's import-time
# logging before shards imports TensorFlow.
from data_prep import cli
from data_prep import entry_point
from data_prep import errors
from data_prep import partition as partition_lib
from data_prep import shards

TASK = "cifar10"
NUM_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)
PIXELS = 32 * 32 * 3
RECORD_BYTES = 1 + PIXELS
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
PYTHON, BINARY = "python", "binary"
_SUBDIRS = {PYTHON: "cifar-10-batches-py", BINARY: "cifar-10-batches-bin"}
_SUFFIX = {PYTHON: "", BINARY: ".bin"}
PARTITIONS = ("iid", "dirichlet")
DIRICHLET_MIN_EXAMPLES = 10
FEATURES_SPEC = {
    "pixels": {"kind": "bytes", "dtype": "uint8", "shape": list(IMAGE_SHAPE)},
    "label": {"kind": "int64", "shape": []},
}
_HOW_TO_GET = ("download cifar-10-python.tar.gz or cifar-10-binary.tar.gz "
               "from https://www.cs.toronto.edu/~kriz/cifar.html, unpack it "
               "and pass the folder as --data_dir")
# What a CIFAR-10 pickle may build: numpy arrays and their dtypes, and bytes
# (protocol 2 from Python 3 spells bytes as _codecs.encode(text, 'latin1')).
_ALLOWED_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray  # uint8 [N, 32, 32, 3].
  labels: np.ndarray  # int64 [N].
  files: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Location:
  folder: str
  version: str  # PYTHON or BINARY.

  def path(self, batch: str) -> str:
    return os.path.join(self.folder, batch + _SUFFIX[self.version])


def locate(data_dir: str) -> Location:
  """Finds the batches of either version in DIR or its standard subfolder.

  The Python version is taken when both are present.

  Raises:
    DataPrepError: neither version is complete there.
  """
  root = os.path.abspath(data_dir)
  if not os.path.isdir(root):
    raise errors.DataPrepError(
        f"CIFAR-10 folder {root} does not exist; {_HOW_TO_GET}")
  for version in (PYTHON, BINARY):
    for folder in (root, os.path.join(root, _SUBDIRS[version])):
      location = Location(folder, version)
      if all(os.path.isfile(location.path(b))
             for b in (*TRAIN_BATCHES, TEST_BATCH)):
        return location
  raise errors.DataPrepError(
      f"{root} holds neither CIFAR-10 version (data_batch_1..5 and "
      "test_batch, or the same with .bin); " + _HOW_TO_GET)


class _ArraysOnly(pickle.Unpickler):
  """Refuses every global but numpy's array reconstruction."""

  def find_class(self, module, name):
    if (module, name) in _ALLOWED_GLOBALS:
      return super().find_class(module, name)
    raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _bad(path: str, problem: str) -> errors.DataFormatError:
  return errors.DataFormatError(
      f"{path} is not a CIFAR-10 batch ({problem}); restore the original "
      f"file ({_HOW_TO_GET})")


def read_python_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [N, 32, 32, 3], labels int64 [N]) of a pickled batch."""
  try:
    with open(path, "rb") as f:
      raw = _ArraysOnly(io.BytesIO(f.read()), encoding="bytes").load()
  except OSError as e:
    raise errors.DataPrepError(f"cannot read {path} ({e.strerror})") from e
  except Exception as e:  # pylint: disable=broad-except  (any bad pickle)
    raise _bad(path, f"{type(e).__name__}: {e}") from None
  if not isinstance(raw, dict):
    raise _bad(path, f"it holds a {type(raw).__name__}, not a dict")
  data = raw.get(b"data", raw.get("data"))
  labels = raw.get(b"labels", raw.get("labels"))
  if data is None or labels is None:
    raise _bad(path, "no 'data' and 'labels' entries")
  data = np.asarray(data)
  labels = np.asarray(labels)
  if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
    raise _bad(path, f"'data' is {data.dtype} {data.shape}, not uint8 "
               f"[N, {PIXELS}]")
  if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
    raise _bad(path, f"'labels' has shape {labels.shape}, not {len(data)} "
               "integers")
  return _decode(path, data, labels.astype(np.int64))


def read_binary_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(images, labels) of a binary batch: records of 1 + 3072 bytes."""
  try:
    raw = np.fromfile(path, dtype=np.uint8)
  except OSError as e:
    raise errors.DataPrepError(f"cannot read {path} ({e.strerror})") from e
  if not raw.size or raw.size % RECORD_BYTES:
    raise _bad(path, f"{raw.size} bytes is not a whole number of "
               f"{RECORD_BYTES}-byte records")
  records = raw.reshape(-1, RECORD_BYTES)
  return _decode(path, records[:, 1:], records[:, 0].astype(np.int64))


def _decode(path: str, data: np.ndarray,
            labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  bad = np.flatnonzero((labels < 0) | (labels >= NUM_CLASSES))
  if bad.size:
    raise _bad(path, f"label {labels[bad[0]]} of image {bad[0]} is outside "
               f"0..{NUM_CLASSES - 1}")
  # Row = [R plane, G plane, B plane], each 32x32 row-major.
  images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels


def load_split(location: Location, split: str) -> Split:
  """The 'train' (5 batches) or 'test' split."""
  batches = TRAIN_BATCHES if split == "train" else (TEST_BATCH,)
  read = read_python_batch if location.version == PYTHON else read_binary_batch
  parts = [read(location.path(b)) for b in batches]
  return Split(images=np.concatenate([p[0] for p in parts]),
               labels=np.concatenate([p[1] for p in parts]),
               files=tuple(location.path(b) for b in batches))


def channel_statistics(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and standard deviation of uint8 images, in [0, 1].

  From each channel's histogram of the 256 values: exact, without a float
  copy of the images.
  """
  values = np.arange(256, dtype=np.float64) / 255.0
  means, stds = [], []
  for channel in range(images.shape[-1]):
    counts = np.bincount(images[..., channel].ravel(), minlength=256)
    total = counts.sum()
    mean = float(counts @ values) / total
    means.append(mean)
    stds.append(float(np.sqrt(counts @ (values - mean) ** 2 / total)))
  return np.array(means), np.array(stds)


def prepare(data_dir: str, shard_dir: str, num_clients: int = 100,
            partition: str = "dirichlet", partition_alpha: float = 0.5,
            seed: int = 0) -> shards.Manifest:
  """Reads CIFAR-10, partitions its training batches and writes shards.

  Raises:
    DataPrepError: a bad request or missing files.
    DataFormatError: a malformed batch file (named).
  """
  _check_request(num_clients, partition, partition_alpha)
  location = locate(data_dir)
  train = load_split(location, "train")
  test = load_split(location, "test")
  if num_clients > len(train.labels):
    raise errors.DataPrepError(
        f"--num_clients={num_clients} exceeds the {len(train.labels)} "
        "training images; use fewer clients")
  rng = np.random.default_rng(seed)
  if partition == "iid":
    parts = partition_lib.iid(len(train.labels), num_clients, rng)
  else:
    parts = partition_lib.dirichlet(
        train.labels, num_clients, partition_alpha, rng,
        min_examples=min(DIRICHLET_MIN_EXAMPLES,
                         len(train.labels) // num_clients))
  width = max(4, len(str(num_clients - 1)))
  clients = ((f"client_{i:0{width}d}",
              {"pixels": train.images[indices], "label": train.labels[indices]})
             for i, indices in enumerate(parts))
  mean, std = channel_statistics(train.images)
  source = _source_record(location)
  source.update({"channel_mean": mean.tolist(), "channel_std": std.tolist()})
  return shards.write_shards(
      shard_dir, TASK, FEATURES_SPEC, clients,
      eval_examples={"pixels": test.images, "label": test.labels},
      num_classes=NUM_CLASSES,
      partition=_partition_record(num_clients, partition, partition_alpha,
                                  seed),
      source=source)


def find_or_prepare(data_dir: str, shard_dir: str, num_clients: int = 100,
                    partition: str = "dirichlet", partition_alpha: float = 0.5,
                    seed: int = 0) -> shards.Manifest:
  """Existing shards if built from the same request and files, else builds.

  "Same files": equal paths, sizes and modification times.
  """
  _check_request(num_clients, partition, partition_alpha)
  wanted_source = _source_record(locate(data_dir))
  wanted_partition = _partition_record(num_clients, partition,
                                       partition_alpha, seed)
  manifest = shards.load_if_matching(
      shard_dir, lambda m: (
          m.task == TASK and m.partition == wanted_partition and
          {k: m.source.get(k) for k in wanted_source} == wanted_source))
  if manifest is not None:
    return manifest
  return prepare(data_dir, shard_dir, num_clients, partition, partition_alpha,
                 seed)


def _check_request(num_clients: int, partition: str,
                   partition_alpha: float) -> None:
  partition_lib.check_split(partition, num_clients, partition_alpha,
                            "CIFAR-10 has no owners")


def _partition_record(num_clients: int, partition: str,
                      partition_alpha: float, seed: int) -> dict:
  return {"method": partition,
          "alpha": float(partition_alpha) if partition == "dirichlet" else None,
          "num_clients": num_clients, "seed": seed}


def _source_record(location: Location) -> dict:
  files = []
  for batch in (*TRAIN_BATCHES, TEST_BATCH):
    stat = os.stat(location.path(batch))
    files.append({"path": location.path(batch), "bytes": stat.st_size,
                  "mtime_ns": stat.st_mtime_ns})
  return {"version": location.version, "files": files}


# Command line.


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the flags of `python -m data_prep.cifar10`."""
  flags.DEFINE_string("data_dir", None,
                      "Folder of the unpacked Python or binary version.",
                      required=True, flag_values=flag_values)
  flags.DEFINE_string(
      "output_dir", None,
      "Directory for manifest.json, clients/*.tfrecord and eval.tfrecord; "
      "replaced atomically if it holds earlier shards.",
      required=True, flag_values=flag_values)
  flags.DEFINE_integer("num_clients", 100, "Clients to split the 50,000 "
                       "training images into.", flag_values=flag_values)
  flags.DEFINE_enum("partition", "dirichlet", list(PARTITIONS),
                    "iid or dirichlet (FedML hetero).",
                    flag_values=flag_values)
  flags.DEFINE_float("partition_alpha", 0.5, "Dirichlet concentration.",
                     flag_values=flag_values)
  flags.DEFINE_integer("seed", 0, "Seed of the partition.",
                       flag_values=flag_values)


def make_main(flag_values: flags.FlagValues = flags.FLAGS):
  return cli.prepare_main(
      lambda fv: prepare(fv.data_dir, fv.output_dir, fv.num_clients,
                         fv.partition, fv.partition_alpha, fv.seed),
      cli.summary, flag_values)


if __name__ == "__main__":
  define_flags()
  entry_point.run(make_main())
