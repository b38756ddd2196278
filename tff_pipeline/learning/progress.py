"""A live progress line: round, loss, accuracy and ETA."""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


def format_seconds(seconds: float) -> str:
  seconds = max(0, int(round(seconds)))
  minutes, secs = divmod(seconds, 60)
  hours, minutes = divmod(minutes, 60)
  if hours:
    return f'{hours}h{minutes:02d}m'
  return f'{minutes}m{secs:02d}s' if minutes else f'{secs}s'


class Progress:
  """Rewrites one terminal line per round; prints plain lines when piped."""

  def __init__(self, total_rounds: int, first_round: int = 1,
               stream: Optional[TextIO] = None, enabled: bool = True):
    self._total = total_rounds
    self._first = first_round
    self._stream = stream or sys.stderr
    self._enabled = enabled
    self._live = enabled and self._stream.isatty()
    self._start = time.monotonic()
    self._last_eval: Optional[dict[str, float]] = None

  def line(self, round_num: int, train: dict[str, float],
           evaluation: Optional[dict[str, float]] = None) -> str:
    if evaluation:
      self._last_eval = evaluation
    done = round_num - self._first + 1
    elapsed = time.monotonic() - self._start
    eta = elapsed / done * (self._total - round_num)
    text = f'round {round_num}/{self._total}  loss {train["loss"]:.4f}'
    # Tasks without an accuracy metric (your own) show the loss only.
    if 'accuracy' in train:
      text += f'  acc {train["accuracy"]:.4f}'
    if self._last_eval and 'accuracy' in self._last_eval:
      text += f'  eval acc {self._last_eval["accuracy"]:.4f}'
    elif self._last_eval and 'loss' in self._last_eval:
      text += f'  eval loss {self._last_eval["loss"]:.4f}'
    return text + f'  {elapsed / done:.1f}s/round  ETA {format_seconds(eta)}'

  def update(self, round_num: int, train: dict[str, float],
             evaluation: Optional[dict[str, float]] = None) -> None:
    if not self._enabled:
      return
    text = self.line(round_num, train, evaluation)
    if self._live:
      self._stream.write('\r\033[K' + text)
      if round_num == self._total:
        self._stream.write('\n')
    else:
      self._stream.write(text + '\n')
    self._stream.flush()
