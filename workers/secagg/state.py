"""What a party has served, persisted so a restart cannot make it serve twice.

A party (pod) records, per run nonce and round, the attempts it began, the
attempt in which it released its masked input and the attempt in which it
revealed shares. Each record is written (fsync, atomic rename) before the
reply that it guards leaves the party, so a crash can only make the party
refuse something it could have served, never serve something twice:

* no new attempt of a round once the masked input of that round is out (a
  second masked sum of the same input with other masks, over another
  participant set, would give the server a difference of two sums);
* attempts only increase, at most `max_attempts` per round;
* at most one unmasking per round.

Fresh keys and self-mask seeds per attempt already make masks unique; this
file is what makes a restarted coordinator (same run nonce, same rounds)
harmless. Keep it on the pod's persistent volume, beside the identity key.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

from workers.secagg import messages

_VERSION = 1
MAX_FILE_BYTES = 64 << 20


class ServedRounds:
  """The served-rounds record; `path=None` keeps it in memory only."""

  def __init__(self, path: str | None = None):
    self._path = path
    self._lock = threading.Lock()
    self._runs: dict[str, dict[str, dict[str, Any]]] = {}
    if path is not None and os.path.exists(path):
      self._runs = self._load(path)

  @staticmethod
  def _load(path: str) -> dict[str, dict[str, dict[str, Any]]]:
    if os.path.getsize(path) > MAX_FILE_BYTES:
      raise ValueError(f'SecAgg state file {path} is larger than '
                       f'{MAX_FILE_BYTES} bytes; archive it and start a new '
                       'run')
    try:
      with open(path, encoding='utf-8') as f:
        data = json.load(f)
      if data.get('version') != _VERSION or not isinstance(data['runs'], dict):
        raise ValueError('unknown version')
      return data['runs']
    except (OSError, ValueError, KeyError, AttributeError) as e:
      # Never start afresh silently: that would re-serve recorded rounds.
      raise ValueError(f'SecAgg state file {path} is unreadable ({e}); '
                       'restore it from backup, or move it away and start a '
                       'new run (new run nonce)') from None

  def _save(self) -> None:
    if self._path is None:
      return
    tmp = self._path + '.tmp'
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, 'w', encoding='utf-8') as f:
      json.dump({'version': _VERSION, 'runs': self._runs}, f,
                separators=(',', ':'))
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, self._path)
    directory = os.open(os.path.dirname(os.path.abspath(self._path)),
                        os.O_RDONLY)
    try:
      os.fsync(directory)
    finally:
      os.close(directory)

  def _record(self, rid: messages.RoundId) -> dict[str, Any]:
    return self._runs.setdefault(rid.run, {}).setdefault(
        str(rid.round), {'attempts': [], 'input': None, 'unmask': None})

  def begin_attempt(self, rid: messages.RoundId, max_attempts: int) -> None:
    with self._lock:
      record = self._record(rid)
      if record['input'] is not None:
        raise messages.Refused(
            f'round {rid.round} of run {rid.run[:8]}: this party already '
            f'sent its masked input (attempt {record["input"]})')
      if record['attempts'] and rid.attempt <= max(record['attempts']):
        raise messages.Refused(
            f'round {rid.round} of run {rid.run[:8]}: attempt {rid.attempt} '
            f'is not after attempt {max(record["attempts"])}')
      if rid.attempt > max_attempts:
        raise messages.Refused(f'round {rid.round}: attempt {rid.attempt} '
                               f'exceeds the limit {max_attempts}')
      record['attempts'].append(rid.attempt)
      self._save()

  def record_input(self, rid: messages.RoundId) -> None:
    with self._lock:
      record = self._record(rid)
      if record['input'] is not None:
        raise messages.Refused(f'round {rid.round}: masked input already '
                               f'sent in attempt {record["input"]}')
      if not record['attempts'] or max(record['attempts']) != rid.attempt:
        raise messages.Refused(f'round {rid.round}: attempt {rid.attempt} '
                               'is not the current one')
      record['input'] = rid.attempt
      self._save()

  def record_unmask(self, rid: messages.RoundId) -> None:
    with self._lock:
      record = self._record(rid)
      if record['unmask'] is not None:
        raise messages.Refused(f'round {rid.round}: shares already revealed '
                               f'in attempt {record["unmask"]}')
      if record['input'] != rid.attempt:
        raise messages.Refused(f'round {rid.round}: no masked input was sent '
                               f'in attempt {rid.attempt}')
      record['unmask'] = rid.attempt
      self._save()

  def served(self, run: str, round_num: int) -> dict[str, Any] | None:
    with self._lock:
      record = self._runs.get(run, {}).get(str(round_num))
      return None if record is None else json.loads(json.dumps(record))
