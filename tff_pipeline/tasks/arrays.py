"""A task from a Keras model function and in-memory client data.

`ArrayTask(name, model_fn, clients={client id: (x, y)}, eval_data=(x, y),
loss, metrics)` writes each client's arrays as a shard (and the held-out
arrays as the eval shard) under the shard cache, named by a hash of the
data, and is then a task family like any other: `tff_pipeline.api.train(
task=family, ...)` trains it. `tff_pipeline.api.task_from_arrays` builds and
registers one. Since its data lives in this process, it trains on the local
runtime (to train it on edge pods, place its shard folder on them with
`workers.pod_data --shard_dir`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any, Callable, Sequence, Union

import numpy as np
import tensorflow as tf

from data_prep import shards
from data_prep.errors import UserError
from tff_pipeline.tasks import base

MODEL_NAME = 'model_fn'
LossSpec = Union[tf.keras.losses.Loss, Callable[[], tf.keras.losses.Loss]]
MetricsSpec = Union[Sequence[tf.keras.metrics.Metric],
                    Callable[[], list[tf.keras.metrics.Metric]]]


def _as_arrays(where: str, xy: Any) -> tuple[np.ndarray, np.ndarray]:
  try:
    x, y = xy
  except (TypeError, ValueError):
    raise UserError(f'{where} must be a pair (x, y) of arrays') from None
  x, y = np.asarray(x), np.asarray(y)
  if len(x) != len(y) or not len(x):
    raise UserError(f'{where}: x has {len(x)} rows and y {len(y)}; give the '
                    'same number of rows, at least one')
  return x, y


def _feature(name: str, values: np.ndarray) -> dict:
  if values.dtype.kind in 'iub':
    return {'kind': 'int64', 'shape': list(values.shape[1:])}
  if values.dtype.kind == 'f':
    return {'kind': 'float', 'shape': list(values.shape[1:])}
  raise UserError(f'{name} has dtype {values.dtype}; give numbers')


def _fresh_loss(loss: LossSpec) -> tf.keras.losses.Loss:
  if isinstance(loss, tf.keras.losses.Loss):
    return loss.__class__.from_config(loss.get_config())
  return loss()


def _fresh_metrics(metrics: MetricsSpec) -> list[tf.keras.metrics.Metric]:
  # Metrics hold state: each model gets its own.
  if callable(metrics):
    return list(metrics())
  return [m.__class__.from_config(m.get_config()) for m in metrics]


class ArrayTask(base.TaskFamily):
  """Clients' (x, y) arrays, a Keras model function, a loss and metrics."""

  model_names = (MODEL_NAME,)

  def __init__(self, name: str,
               model_fn: Callable[[], tf.keras.Model],
               clients: Mapping[str, tuple[Any, Any]],
               eval_data: tuple[Any, Any],
               loss: LossSpec,
               metrics: MetricsSpec = (),
               shard_root: str = ''):
    """Writes (or reuses) the shards of the data.

    Args:
      name: The task's name.
      model_fn: () -> an uncompiled Keras model taking x (batch first).
      clients: {client id: (x, y)}: each client's examples.
      eval_data: (x, y) held-out examples for the global model.
      loss: A Keras loss (or a function returning one).
      metrics: Keras metrics (or a function returning a list); an
        'accuracy' one is shown on the progress line.
      shard_root: Where the shard folder goes ('' for the cache).

    Raises:
      UserError: bad arrays or ids.
    """
    if not clients:
      raise UserError(f'task {name!r} has no clients; give {{id: (x, y)}}')
    self.name = name
    self._model_fn = model_fn
    self._loss = loss
    self._metrics = metrics
    columns = {str(cid): _as_arrays(f'clients[{cid!r}]', xy)
               for cid, xy in clients.items()}
    eval_x, eval_y = _as_arrays('eval_data', eval_data)
    first_x, first_y = next(iter(columns.values()))
    spec = {'x': _feature('x', first_x), 'y': _feature('y', first_y)}
    for cid, (x, y) in columns.items():
      if (x.shape[1:], y.shape[1:]) != (first_x.shape[1:], first_y.shape[1:]):
        raise UserError(f'clients[{cid!r}] has x {x.shape[1:]} and y '
                        f'{y.shape[1:]} per row, unlike the first client\'s '
                        f'{first_x.shape[1:]} and {first_y.shape[1:]}')
    digest = hashlib.sha256(name.encode())
    for cid, (x, y) in sorted(columns.items()):
      for part in (cid.encode(), x.dtype.str.encode(), str(x.shape).encode(),
                   x.tobytes(), y.dtype.str.encode(), y.tobytes()):
        digest.update(part)
    digest.update(eval_x.tobytes() + eval_y.tobytes())
    labels = (np.concatenate([y for _, y in columns.values()])
              if spec['y']['kind'] == 'int64' and not spec['y']['shape']
              else None)
    num_classes = (int(max(labels.max(), eval_y.max())) + 1
                   if labels is not None else None)
    shard_dir = os.path.join(shard_root or os.path.join(base.cache_root(),
                                                        'shards'),
                             f'arrays-{name}-{digest.hexdigest()[:16]}')
    fingerprint = {'sha256': digest.hexdigest()}
    manifest = shards.load_if_matching(
        shard_dir, lambda m: m.source == fingerprint and m.task == name)
    if manifest is None:
      manifest = shards.write_shards(
          shard_dir, name, spec,
          ((cid, {'x': x, 'y': y}) for cid, (x, y) in sorted(columns.items())),
          eval_examples={'x': eval_x, 'y': eval_y}, num_classes=num_classes,
          partition={'method': 'natural', 'alpha': None,
                     'num_clients': len(columns), 'seed': None},
          source=fingerprint, label_key='y' if num_classes else None)
    self.manifest = manifest
    self.defaults = dict(model=MODEL_NAME, partition='natural', num_clients=0,
                         clients_per_round=min(10, len(columns)))

  def data_key(self, data: base.DataOptions) -> str:
    del data
    return os.path.basename(self.manifest.shard_dir)

  def prepare(self, data: base.DataOptions) -> shards.Manifest:
    del data  # The arrays decide everything.
    return self.manifest

  def preprocess(self, manifest: shards.Manifest) -> base.Preprocess:
    del manifest
    return lambda batch: (batch['x'], batch['y'])

  def model(self, manifest: shards.Manifest, model_name: str, seed: int,
            weight_decay: float) -> tf.keras.Model:
    del manifest, model_name, seed, weight_decay  # model_fn decides.
    model = self._model_fn()
    if not isinstance(model, tf.keras.Model):
      raise UserError(f'task {self.name!r}: model_fn returned '
                      f'{type(model).__name__}, not a tf.keras.Model')
    return model

  def loss(self, manifest: shards.Manifest) -> tf.keras.losses.Loss:
    del manifest
    return _fresh_loss(self._loss)

  def metrics(self, manifest: shards.Manifest
              ) -> list[tf.keras.metrics.Metric]:
    del manifest
    return _fresh_metrics(self._metrics)
