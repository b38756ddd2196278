"""Peak resident memory of this process and of helper processes."""

from __future__ import annotations

import resource
from typing import Optional


def self_peak_mb() -> float:
  # ru_maxrss is in KiB on Linux.
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _status_mb(pid: Optional[int], field: str) -> float:
  """A /proc/<pid>/status memory field in MB, 0 if unknown."""
  if pid is None:
    return 0.0
  try:
    with open(f'/proc/{pid}/status', encoding='ascii') as f:
      for line in f:
        if line.startswith(field + ':'):
          return int(line.split()[1]) / 1024.0
  except OSError:
    pass
  return 0.0


def pid_peak_mb(pid: Optional[int]) -> float:
  """VmHWM (peak RSS) of a live process, 0 if unknown."""
  return _status_mb(pid, 'VmHWM')


def pid_current_mb(pid: int) -> float:
  """VmRSS (current RSS) of a live process, 0 if unknown."""
  return _status_mb(pid, 'VmRSS')
