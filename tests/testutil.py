"""Shared helpers for tests: paths, slow-test gating, small real datasets."""

from __future__ import annotations

import os
import subprocess
import sys
import unittest
from typing import Optional

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'


def shared_data_dir() -> str:
  """../shared/data beside the repo (or $TFF_PIPELINE_SHARED_DATA)."""
  return os.environ.get('TFF_PIPELINE_SHARED_DATA') or os.path.join(
      os.path.dirname(REPO_ROOT), 'shared', 'data')


def slow(test):
  """Skips `test` unless RUN_SLOW=1 (works under pytest and Bazel alike)."""
  reason = 'slow end-to-end test; set RUN_SLOW=1 to run it'
  return unittest.skipUnless(os.environ.get('RUN_SLOW') == '1', reason)(test)


def run_module(module: str, *args: str, timeout: float = 600,
               env: Optional[dict[str, str]] = None) -> subprocess.CompletedProcess:
  """Runs `python -m module args` from the repo root and captures output."""
  full_env = dict(os.environ)
  full_env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  full_env['PYTHONPATH'] = REPO_ROOT + os.pathsep + full_env.get('PYTHONPATH', '')
  if env:
    full_env.update(env)
  return subprocess.run([sys.executable, '-m', module, *args], cwd=REPO_ROOT,
                        env=full_env, capture_output=True, text=True,
                        timeout=timeout, check=False)


def synthetic_images(num_examples: int, num_classes: int = 10,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Learnable 28x28 images: each class lights a different band of rows."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, num_examples)
  images = rng.integers(0, 60, (num_examples, 28, 28)).astype(np.uint8)
  for i, label in enumerate(labels):
    row = 2 + (label * 24) // num_classes
    images[i, row:row + 2, :] = 255
  return images, labels.astype(np.int64)


def child_pids(pid: int) -> list[int]:
  """Direct children of a live process (empty if it is gone)."""
  try:
    with open(f'/proc/{pid}/task/{pid}/children', encoding='ascii') as f:
      return [int(p) for p in f.read().split()]
  except OSError:
    return []


def descendant_pids(pid: int) -> list[int]:
  """Children, grandchildren, ... of a live process."""
  found, todo = [], [pid]
  while todo:
    children = child_pids(todo.pop())
    found += children
    todo += children
  return found


def pid_alive(pid: int) -> bool:
  """True while the process exists and is not a zombie."""
  try:
    with open(f'/proc/{pid}/stat', encoding='ascii') as f:
      return f.read().split(') ')[1][0] != 'Z'
  except OSError:
    return False
