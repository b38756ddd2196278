"""Loads MNIST, Fashion-MNIST and EMNIST splits from their published idx files.

The result is always upright uint8 [N, 28, 28] images with 0-based int64
labels, whatever quirks the source format has (EMNIST stores images
transposed and numbers `letters` from 1).
"""

import dataclasses
import os
import re

import numpy as np

from data_prep import errors
from data_prep import idx

TASKS = ("mnist", "fashion_mnist", "emnist")
SPLITS = ("train", "test")
IMAGE_SHAPE = (28, 28)
DEFAULT_DATA_DIRS = {"fashion_mnist": "/usr/share/datasets/fashion-mnist"}
EMNIST_NUM_CLASSES = {
    "digits": 10,
    "letters": 26,
    "balanced": 47,
    "bymerge": 47,
    "byclass": 62,
    "mnist": 10,
}
# `letters` labels run 1..26 in the published files.
_EMNIST_LABEL_OFFSET = {"letters": 1}
_CANONICAL_PREFIX = {"train": "train", "test": "t10k"}
_EMNIST_FILE = re.compile(
    r"^emnist-([a-z]+)-(train|test)-(images-idx3|labels-idx1)-ubyte(\.gz)?$")
_HOW_TO_GET = {
    "fashion_mnist": ("run `apt-get install dataset-fashion-mnist` or pass "
                      "--data_dir=DIR holding the files"),
    "mnist": "download the MNIST idx files and pass --data_dir=DIR",
    "emnist": ("unpack EMNIST's gzip.zip (or put MNIST idx files) in a "
               "directory and pass --data_dir=DIR"),
}


@dataclasses.dataclass(frozen=True)
class ImageSplit:
  """One split of an image classification dataset."""
  images: np.ndarray  # uint8 [N, 28, 28], upright.
  labels: np.ndarray  # int64 [N], 0-based.
  num_classes: int
  files: tuple[str, ...]  # Absolute paths of the idx files read.


@dataclasses.dataclass(frozen=True)
class SplitFiles:
  """Where a split lives and how to decode it; cheap to compute."""
  images_file: str
  labels_file: str
  num_classes: int
  transposed: bool  # Images are stored column-major (EMNIST).
  label_offset: int  # Subtract from stored labels to get 0-based ones.
  emnist_subset: str | None  # EMNIST subset read, None for MNIST layout.


def locate_split(task: str, data_dir: str | None, split: str,
                 emnist_subset: str = "auto") -> SplitFiles:
  """Finds a split's idx files without reading them.

  Args:
    task: one of TASKS.
    data_dir: directory holding the idx files; None uses
      DEFAULT_DATA_DIRS[task] when there is one.
    split: "train" or "test".
    emnist_subset: for task="emnist", one of EMNIST_NUM_CLASSES or "auto"
      (the single subset present in data_dir, else MNIST-named files).

  Returns:
    The located files and decoding parameters.

  Raises:
    ValueError: unknown task or split (a programming error).
    DataPrepError: no or ambiguous data directory / files.
  """
  if task not in TASKS:
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
  data_dir = _data_dir(task, data_dir)
  if task != "emnist":
    return _canonical_files(task, data_dir, split, num_classes=10)
  if emnist_subset != "auto" and emnist_subset not in EMNIST_NUM_CLASSES:
    raise errors.DataPrepError(
        f"unknown EMNIST subset {emnist_subset!r}; pass --emnist_subset "
        f"as one of auto, {', '.join(EMNIST_NUM_CLASSES)}")
  if emnist_subset == "auto":
    present = _emnist_subsets_in(data_dir)
    if len(present) > 1:
      raise errors.DataPrepError(
          f"data directory {data_dir} holds several EMNIST subsets "
          f"({', '.join(present)}); pass --emnist_subset=<one of them>")
    if not present:
      # MNIST-named files: EMNIST's `mnist` subset in its MNIST layout.
      return _canonical_files(task, data_dir, split, num_classes=10)
    emnist_subset = present[0]
  names = [f"emnist-{emnist_subset}-{split}-{kind}-ubyte"
           for kind in ("images-idx3", "labels-idx1")]
  images_file, labels_file = _find_files(task, data_dir, split, names)
  return SplitFiles(images_file, labels_file,
                    num_classes=EMNIST_NUM_CLASSES[emnist_subset],
                    transposed=True,
                    label_offset=_EMNIST_LABEL_OFFSET.get(emnist_subset, 0),
                    emnist_subset=emnist_subset)


