"""A synthetic image task with a large virtual population, for bench/scale.py.

    python -m tff_pipeline.train --task=bench.scale_task:SYNTHETIC \
        --num_clients=100000 --clients_per_round=1000 --model=2nn

`SYNTHETIC` is a task family (as `--task=package.module:name` takes):
Fashion-MNIST's 28x28 images, preprocessing, models (cnn, 2nn, lr), loss
and metrics, but its shards are written here, once per population: at most
`DISTINCT_SHARDS` real shards of `EXAMPLES_PER_CLIENT` learnable synthetic
images (each class lights a band of rows), and every virtual client's
`clients/<id>.tfrecord` a hard link to one of them. The manifest lists
every client with its own entry (size and sha256 of its file), so the
runtime sees a population of separate shards, at the disk cost of the
distinct ones.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np

from data_prep import images as image_prep
from data_prep import manifest as manifest_lib
from data_prep import shards
from tff_pipeline.tasks import base
from tff_pipeline.tasks import images

TASK = 'synthetic_images'
DISTINCT_SHARDS = 1000
EXAMPLES_PER_CLIENT = 20
_EVAL_EXAMPLES = 2000
_NUM_CLASSES = 10


def synthetic_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Learnable 28x28 uint8 images and their labels."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, _NUM_CLASSES, n)
  pixels = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
  rows = 2 + (labels * 24) // _NUM_CLASSES
  for i, row in enumerate(rows):
    pixels[i, row:row + 2, :] = 255
  return pixels, labels


def client_id(i: int) -> str:
  return f'v{i:06d}'


def _partition(population: int, seed: int) -> dict:
  return {'method': 'virtual', 'alpha': None, 'num_clients': population,
          'seed': seed, 'distinct_shards': DISTINCT_SHARDS,
          'examples_per_client': EXAMPLES_PER_CLIENT}


def write_population(shard_dir: str, population: int,
                     seed: int) -> shards.Manifest:
  """Writes (or reuses) the shard dir of `population` virtual clients."""
  wanted = _partition(population, seed)
  found = shards.load_if_matching(
      shard_dir, lambda m: m.task == TASK and m.partition == wanted)
  if found is not None:
    return found
  parent = os.path.dirname(os.path.abspath(shard_dir))
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix='.scale-', dir=parent)
  try:
    distinct = min(population, DISTINCT_SHARDS)
    pixels, labels = synthetic_images(
        distinct * EXAMPLES_PER_CLIENT + _EVAL_EXAMPLES, seed)
    cut = distinct * EXAMPLES_PER_CLIENT
    base_manifest = shards.write_shards(
        os.path.join(staging, 'base'), TASK, image_prep.FEATURES_SPEC,
        ((f'b{k:04d}', {'pixels': pixels[k * EXAMPLES_PER_CLIENT:
                                         (k + 1) * EXAMPLES_PER_CLIENT],
                        'label': labels[k * EXAMPLES_PER_CLIENT:
                                        (k + 1) * EXAMPLES_PER_CLIENT]})
         for k in range(distinct)),
        eval_examples={'pixels': pixels[cut:], 'label': labels[cut:]},
        num_classes=_NUM_CLASSES, partition=wanted, source={})
    os.makedirs(os.path.join(staging, shards.CLIENTS_DIR))
    infos = []
    for i in range(population):
      shard = base_manifest.clients[i % distinct]
      name = client_id(i)
      file = f'{shards.CLIENTS_DIR}/{name}{shards.SHARD_SUFFIX}'
      os.link(base_manifest.path(shard), os.path.join(staging, file))
      infos.append(manifest_lib.ShardInfo(
          client_id=name, file=file, num_examples=shard.num_examples,
          sha256=shard.sha256, label_histogram=shard.label_histogram,
          num_bytes=shard.num_bytes))
    os.link(base_manifest.path(base_manifest.eval),
            os.path.join(staging, shards.EVAL_FILE))
    manifest = shards.Manifest(
        shard_dir=staging, task=TASK, features=base_manifest.features,
        num_classes=_NUM_CLASSES, partition=wanted,
        source={'synthetic': 'bench.scale_task'}, clients=tuple(infos),
        eval=base_manifest.eval, format_version=shards.FORMAT_VERSION)
    manifest_lib.write_manifest(manifest)
    if os.path.exists(shard_dir):
      shutil.rmtree(shard_dir)
    os.rename(staging, shard_dir)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return shards.load_manifest(shard_dir)


class SyntheticImages(images.ImageClassification):
  """Fashion-MNIST's task on a virtual population of synthetic shards."""

  def __init__(self):
    super().__init__(TASK)

  def prepare(self, data: base.DataOptions) -> shards.Manifest:
    return write_population(data.shard_dir, data.num_clients, data.seed)


SYNTHETIC = SyntheticImages()
