"""The pod's mask file: where a party's mask waits for the TF computation.

In the pods, TensorFlow computes the pod's modular sum of its clients'
quantized updates and adds one mask vector that the pod's Python wrote with
`write`: `<root>/secagg/<tag>/pod.mask`, the mask as little-endian int64
values in [0, 2^b) (TF reads it with tf.io.decode_raw, adds it and reduces
mod 2^b). The tag is validated strictly (`messages.RoundId.parse_tag`: hex
run nonce, round and attempt numbers, no dots or slashes) before it becomes a
path component. Directories are 0700 and files 0600; `remove` deletes a
round's mask once its masked input has left the pod.
"""

from __future__ import annotations

import os
import shutil

import numpy as np

from workers.secagg import messages

MASK_DIR = 'secagg'
MASK_FILE = 'pod.mask'


def path(root: str, tag: str) -> str:
  rid = messages.RoundId.parse_tag(tag)
  return os.path.join(root, MASK_DIR, rid.tag, MASK_FILE)


def write(root: str, tag: str, mask: np.ndarray) -> str:
  """Writes `mask` (uint64 values < 2^62) atomically; returns its path."""
  target = path(root, tag)
  os.makedirs(os.path.join(root, MASK_DIR), mode=0o700, exist_ok=True)
  os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
  mask = np.asarray(mask, dtype=np.uint64)
  if mask.size and int(mask.max()) >> 62:
    raise ValueError('mask values must be below 2^62')
  tmp = target + '.tmp'
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
  with os.fdopen(fd, 'wb') as f:
    f.write(mask.astype('<i8').tobytes())
  os.replace(tmp, target)
  return target


def read(root: str, tag: str) -> np.ndarray:
  with open(path(root, tag), 'rb') as f:
    return np.frombuffer(f.read(), '<i8').astype(np.uint64)


def remove(root: str, tag: str) -> None:
  """Deletes the mask directory of `tag` (no error if it is gone)."""
  shutil.rmtree(os.path.dirname(path(root, tag)), ignore_errors=True)
