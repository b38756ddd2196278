"""Held-out quality of each task's default config, against its target.

    python -m bench.quality [--tasks=movielens,shakespeare] [--rounds=N]

Runs `python -m tff_pipeline.train --task=X --output_dir=<tmp>` for each task
(its own process, its default config; only `--data_dir` is added where the
task has no default data, and `--rounds` if given), then prints the final
held-out metrics from the run's summary.json, the rounds run, the wall time
of the whole command (start-up and data preparation included), and whether
the task's target is met.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top
from absl import app
from absl import flags

from tff_pipeline.learning import metrics_io

_SHARED = os.environ.get('TFF_PIPELINE_SHARED_DATA', os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
        __file__)))), 'shared', 'data'))
_DATA_DIRS = {
    'movielens': os.path.join(_SHARED, 'movielens-100k'),
    'stackoverflow_tag': os.path.join(_SHARED, 'stackoverflow-sample'),
    'stackoverflow_nwp': os.path.join(_SHARED, 'stackoverflow-sample'),
}
ALL_TASKS = ('fashion_mnist', 'shakespeare', 'movielens', 'stackoverflow_tag',
             'stackoverflow_nwp')

_TASKS = flags.DEFINE_list('tasks', list(ALL_TASKS), 'Tasks to run, in order.')
_ROUNDS = flags.DEFINE_integer('rounds', None,
                               'Rounds per task (default: the task default).')


@dataclasses.dataclass(frozen=True)
class Target:
  metric: str
  value: float
  higher_is_better: bool
  max_seconds: float

  def describe(self) -> str:
    op = '>=' if self.higher_is_better else '<='
    return f'{self.metric} {op} {self.value:g} in <= {self.max_seconds:.0f}s'

  def met(self, metrics: dict[str, float], seconds: float) -> bool:
    value = metrics.get(self.metric)
    if value is None or seconds > self.max_seconds:
      return False
    return value >= self.value if self.higher_is_better else value <= self.value


# Wall-time targets are for the project's 2-core machine.
TARGETS: dict[str, Target] = {
    'movielens': Target('rmse', 0.95, False, 600.0),
    'shakespeare': Target('accuracy', 0.45, True, 900.0),
}


def run_task(task: str, output_dir: str,
             rounds: Optional[int]) -> tuple[dict[str, Any], float, str]:
  """Trains one task's defaults; (summary.json or {}, wall s, stderr tail)."""
  command = [sys.executable, '-m', 'tff_pipeline.train', f'--task={task}',
             f'--output_dir={output_dir}', '--progress=false']
  if task in _DATA_DIRS:
    command.append(f'--data_dir={_DATA_DIRS[task]}')
  if rounds is not None:
    command.append(f'--rounds={rounds}')
  start = time.monotonic()
  done = subprocess.run(command, capture_output=True, text=True, check=False)
  seconds = time.monotonic() - start
  tail = '\n'.join(done.stderr.strip().splitlines()[-3:])
  path = os.path.join(output_dir, metrics_io.SUMMARY_FILE)
  if done.returncode != 0 or not os.path.exists(path):
    return {}, seconds, tail
  with open(path, encoding='utf-8') as f:
    return json.load(f), seconds, tail


def _format_metrics(metrics: dict[str, float]) -> str:
  return ' '.join(f'{k} {v:.4f}' for k, v in sorted(metrics.items()))


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  unknown = [t for t in _TASKS.value if t not in ALL_TASKS]
  if unknown:
    raise app.UsageError(f'unknown tasks {", ".join(unknown)}; choose from '
                         f'{", ".join(ALL_TASKS)}')
  root = tempfile.mkdtemp(prefix='quality-')
  print(f'outputs in {root}; cores available: {len(os.sched_getaffinity(0))}')
  print('task               rounds  wall_s  held-out metrics  | target')
  failures = 0
  for task in _TASKS.value:
    output_dir = os.path.join(root, task)
    summary, seconds, tail = run_task(task, output_dir, _ROUNDS.value)
    target = TARGETS.get(task)
    if not summary:
      failures += 1
      print(f'{task:18s} failed after {seconds:.0f}s:\n{tail}')
      continue
    final = summary['final_eval']
    rounds = len(metrics_io.read_metrics(output_dir))
    verdict = ''
    if target is not None:
      met = target.met(final, seconds)
      verdict = f'| {target.describe()}: {"met" if met else "NOT met"}'
    print(f'{task:18s} {rounds:6d}  {seconds:6.0f}  '
          f'{_format_metrics(final)}  {verdict}')
  return 1 if failures else 0


if __name__ == '__main__':
  app.run(main)