def load_split(task: str, data_dir: str | None, split: str,
               emnist_subset: str = "auto") -> ImageSplit:
  """Loads one split of an image dataset as upright images, 0-based labels.

  Args: as for `locate_split`.

  Returns:
    The split, validated: one label per image, 28x28 uint8 images, labels
    in [0, num_classes).

  Raises:
    DataPrepError: missing or ambiguous files (see `locate_split`).
    DataFormatError: unreadable idx files or inconsistent contents.
  """
  where = locate_split(task, data_dir, split, emnist_subset)
  images = idx.read_idx(where.images_file)
  labels = idx.read_idx(where.labels_file)
  _check_shapes(where, images, labels)
  if where.transposed:
    images = np.ascontiguousarray(images.transpose(0, 2, 1))
  labels = labels.astype(np.int64) - where.label_offset
  _check_label_range(where, labels)
  return ImageSplit(images=images, labels=labels,
                    num_classes=where.num_classes,
                    files=(where.images_file, where.labels_file))


def _data_dir(task: str, data_dir: str | None) -> str:
  if data_dir is None:
    data_dir = DEFAULT_DATA_DIRS.get(task)
    if data_dir is None:
      raise errors.DataPrepError(
          f"{task} has no default data directory; "
          f"{_HOW_TO_GET[task]}")
  data_dir = os.path.abspath(data_dir)
  if not os.path.isdir(data_dir):
    raise errors.DataPrepError(
        f"{task} data directory {data_dir} does not exist or is not a "
        f"directory (expected "
        f"{_expected_names(task)}); {_HOW_TO_GET[task]}")
  return data_dir


def _canonical_files(task: str, data_dir: str, split: str,
                     num_classes: int) -> SplitFiles:
  prefix = _CANONICAL_PREFIX[split]
  names = [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]
  images_file, labels_file = _find_files(task, data_dir, split, names)
  return SplitFiles(images_file, labels_file, num_classes=num_classes,
                    transposed=False, label_offset=0, emnist_subset=None)


def _find_files(task: str, data_dir: str, split: str,
                names: list[str]) -> list[str]:
  """Returns data_dir/name(.gz) for each name; gz preferred when both exist."""
  found, missing = [], []
  for name in names:
    candidates = [os.path.join(data_dir, name + ".gz"),
                  os.path.join(data_dir, name)]
    path = next((p for p in candidates if os.path.isfile(p)), None)
    found.append(path)
    if path is None:
      missing.append(name + ".gz")
  if missing:
    raise errors.DataPrepError(
        f"{task} {split} files missing in {data_dir}: {', '.join(missing)}"
        f" (expected {_expected_names(task)}); {_HOW_TO_GET[task]}")
  return found


def _expected_names(task: str) -> str:
  canonical = ("train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
               "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz; "
               ".gz optional")
  if task != "emnist":
    return canonical
  return (f"emnist-<subset>-{{train,test}}-{{images-idx3,labels-idx1}}"
          f"-ubyte.gz with <subset> in {'|'.join(EMNIST_NUM_CLASSES)}, or "
          f"the MNIST names {canonical}")


def _emnist_subsets_in(data_dir: str) -> list[str]:
  subsets = set()
  for name in os.listdir(data_dir):
    match = _EMNIST_FILE.match(name)
    if match and match.group(1) in EMNIST_NUM_CLASSES:
      subsets.add(match.group(1))
  return sorted(subsets)


def _check_shapes(where: SplitFiles, images: np.ndarray,
                  labels: np.ndarray) -> None:
  if images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE:
    raise errors.DataFormatError(
        f"images file {where.images_file} holds {images.dtype} array of "
        f"shape {images.shape}; expected uint8 [N, 28, 28]; check that it "
        "is an images file of this dataset")
  if labels.ndim != 1 or labels.dtype.kind not in "iu":
    raise errors.DataFormatError(
        f"labels file {where.labels_file} holds {labels.dtype} array of "
        f"shape {labels.shape}; expected integer [N]; check that it is a "
        "labels file of this dataset")
  if len(images) != len(labels):
    raise errors.DataFormatError(
        f"images file {where.images_file} holds {len(images)} images but "
        f"labels file {where.labels_file} holds {len(labels)} labels; the "
        "two must come from the same split, re-download them")


def _check_label_range(where: SplitFiles, labels: np.ndarray) -> None:
  bad = np.flatnonzero((labels < 0) | (labels >= where.num_classes))
  if bad.size:
    first = int(bad[0])
    low = where.label_offset
    high = where.num_classes - 1 + where.label_offset
    raise errors.DataFormatError(
        f"labels file {where.labels_file} has label "
        f"{labels[first] + where.label_offset} at record {first} "
        f"({bad.size} bad in total), outside {low}..{high} for "
        f"{where.num_classes} classes; the file is corrupt or belongs to "
        f"another dataset (images file {where.images_file})")
