"""Round checkpoints of the server state (TFF's file program state manager).

`tff.program.FileProgramStateManager` writes each version to a temporary
folder and renames it into place, so a crash mid-save leaves the previous
checkpoint as the latest one.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Optional, TypeVar

import tensorflow_federated as tff

from data_prep.errors import UserError

State = TypeVar('State')

_PREFIX = 'round_'


class RoundCheckpoints:
  """Saves the server state after each completed round."""

  def __init__(self, root_dir: str, keep: int = 3):
    self._root_dir = root_dir
    self._manager = tff.program.FileProgramStateManager(
        root_dir, prefix=_PREFIX, keep_total=keep, keep_first=False)

  @property
  def root_dir(self) -> str:
    return self._root_dir

  def save(self, state: Any, round_num: int) -> None:
    asyncio.run(self._manager.save(state, round_num))

  def latest_round(self) -> Optional[int]:
    versions = asyncio.run(self._manager.get_versions())
    return versions[-1] if versions else None

  def load_latest(self, template: State) -> tuple[State, int]:
    """Returns (state, round) of the newest checkpoint.

    Args:
      template: A state of the same structure (e.g. a fresh `initialize()`).

    Raises:
      UserError: No checkpoint, or one that does not match this config.
    """
    round_num = self.latest_round()
    if round_num is None:
      raise UserError(f'--resume: no checkpoint in {self._root_dir}; run without '
                      '--resume to start fresh')
    try:
      state = asyncio.run(self._manager.load(round_num, template))
    except Exception as e:  # pylint: disable=broad-except
      path = os.path.join(self._root_dir, f'{_PREFIX}{round_num}')
      raise UserError(
          f'--resume: checkpoint {path} cannot be loaded into this config '
          f'({type(e).__name__}: {str(e).splitlines()[0][:200]}); use the '
          'flags of the original run or a new --output_dir') from None
    return state, round_num

  def load_round(self, template: State,
                 round_num: Optional[int] = None) -> tuple[State, int]:
    """Returns (state, round) of round `round_num`'s checkpoint (None: newest).

    Raises:
      UserError: No such checkpoint, or one that does not match the template.
    """
    versions = asyncio.run(self._manager.get_versions()) or []
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
