"""One line per round: round, loss, accuracy, epsilon, failures, seconds, ETA.

On a terminal the line is rewritten in place; anywhere else (a pipe, a log
file, `kubectl logs -f job/coordinator`) each round appends one line, so a
run that has no terminal can still be followed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any, Optional, TextIO

# Metric names as the line shows them; others keep their own name.
_SHORT = {'accuracy': 'acc', 'recall_at_5': 'recall@5'}
_NOT_SHOWN = ('num_examples', 'num_batches')


def format_seconds(seconds: float) -> str:
  seconds = max(0, int(round(seconds)))
  minutes, secs = divmod(seconds, 60)
  hours, minutes = divmod(minutes, 60)
  if hours:
    return f'{hours}h{minutes:02d}m'
  return f'{minutes}m{secs:02d}s' if minutes else f'{secs}s'


def _metrics(values: Mapping[str, Any], skip: tuple[str, ...] = ()) -> str:
  """'loss 0.5000  acc 0.8000 ...': the loss first, then the rest."""
  names = sorted(values, key=lambda name: name != 'loss')
  return '  '.join(f'{_SHORT.get(name, name)} {values[name]:.4f}'
                   for name in names
                   if name not in _NOT_SHOWN + skip
                   and isinstance(values[name], (int, float)))


def _participants(row: Mapping[str, Any]) -> int:
  """How many clients trained in the row's round (DP rows hold counts)."""
  if 'participants_count' in row:
    return row['participants_count']
  return len(row.get('participants', ()))


class Progress:
  """Shows each round's metrics row; see the module docstring."""

  def __init__(self, total_rounds: int, first_round: int = 1,
               stream: Optional[TextIO] = None, enabled: bool = True):
    self._total = total_rounds
    self._first = first_round
    self._stream = stream or sys.stderr
    self._enabled = enabled
    self._live = enabled and self._stream.isatty()
    self._start = time.monotonic()
    self._last_eval: Optional[Mapping[str, Any]] = None

  def line(self, row: Mapping[str, Any]) -> str:
    """The line for a metrics row (as metrics.jsonl holds it)."""
    round_num = row['round']
    if row.get('eval'):
      self._last_eval = row['eval']
    parts = [f'round {round_num}/{self._total}']
    if row.get('train'):
      parts.append(_metrics(row['train']))
    elif 'privacy' in row and _participants(row):
      parts.append('train metrics withheld (DP)')
    else:
      parts.append('no client sampled')
    if self._last_eval:
      # The loss only when there is nothing else (e.g. your own task).
      parts.append('eval ' + (_metrics(self._last_eval, skip=('loss',)) or
                              _metrics(self._last_eval)))
    spent = row.get('privacy')
    if spent:
      epsilon = spent['epsilon']
      parts.append(f'eps {epsilon:.3f}' if isinstance(epsilon, float)
                   else f'eps {epsilon}')
    if 'failures' in row:
      parts.append(f'failures {len(row["failures"])}')
    seconds = row.get('round_seconds', 0.0) + row.get('eval_seconds', 0.0)
    done = round_num - self._first + 1
    elapsed = time.monotonic() - self._start
    eta = elapsed / max(1, done) * (self._total - round_num)
    parts.append(f'{seconds:.1f}s  ETA {format_seconds(eta)}')
    return '  '.join(p for p in parts if p)

  def update(self, row: Mapping[str, Any]) -> None:
    """Shows the round of `row`; a hook for the round loop."""
    if not self._enabled:
      return
    text = self.line(row)
    if self._live:
      self._stream.write('\r\033[K' + text)
      if row['round'] == self._total:
        self._stream.write('\n')
    else:
      self._stream.write(text + '\n')
    self._stream.flush()
