"""CPU slots shared by processes on one machine, as lock files.

When all pods of a cluster share one machine's cores (workers.local_cluster),
more computing pods than cores only time-share the cores and each runs
slower (10 single-threaded pods on 2 cores: a round 30% slower than 2 at a
time). Edge servers take a slot before calling a pod; because the slots are
machine-wide, a core freed by one edge server is taken by another at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from typing import Iterator


class CpuSlots:
  """`count` slots backed by lock files in `directory`."""

  def __init__(self, directory: str, count: int):
    if count < 1:
      raise ValueError(f'need at least one CPU slot, got {count}')
    os.makedirs(directory, exist_ok=True)
    self._paths = [os.path.join(directory, f'slot-{i}.lock')
                   for i in range(count)]

  @contextlib.contextmanager
  def hold(self, poll: float = 0.005) -> Iterator[int]:
    """Blocks until a slot is free; yields its index while holding it."""
    while True:
      for index, path in enumerate(self._paths):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
          fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
          os.close(fd)
          continue
        try:
          yield index
        finally:
          fcntl.flock(fd, fcntl.LOCK_UN)
          os.close(fd)
        return
      time.sleep(poll)
