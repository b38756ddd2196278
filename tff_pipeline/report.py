"""Plots of runs: `python -m tff_pipeline.report RUN [RUN ...] [--out_dir=DIR]`.

For each run (an --output_dir of tff_pipeline.train), into that folder:

- `<metric>.png` for every metric the task reports, train (the sampled
  clients) and eval (held-out): accuracy.png and loss.png always,
  rmse.png for MovieLens, recall_at_5.png for Stack Overflow tags, ...;
- `epsilon.png`: the (epsilon, delta) spent after each round (DP runs);
- `round_seconds.png`: seconds per round (and per evaluation);
- `failures.png`: pods or edge servers left out of each round, and
  `bytes.png`: bytes per tier and direction per round (distributed runs).

With several runs, also a comparison (one line per run) of each of those
in --out_dir (default: `comparison` beside the first run).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top
from absl import flags

from data_prep import entry_point
from data_prep.errors import UserError
from tff_pipeline.learning import metrics_io

_OUT_DIR = flags.DEFINE_string(
    'out_dir', '', 'Where the comparison of several runs goes (default: '
    '`comparison` beside the first run).')

Points = tuple[list[int], list[float]]
# What a plot shows: {line label: (rounds, values)}.
Series = dict[str, Points]
_GROUPS = (('train', 'train (sampled clients)'), ('eval', 'eval (held-out)'))
_NOT_PLOTTED = ('num_examples', 'num_batches')
_LABELS = {'accuracy': 'Accuracy', 'loss': 'Loss', 'rmse': 'RMSE',
           'recall_at_5': 'Recall@5', 'epsilon': 'ε spent (δ fixed)',
           'round_seconds': 'Seconds', 'failures': 'Nodes left out',
           'bytes': 'MB'}


def _number(value: Any) -> float:
  try:
    return float(value)  # 'inf' from a JSON-safe ledger included.
  except (TypeError, ValueError):
    return float('nan')


def _points(rows: Sequence[Mapping[str, Any]], get) -> Points:
  xs, ys = [], []
  for row in rows:
    value = get(row)
    if value is not None:
      xs.append(row['round'])
      ys.append(_number(value))
  return xs, ys


def run_series(rows: Sequence[Mapping[str, Any]]) -> dict[str, Series]:
  """Every plot a run's rows call for: {plot name: its lines}.

  Plots appear only when the rows hold their data: a metric's plot when the
  task reports it, epsilon for DP runs, failures and bytes for distributed
  runs.
  """
  plots: dict[str, Series] = {}
  metrics: list[str] = []
  for row in rows:
    for group, _ in _GROUPS:
      for name, value in (row.get(group) or {}).items():
        if (name not in metrics and name not in _NOT_PLOTTED and
            isinstance(value, (int, float))):
          metrics.append(name)
  for name in metrics:
    plots[name] = {
        label: _points(rows, lambda r, g=group, n=name: (r.get(g) or {}).get(n))
        for group, label in _GROUPS}
  if any('privacy' in r for r in rows):
    delta = next(r['privacy'].get('delta') for r in rows if 'privacy' in r)
    plots['epsilon'] = {f'ε at δ={delta:g}': _points(
        rows, lambda r: (r.get('privacy') or {}).get('epsilon'))}
  plots['round_seconds'] = {
      'round': _points(rows, lambda r: r.get('round_seconds')),
      'evaluation': _points(rows, lambda r: r.get('eval_seconds'))}
  if any('failures' in r for r in rows):
    plots['failures'] = {'pods or edge servers': _points(
        rows, lambda r: len(r['failures']) if 'failures' in r else None)}
  tiers = []
  for row in rows:
    tiers += [k for k in row.get('network') or {}
              if k.endswith('bytes_sent') or k.endswith('bytes_received')
              if k not in tiers]
  if tiers:
    plots['bytes'] = {
        tier.replace('_bytes_', ' ').replace('_', ' '): _points(
            rows, lambda r, t=tier: (None if t not in (r.get('network') or {})
                                     else r['network'][t] / 1e6))
        for tier in tiers}
  for name, series in plots.items():
    plots[name] = {label: points for label, points in series.items()
                   if points[0]}
  return {name: series for name, series in plots.items() if series}


def comparison_series(runs: Mapping[str, Sequence[Mapping[str, Any]]]
                      ) -> dict[str, Series]:
  """One line per run for each plot: held-out metrics (train where never
  evaluated), epsilon, seconds per round, failures and total bytes."""
  plots: dict[str, Series] = {}
  for label, rows in runs.items():
    for name, series in run_series(rows).items():
      if name == 'bytes':
        points = _points(rows, lambda r: sum(
            v for k, v in (r.get('network') or {}).items()
            if 'bytes' in k) / 1e6 if r.get('network') else None)
      elif name == 'round_seconds':
        points = series['round']
      else:
        points = (series.get(_GROUPS[1][1]) or series.get(_GROUPS[0][1]) or
                  next(iter(series.values())))
      plots.setdefault(name, {})[label] = points
  return plots


def draw(plots: Mapping[str, Series], out_dir: str, prefix: str = ''
         ) -> list[str]:
  """Writes <prefix><plot name>.png for each plot; returns the paths."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top

  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for name, series in plots.items():
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for label, (xs, ys) in series.items():
      style = 'o-' if len(xs) < 12 or label.startswith('eval') else '-'
      ax.plot(xs, ys, style, label=label, markersize=3)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.set_xlabel('Round')
    ax.set_ylabel(_LABELS.get(name, name))
    ax.grid(alpha=0.3)
    ax.legend(fontsize='small')
    fig.tight_layout()
    path = os.path.join(out_dir, f'{prefix}{name}.png')
    fig.savefig(path)
    plt.close(fig)
    paths.append(path)
  return paths


def load(run_dir: str) -> list[dict[str, Any]]:
  rows = metrics_io.read_metrics(run_dir)
  if not rows:
    raise UserError(f'no rounds in {os.path.join(run_dir, metrics_io.METRICS_FILE)}'
                    '; is this the --output_dir of a training run?')
  return rows


def report(run_dirs: Sequence[str], out_dir: str = '') -> list[str]:
  """Draws each run's plots in its folder, and a comparison of several.

  Returns:
    The written paths.

  Raises:
    UserError: a folder holds no rounds.
  """
  runs = {run_dir: load(run_dir) for run_dir in run_dirs}
  paths = []
  for run_dir, rows in runs.items():
    paths += draw(run_series(rows), run_dir)
  if len(runs) > 1:
    out_dir = out_dir or os.path.join(
        os.path.dirname(os.path.abspath(run_dirs[0])), 'comparison')
    labels = {os.path.basename(os.path.normpath(d)) or d: rows
              for d, rows in runs.items()}
    if len(labels) < len(runs):  # Same folder names: label by path.
      labels = dict(runs)
    paths += draw(comparison_series(labels), out_dir, prefix='compare_')
  return paths


def main(argv: list[str]) -> int:
  if len(argv) < 2:
    raise UserError('usage: python -m tff_pipeline.report RUN [RUN ...] '
                    '[--out_dir=DIR]: give the --output_dir of a run')
  for path in report(argv[1:], _OUT_DIR.value):
    print(path)
  return 0


if __name__ == '__main__':
  entry_point.run(main)
