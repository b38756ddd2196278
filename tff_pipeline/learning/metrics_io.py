"""The run's outputs: metrics.jsonl, TensorBoard events and summary.json."""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np
import tensorflow as tf

METRICS_FILE = 'metrics.jsonl'
SUMMARY_FILE = 'summary.json'
TENSORBOARD_DIR = 'tensorboard'


def _plain(value: Any) -> Any:
  """Converts numpy/TF scalars and containers to JSON-ready values."""
  if isinstance(value, Mapping):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if isinstance(value, (np.generic, np.ndarray)):
    return value.tolist()
  return value


def _number(value: Any) -> Optional[float]:
  """A finite number, or None (JSON-safe 'inf'/'nan' strings included)."""
  if isinstance(value, bool):
    return None
  if isinstance(value, str):
    try:
      value = float(value)
    except ValueError:
      return None
  if isinstance(value, (int, float)) and math.isfinite(value):
    return float(value)
  return None


def flat_metrics(row: Mapping[str, Any]) -> dict[str, float]:
  """A metrics row as flat, finite numbers: what trackers plot per round.

  `train/<metric>`, `eval/<metric>`, `round_seconds`, `eval_seconds`,
  `clients` (how many were sampled), `privacy/epsilon` (and the rest of the
  ledger's numbers), `clip`, and on distributed rounds `failures` (how many
  pods or edge servers were left out), `participants` and `network/<tier
  and direction>` (bytes).
  """
  flat: dict[str, Optional[float]] = {}
  for group in ('train', 'eval', 'privacy', 'network'):
    for name, value in (row.get(group) or {}).items():
      flat[f'{group}/{name}'] = _number(value)
  for name in ('round_seconds', 'eval_seconds', 'clip'):
    if name in row:
      flat[name] = _number(row[name])
  for name in ('clients', 'failures', 'participants'):
    if isinstance(row.get(name), list):
      flat[name] = float(len(row[name]))
  return {k: v for k, v in flat.items() if v is not None}


def read_metrics(output_dir: str) -> list[dict[str, Any]]:
  """All complete rows of metrics.jsonl (a torn last line is dropped)."""
  path = os.path.join(output_dir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  rows = []
  with open(path, encoding='utf-8') as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        break  # A crash mid-write; that round is redone on resume.
  return rows


class MetricsWriter:
  """Appends one row per round to metrics.jsonl and mirrors it to TensorBoard."""

  def __init__(self, output_dir: str, keep_through_round: Optional[int] = None,
               tensorboard: bool = True,
               params: Optional[Mapping[str, Any]] = None):
    """Opens the writers.

    Args:
      output_dir: The run's folder.
      keep_through_round: On resume, the last checkpointed round: rows after
        it are dropped because those rounds are about to be redone.
      tensorboard: Also write TensorBoard events (<output_dir>/tensorboard).
      params: The run's parameters, written to TensorBoard as text once.
    """
    os.makedirs(output_dir, exist_ok=True)
    self._path = os.path.join(output_dir, METRICS_FILE)
    if keep_through_round is None:
      open(self._path, 'w', encoding='utf-8').close()
    else:
      rows = [r for r in read_metrics(output_dir)
              if r['round'] <= keep_through_round]
      tmp = self._path + '.tmp'
      with open(tmp, 'w', encoding='utf-8') as f:
        f.writelines(json.dumps(r) + '\n' for r in rows)
      os.replace(tmp, self._path)
    self._tb = None
    if tensorboard:
      self._tb = tf.summary.create_file_writer(
          os.path.join(output_dir, TENSORBOARD_DIR))
      if params is not None and keep_through_round is None:
        with self._tb.as_default(step=0):
          tf.summary.text('params', json.dumps(_plain(dict(params)), indent=2,
                                               sort_keys=True))

  def write(self, row: Mapping[str, Any]) -> None:
    row = _plain(row)
    with open(self._path, 'a', encoding='utf-8') as f:
      f.write(json.dumps(row) + '\n')
      f.flush()
      os.fsync(f.fileno())
    if self._tb is None:
      return
    with self._tb.as_default(step=row['round']):
      for name, value in flat_metrics(row).items():
        tf.summary.scalar(name, value)
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def library_versions() -> dict[str, str]:
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  import tensorflow_privacy  # pylint: disable=g-import-not-at-top
  return {
      'python': platform.python_version(),
      'tensorflow': tf.__version__,
      'tensorflow_federated': tff.__version__,
      'tensorflow_privacy': getattr(tensorflow_privacy, '__version__', 'unknown'),
      'numpy': np.__version__,
  }


def write_summary(output_dir: str, summary: Mapping[str, Any]) -> str:
  path = os.path.join(output_dir, SUMMARY_FILE)
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(_plain(summary), f, indent=2, sort_keys=True)
  os.replace(tmp, path)
  return path
