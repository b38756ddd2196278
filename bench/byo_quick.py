"""Quick runs of the bring-your-own tasks, with their accuracy and export time.

    python -m bench.byo_quick [--rounds=10] [--resnet_rounds=0]

1. `--task=csv` on Fashion-MNIST written as a CSV file: 12,000 training
   images as rows (784 pixel columns, a label column, a `site` column
   dealing them round-robin to 20 sites) and 2,000 test images as
   `--eval_data`; the default `mlp`, 10 sites a round.
2. `--task=cifar10` on SYNTHETIC data in CIFAR-10's binary format (no copy
   of CIFAR-10 is here): 5,000 training and 1,000 test images, each its
   class's colour plus a class-specific stripe and noise; the `cnn`, 20
   clients iid, 10 a round. With --resnet_rounds=N also `resnet18` for N
   rounds (slow on CPU).
Each runs as `python -m tff_pipeline.train` in its own process; printed:
final held-out accuracy, wall time of the command, and the time the
model export (SavedModel + TFLite) took.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top
from absl import app
from absl import flags
import numpy as np

from data_prep import image_datasets

_ROUNDS = flags.DEFINE_integer('rounds', 10, 'Rounds of each quick run.')
_RESNET_ROUNDS = flags.DEFINE_integer(
    'resnet_rounds', 0, 'Rounds of ResNet-18 on the synthetic CIFAR-10 '
    '(0: skip).')
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_fashion_mnist_csv(folder: str) -> tuple[str, str]:
  train = image_datasets.load_split('fashion_mnist', None, 'train')
  test = image_datasets.load_split('fashion_mnist', None, 'test')
  header = 'site,' + ','.join(f'p{i}' for i in range(784)) + ',label\n'
  paths = []
  for name, split, count in (('train.csv', train, 12000),
                             ('eval.csv', test, 2000)):
    path = os.path.join(folder, name)
    with open(path, 'w', encoding='utf-8') as f:
      f.write(header)
      for i in range(count):
        pixels = ','.join(map(str, split.images[i].ravel()))
        f.write(f'site{i % 20:02d},{pixels},{split.labels[i]}\n')
    paths.append(path)
  return paths[0], paths[1]


def write_synthetic_cifar10(folder: str, seed: int = 0) -> None:
  """Binary-version batches of learnable synthetic images."""
  rng = np.random.default_rng(seed)
  colours = rng.integers(40, 216, (10, 3))

  def images(n):
    labels = rng.integers(0, 10, n)
    pixels = rng.normal(0, 40, (n, 32, 32, 3))
    pixels += colours[labels][:, None, None, :]
    for i, label in enumerate(labels):
      pixels[i, 3 * label:3 * label + 3, :, :] += 60  # A stripe per class.
    pixels = np.clip(pixels, 0, 255).astype(np.uint8)
    return pixels.transpose(0, 3, 1, 2).reshape(n, 3072), labels

  os.makedirs(folder, exist_ok=True)
  for name, n in [(f'data_batch_{i}', 1000) for i in range(1, 6)] + [
      ('test_batch', 1000)]:
    data, labels = images(n)
    with open(os.path.join(folder, name + '.bin'), 'wb') as f:
      for row, label in zip(data, labels):
        f.write(bytes([label]) + row.tobytes())


def train(name: str, root: str, *args: str) -> dict:
  output_dir = os.path.join(root, name)
  start = time.monotonic()
  env = dict(os.environ, PYTHONPATH=_REPO,
             TFF_PIPELINE_CACHE=os.path.join(root, 'cache'))
  result = subprocess.run(
      [sys.executable, '-m', 'tff_pipeline.train', f'--output_dir={output_dir}',
       '--progress=false', *args], cwd=_REPO, env=env, capture_output=True,
      text=True, check=False)
  wall = time.monotonic() - start
  if result.returncode:
    print(f'{name}: failed\n{result.stderr[-3000:]}')
    return {}
  with open(os.path.join(output_dir, 'summary.json'), encoding='utf-8') as f:
    summary = json.load(f)
  model = summary.get('model', {})
  tflite = ('' if model.get('tflite') else
            f' ({model.get("tflite_problem") or model.get("problem")})')
  print(f'{name}: eval accuracy {summary["final_eval"]["accuracy"]:.4f} '
        f'(loss {summary["final_eval"]["loss"]:.4f}) after '
        f'{summary["final_round"]} rounds; {wall:.0f} s wall, '
        f'{summary["mean_round_seconds"]:.1f} s/round; export '
        f'{model.get("seconds", float("nan")):.1f} s{tflite}', flush=True)
  return summary


def main(argv: list[str]) -> None:
  del argv
  root = tempfile.mkdtemp(prefix='byo-quick-')
  rounds = f'--rounds={_ROUNDS.value}'
  train_csv, eval_csv = write_fashion_mnist_csv(root)
  train('csv_fashion_mnist', root, '--task=csv', f'--data_dir={train_csv}',
        '--label_column=label', '--client_column=site',
        f'--eval_data={eval_csv}', '--clients_per_round=10', rounds)
  cifar = os.path.join(root, 'cifar')
  write_synthetic_cifar10(cifar)
  train('cifar10_synthetic_cnn', root, '--task=cifar10',
        f'--data_dir={cifar}', '--num_clients=20', '--partition=iid',
        '--clients_per_round=10', rounds)
  if _RESNET_ROUNDS.value:
    train('cifar10_synthetic_resnet18', root, '--task=cifar10',
          '--model=resnet18', f'--data_dir={cifar}', '--num_clients=20',
          '--partition=iid', '--clients_per_round=10',
          f'--rounds={_RESNET_ROUNDS.value}')


if __name__ == '__main__':
  app.run(main)
