"""Round checkpoints of the server state (TFF's file program state manager).

`tff.program.FileProgramStateManager` writes each version to a temporary
folder `round_N_tempXXXX` and renames it to `round_N`, so a crash mid-save
leaves the previous checkpoint as the latest one. On top of it:
  * leftover temporary folders of a killed save are removed at start;
  * every file and folder of a saved version, and the folder holding it, are
    fsynced before the save returns (the rename alone survives a process
    kill, not a power loss);
  * resuming tries the newest complete `round_N` first and falls back to
    older ones, with a warning, if it does not load (corrupted or truncated).

Beside the states, the folder holds what resuming needs and a run must not
release: each checkpointed round's metrics row (`row_<round>.json`, written
before the state, so a crash between the checkpoint and metrics.jsonl loses
no row) and, in DP runs, the secret key of the client sampler
(`sampler.key`, mode 0600). Both are written to a temporary file and renamed
into place.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sys
from typing import Any, Optional, TypeVar

from absl import logging
import tensorflow_federated as tff

from data_prep.errors import UserError
from tff_pipeline.learning import sampling

State = TypeVar('State')

_PREFIX = 'round_'
COMPLETE = re.compile(r'round_(\d+)')
_TEMP = re.compile(r'round_\d+_temp\d+')


def _fsync(path: str) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def _fsync_tree(path: str) -> None:
  """fsyncs every file and folder under `path`, then `path`'s parent."""
  for root, _, files in os.walk(path, topdown=False):
    for name in files:
      _fsync(os.path.join(root, name))
    _fsync(root)
  _fsync(os.path.dirname(os.path.abspath(path)))


_ROW = re.compile(r'^row_(\d+)\.json$')
SAMPLER_KEY_FILE = 'sampler.key'


def _write_atomically(path: str, data: bytes, mode: int = 0o644) -> None:
  tmp = f'{path}.tmp{os.getpid()}'
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  dir_fd = os.open(os.path.dirname(path) or '.', os.O_RDONLY)
  try:
    os.fsync(dir_fd)
  finally:
    os.close(dir_fd)


def _json_default(value: Any) -> Any:
  if hasattr(value, 'tolist'):  # numpy scalars and arrays
    return value.tolist()
  raise TypeError(f'{type(value).__name__} is not JSON serializable')


