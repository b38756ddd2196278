"""Accuracy and loss curves: `python -m tff_pipeline.report <output_dir>`."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any


from tff_pipeline.learning import metrics_io
from data_prep import entry_point


def plot_curves(rows: Sequence[dict[str, Any]], output_dir: str) -> list[str]:
  """Writes accuracy.png and loss.png (train and eval vs round).

  Args:
    rows: metrics.jsonl rows.
    output_dir: Where the PNG files go.

  Returns:
    The written paths.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  paths = []
  for metric, label in (('accuracy', 'Accuracy'), ('loss', 'Loss')):
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for group, style in (('train', '-'), ('eval', 'o-')):
      points = [(r['round'], r[group][metric]) for r in rows
                if group in r and metric in r[group]]
      if points:
        xs, ys = zip(*points)
        ax.plot(xs, ys, style, label=f'{group} ({"clients" if group == "train" else "held-out"})')
    ax.set_xlabel('Round')
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = os.path.join(output_dir, f'{metric}.png')
    fig.savefig(path)
    plt.close(fig)
    paths.append(path)
  return paths


def main(argv: list[str]) -> int:
  if len(argv) != 2:
    print('usage: python -m tff_pipeline.report <output_dir>', file=sys.stderr)
    return 2
  output_dir = argv[1]
  rows = metrics_io.read_metrics(output_dir)
  if not rows:
    print(f'error: no rounds in {os.path.join(output_dir, metrics_io.METRICS_FILE)}; '
          'is this the --output_dir of a training run?', file=sys.stderr)
    return 2
  for path in plot_curves(rows, output_dir):
    print(path)
  return 0


if __name__ == '__main__':
  entry_point.run(main)
