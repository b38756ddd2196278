"""Training runs as the dashboard sees them: read from their files alone.

A run is a folder with the outputs of `tff_pipeline.train` (README,
"Outputs"): config.json, metrics.jsonl (one JSON row per round) and, once
finished, summary.json. Nothing here needs the trainer to be alive, so
finished runs (copied off a cluster, say) are served the same way.

Bad input is reported, never raised: a missing runs folder, an unreadable
file or a line of metrics.jsonl that is not JSON becomes a `problems` entry
and the rest of the run is still shown. A torn last line (the trainer is
writing it) is not a problem.

Runs trained with a DP aggregator are shown with counts, not client ids:
`public_rows` replaces every list of client ids by its length before
anything leaves the server.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from typing import Any, Optional

CONFIG_FILE = 'config.json'
METRICS_FILE = 'metrics.jsonl'
SUMMARY_FILE = 'summary.json'
# A run with no summary.json is live while its files keep changing: for at
# least this long after the last write, or 3 rounds' worth if rounds are
# slower (the first round also traces the computations).
LIVE_SECONDS = 120.0
_MAX_DEPTH = 2  # --runs/<name> or --runs/<group>/<name>


@dataclasses.dataclass
class Run:
  """One run folder, parsed."""
  name: str  # Path under the runs folder, '/'-separated.
  path: str
  config: Optional[dict[str, Any]]
  summary: Optional[dict[str, Any]]
  rows: list[dict[str, Any]]
  problems: list[str]
  state: str  # 'live', 'finished' or 'stopped'
  updated: float  # Newest mtime of its files.
  version: str  # Changes whenever one of its files does.

  @property
  def private(self) -> bool:
    """Trained under DP (its rows carry the privacy ledger): client ids are
    never shown. A DP run has the ledger in every row, so ids can only
    appear once it does."""
    return 'privacy' in (self.summary or {}) or any('privacy' in r
                                                    for r in self.rows)


def _stat_key(path: str) -> Optional[tuple[int, int, int]]:
  try:
    st = os.stat(path)
  except OSError:
    return None
  return st.st_ino, st.st_size, st.st_mtime_ns


def _read_json(path: str, problems: list[str]) -> Optional[dict[str, Any]]:
  try:
    with open(path, encoding='utf-8') as f:
      value = json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:
    problems.append(f'{os.path.basename(path)} cannot be read: {e}')
    return None
  if not isinstance(value, dict):
    problems.append(f'{os.path.basename(path)} is not a JSON object')
    return None
  return value


def read_rows(path: str) -> tuple[list[dict[str, Any]], list[str]]:
  """The rows of a metrics.jsonl and one problem per bad line.

  A last line without its newline is being written: it is left out
  silently. Rows without an integer `round` are bad lines too.
  """
  rows: list[dict[str, Any]] = []
  problems: list[str] = []
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except FileNotFoundError:
    return rows, problems
  except OSError as e:
    return rows, [f'{METRICS_FILE} cannot be read: {e.strerror}']
  lines = data.split(b'\n')
  torn = lines.pop()  # b'' when the file ends with a newline.
  del torn
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except ValueError as e:
      problems.append(f'{METRICS_FILE} line {number} is not JSON ({e}); '
                      'it is left out')
      continue
    if not isinstance(row, dict) or not isinstance(row.get('round'), int):
      problems.append(f'{METRICS_FILE} line {number} has no "round"; it is '
                      'left out')
      continue
    rows.append(row)
  return rows, problems


def _newest_mtime(path: str) -> float:
  newest = 0.0
  for name in (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, 'checkpoints',
               'tensorboard'):
    try:
      newest = max(newest, os.stat(os.path.join(path, name)).st_mtime)
    except OSError:
      pass
  return newest


def _state(summary: Optional[dict[str, Any]], rows: list[dict[str, Any]],
           updated: float, now: float) -> str:
  if summary is not None:
    return 'finished'
  slowest = max((r.get('round_seconds', 0) + r.get('eval_seconds', 0)
                 for r in rows), default=0.0)
  return 'live' if now - updated < max(LIVE_SECONDS, 3 * slowest) else 'stopped'


def public_rows(rows: list[dict[str, Any]], private: bool
                ) -> list[dict[str, Any]]:
  """Rows for the browser; under DP, client ids become counts.

  Every row gets `clients_count` (and `participants_count` when it has
  participants); a DP run's rows lose `clients`, `participants` and the
  client lists of `failures`.
  """
  out = []
  for row in rows:
    row = dict(row)
    clients = row.get('clients')
    if isinstance(clients, list):
      row['clients_count'] = len(clients)
    participants = row.get('participants')
    if isinstance(participants, list):
      row['participants_count'] = len(participants)
    if private:
      row.pop('clients', None)
      row.pop('participants', None)
      failures = []
      for failure in row.get('failures') or ():
        failure = dict(failure)
        ids = failure.pop('clients', None)
        if isinstance(ids, list):
          failure['clients_count'] = len(ids)
        failures.append(failure)
      if 'failures' in row:
        row['failures'] = failures
    out.append(row)
  return out


class RunsFolder:
  """The runs under one folder, re-read only when their files change."""

  def __init__(self, root: str):
    self.root = root
    self._cache: dict[str, tuple[Any, Run]] = {}
    self._lock = threading.Lock()

  def problem(self) -> Optional[str]:
    """Why the folder shows no runs at all, if it is missing or unreadable."""
    if not os.path.exists(self.root):
      return (f'the runs folder {self.root} does not exist (yet); start a run '
              f'with --output_dir under it, or pass another --runs')
    if not os.path.isdir(self.root):
      return f'--runs={self.root} is not a folder'
    if not os.access(self.root, os.R_OK | os.X_OK):
      return f'the runs folder {self.root} is not readable by this user'
    return None

  def names(self) -> list[str]:
    """Run folders: the root itself, its children and grandchildren."""
    found = []

    def is_run(path: str) -> bool:
      return any(os.path.isfile(os.path.join(path, f))
                 for f in (CONFIG_FILE, METRICS_FILE))

    def walk(path: str, name: str, depth: int) -> None:
      if is_run(path):
        found.append(name or '.')
        return
      if depth == _MAX_DEPTH:
        return
      try:
        children = sorted(os.scandir(path), key=lambda e: e.name)
      except OSError:
        return
      for entry in children:
        if entry.is_dir() and not entry.name.startswith('.'):
          walk(entry.path, f'{name}/{entry.name}' if name else entry.name,
               depth + 1)

    if self.problem() is None:
      walk(self.root, '', 0)
    return found

  def read(self, name: str, now: Optional[float] = None) -> Optional[Run]:
    """The run called `name` (as listed by names()), or None."""
    if name not in self.names():  # Only listed folders: no path tricks.
      return None
    return self._read(name, now)

  def _read(self, name: str, now: Optional[float] = None) -> Run:
    path = self.root if name == '.' else os.path.join(self.root, *name.split('/'))
    key = tuple(_stat_key(os.path.join(path, f))
                for f in (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE))
    now = time.time() if now is None else now
    with self._lock:
      cached = self._cache.get(name)
    if cached is not None and cached[0] == key:
      run = cached[1]
    else:
      problems: list[str] = []
      config = _read_json(os.path.join(path, CONFIG_FILE), problems)
      summary = _read_json(os.path.join(path, SUMMARY_FILE), problems)
      rows, row_problems = read_rows(os.path.join(path, METRICS_FILE))
      problems += row_problems
      if config is None and summary is not None:
        config = summary.get('config')
      run = Run(name=name, path=path, config=config, summary=summary,
                rows=rows, problems=problems, state='', updated=0.0,
                version='-'.join(str(k[2]) if k else '0' for k in key))
      with self._lock:
        self._cache[name] = (key, run)
    run.updated = _newest_mtime(path)
    run.state = _state(run.summary, run.rows, run.updated, now)
    return run

  def all(self) -> list[Run]:
    runs = [self._read(n) for n in self.names()]
    return sorted(runs, key=lambda r: r.updated, reverse=True)
