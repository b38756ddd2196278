"""Test helpers: small synthetic idx and CIFAR-10 files, CLIs in a child.

Test-only (BUILD: testonly = True); exercised by the tests that use it.
"""

import os
import pickle
import subprocess
import sys

import numpy as np

from data_prep import idx

_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def split_names(split: str, emnist_subset: str | None = None
                ) -> tuple[str, str]:
  """Returns (images, labels) file names without .gz for a split."""
  if emnist_subset is None:
    stem = {"train": "train", "test": "t10k"}[split]
  else:
    stem = f"emnist-{emnist_subset}-{split}"
  return f"{stem}-images-idx3-ubyte", f"{stem}-labels-idx1-ubyte"


def write_dataset(data_dir: str, rng: np.random.Generator,
                  num_train: int = 300, num_test: int = 50,
                  num_classes: int = 10,
                  emnist_subset: str | None = None
                  ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Writes random 28x28 images and labels as gz idx files.

  With emnist_subset, files get EMNIST names, images are stored transposed
  and `letters` labels are stored 1-based, as in the published files.

  Returns:
    {split: (upright uint8 images, 0-based int64 labels)} as a correct
    loader should return them.
  """
  os.makedirs(data_dir, exist_ok=True)
  expected = {}
  for split, n in (("train", num_train), ("test", num_test)):
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, num_classes, n)
    stored_images = images
    stored_labels = labels
    if emnist_subset is not None:
      stored_images = images.transpose(0, 2, 1)
      stored_labels = labels + (emnist_subset == "letters")
    images_name, labels_name = split_names(split, emnist_subset)
    idx.write_idx(os.path.join(data_dir, images_name + ".gz"),
                  stored_images)
    idx.write_idx(os.path.join(data_dir, labels_name + ".gz"),
                  stored_labels.astype(np.uint8))
    expected[split] = (images, labels)
  return expected


def start_module(module: str, *args: str) -> subprocess.Popen:
  """Starts `python -m module args...` with this process's import path."""
  env = dict(os.environ)
  # Exercise the CLI's own TF log-level default.
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)
  env["PYTHONPATH"] = os.pathsep.join([_PACKAGE_ROOT, *sys.path])
  return subprocess.Popen([sys.executable, "-m", module, *args],
                          cwd=_PACKAGE_ROOT, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def run_module(module: str, *args: str,
               timeout: float = 300) -> subprocess.CompletedProcess:
  """Runs `python -m module args...`; returns its exit code and output."""
  process = start_module(module, *args)
  stdout, stderr = process.communicate(timeout=timeout)
  return subprocess.CompletedProcess(process.args, process.returncode,
                                     stdout, stderr)


def speech(speaker: str, i: int, words: int = 30) -> str:
  """A deterministic speech that names its speaker, > 80 characters."""
  rng = np.random.default_rng([sum(map(ord, speaker)), i])
  vocab = ["thou", "art", "my", "lord", "and", "the", "king", "hath",
           "spoke", "of", "night", "fair", "Verona", "where", "we", "lay"]
  body = " ".join(rng.choice(vocab, words))
  lines = [body[k:k + 40] for k in range(0, len(body), 40)]
  return f"I am {speaker}, speech {i}.\n" + "\n".join(lines)


def write_tinyshakespeare(path: str, num_speakers: int = 30) -> None:
  """tinyshakespeare-style file; speaker k has k + 1 speeches."""
  blocks = []
  for k in range(num_speakers):
    name = f"Speaker {chr(65 + k % 26)}{k // 26}"
    for i in range(k + 1):
      blocks.append(f"{name}:\n{speech(name, i)}")
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n\n".join(blocks) + "\n")
def write_cifar10_python(folder: str, batches: dict) -> None:
  """CIFAR-10's Python version: pickled dicts with bytes keys (protocol 2)."""
  os.makedirs(folder, exist_ok=True)
  for name, (data, labels) in batches.items():
    with open(os.path.join(folder, name), "wb") as f:
      pickle.dump({b"batch_label": name.encode(), b"labels": list(labels),
                   b"data": data,
                   b"filenames": [b"x.png"] * len(labels)}, f, protocol=2)


def write_cifar10_binary(folder: str, batches: dict) -> None:
  """CIFAR-10's binary version: <1 label byte><3072 pixel bytes> records."""
  os.makedirs(folder, exist_ok=True)
  for name, (data, labels) in batches.items():
    with open(os.path.join(folder, name + ".bin"), "wb") as f:
      for row, label in zip(data, labels):
        f.write(bytes([label]) + row.tobytes())


def synthetic_cifar10_batches(per_batch: int = 20, seed: int = 0) -> dict:
  """{batch name: (data uint8 [n, 3072], labels)} for the 6 batch files."""
  rng = np.random.default_rng(seed)
  return {name: (rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 rng.integers(0, 10, per_batch))
          for name in (*[f"data_batch_{i}" for i in range(1, 6)], "test_batch")}