class RoundCheckpoints:
  """Saves the server state after each completed round."""

  def __init__(self, root_dir: str, keep: int = 3):
    self._root_dir = root_dir
    self._manager = tff.program.FileProgramStateManager(
        root_dir, prefix=_PREFIX, keep_total=keep, keep_first=False)
    for name in os.listdir(root_dir):
      if _TEMP.fullmatch(name):  # A save killed half-way.
        logging.warning('removing %s, left by a save that did not finish',
                        os.path.join(root_dir, name))
        shutil.rmtree(os.path.join(root_dir, name), ignore_errors=True)

  @property
  def root_dir(self) -> str:
    return self._root_dir

  def save(self, state: Any, round_num: int,
           row: Optional[dict[str, Any]] = None) -> None:
    """Saves the state after `round_num` (and that round's metrics row)."""
    if row is not None:
      os.makedirs(self._root_dir, exist_ok=True)
      _write_atomically(self._row_path(round_num),
                        json.dumps(row, default=_json_default).encode())
    asyncio.run(self._manager.save(state, round_num))
    _fsync_tree(os.path.join(self._root_dir, f'{_PREFIX}{round_num}'))
    if row is not None:
      kept = set(self.rounds())
      for name in os.listdir(self._root_dir):
        match = _ROW.match(name)
        if match and int(match.group(1)) not in kept:
          os.remove(os.path.join(self._root_dir, name))

  def rounds(self) -> list[int]:
    """Complete versions, oldest first."""
    return sorted(int(m.group(1)) for m in map(
        COMPLETE.fullmatch, os.listdir(self._root_dir)) if m)

  def _row_path(self, round_num: int) -> str:
    return os.path.join(self._root_dir, f'row_{round_num}.json')

  def saved_row(self, round_num: int) -> Optional[dict[str, Any]]:
    """The metrics row saved with round `round_num`'s state, if any."""
    try:
      with open(self._row_path(round_num), encoding='utf-8') as f:
        return json.load(f)
    except FileNotFoundError:
      return None

  def sampler_key(self, create: bool) -> bytes:
    """The secret key of a DP run's client sampler.

    Args:
      create: True for a new run (a fresh key from `secrets` replaces any),
        False to resume (the key must be there).

    Raises:
      UserError: resuming without the key.
    """
    path = os.path.join(self._root_dir, SAMPLER_KEY_FILE)
    if create:
      key = sampling.new_secret_key()
      os.makedirs(self._root_dir, exist_ok=True)
      _write_atomically(path, key.hex().encode() + b'\n', mode=0o600)
      return key
    try:
      with open(path, encoding='ascii') as f:
        return bytes.fromhex(f.read().strip())
    except (FileNotFoundError, ValueError):
      raise UserError(
          f'--resume: {path} (the secret client-sampler key of this DP run) '
          'is missing or damaged; the run cannot continue its sampling - '
          'start a new run in another --output_dir') from None

  def latest_round(self) -> Optional[int]:
    rounds = self.rounds()
    return rounds[-1] if rounds else None

  def load_latest(self, template: State) -> tuple[State, int]:
    """Returns (state, round) of the newest checkpoint that loads.

    A newer one that does not load (truncated, corrupted) is skipped with a
    warning: the run then redoes the rounds after the one loaded.

    Args:
      template: A state of the same structure (e.g. a fresh `initialize()`).

    Raises:
      UserError: No checkpoint, or none that loads into this config.
    """
    rounds = self.rounds()
    if not rounds:
      raise UserError(f'--resume: no checkpoint in {self._root_dir}; run without '
                      '--resume to start fresh')
    errors = []
    for round_num in reversed(rounds):
      path = os.path.join(self._root_dir, f'{_PREFIX}{round_num}')
      try:
        state = asyncio.run(self._manager.load(round_num, template))
      except Exception as e:  # pylint: disable=broad-except
        errors.append(f'{path} ({type(e).__name__}: '
                      f'{str(e).splitlines()[0][:200] if str(e) else ""})')
        logging.warning('checkpoint %s does not load (%s); trying the one '
                        'before it', path, errors[-1])
        continue
      if errors:
        print(f'warning: --resume: skipped {len(errors)} checkpoint(s) that '
              f'do not load ({"; ".join(errors)}); resuming after round '
              f'{round_num}', file=sys.stderr, flush=True)
      return state, round_num
    raise UserError(
        f'--resume: no checkpoint in {self._root_dir} loads into this config '
        f'({"; ".join(errors)}); use the flags of the original run or a new '
        '--output_dir')

  def load_round(self, template: State,
                 round_num: Optional[int] = None) -> tuple[State, int]:
    """Returns (state, round) of round `round_num`'s checkpoint (None: newest).

    Raises:
      UserError: No such checkpoint, or one that does not match the template.
    """
    versions = self.rounds()
    if round_num is None:
      if not versions:
        raise UserError(f'no checkpoint in {self._root_dir}; is it the '
                        'checkpoints/ folder of a run that finished a round?')
      round_num = versions[-1]
    if round_num not in versions:
      raise UserError(f'no checkpoint of round {round_num} in {self._root_dir} '
                      f'(it keeps rounds {", ".join(map(str, versions)) or "none"}'
                      '); choose one of those')
    try:
      state = asyncio.run(self._manager.load(round_num, template))
    except Exception as e:  # pylint: disable=broad-except
      path = os.path.join(self._root_dir, f'{_PREFIX}{round_num}')
      raise UserError(
          f'checkpoint {path} cannot be loaded into the run\'s config '
          f'({type(e).__name__}: {str(e).splitlines()[0][:200]}); was '
          'config.json edited?') from None
    return state, round_num
