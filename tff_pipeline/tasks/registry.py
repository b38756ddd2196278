"""The task registry: every built-in task by name, and users' own tasks.

`--task` is a name of `TASKS` or `package.module:name`, a user's task
family (any object with the methods of `base.TaskFamily`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

from data_prep import shards
from data_prep.errors import UserError
from data_prep.errors import did_you_mean
from tff_pipeline.tasks import base
from tff_pipeline.tasks import cifar10
from tff_pipeline.tasks import image_folder
from tff_pipeline.tasks import images
from tff_pipeline.tasks import movielens
from tff_pipeline.tasks import precision as precision_lib
from tff_pipeline.tasks import shakespeare
from tff_pipeline.tasks import stackoverflow
from tff_pipeline.tasks import tabular

TASKS: dict[str, base.TaskFamily] = {
    family.name: family for family in (
        images.FASHION_MNIST,
        images.MNIST,
        images.EMNIST,
        shakespeare.SHAKESPEARE,
        stackoverflow.STACKOVERFLOW_TAG,
        stackoverflow.STACKOVERFLOW_NWP,
        movielens.MOVIELENS,
        tabular.CSV,
        image_folder.IMAGE_FOLDER,
        cifar10.CIFAR10,
    )
}
# Methods a task family must have (base.TaskFamily's abstract ones).
_REQUIRED = ('prepare', 'preprocess', 'model', 'loss', 'bind', 'data_key')


def register(family: Any) -> str:
  """Adds a task family object (yours) to the registry; returns its name.

  Then `--task=<its name>` (in this process) and `api.train(task=family)`
  find it. Registering the same object again is a no-op.

  Raises:
    UserError: not a task family, no name, or a name another task has.
  """
  missing = [m for m in _REQUIRED if not callable(getattr(family, m, None))]
  if missing:
    raise UserError(f'task {family!r} is not a task family: it lacks '
                    f'{", ".join(missing)}; subclass '
                    'tff_pipeline.tasks.base.TaskFamily')
  name = getattr(family, 'name', '')
  if (not isinstance(name, str) or not name or ':' in name or
      name != name.lower()):
    # --task values are matched in lower case.
    raise UserError(f'task family {family!r} needs a lower-case name (its '
                    f"name attribute, without ':'), not {name!r}")
  if TASKS.get(name, family) is not family:
    raise UserError(f'a task named {name!r} is already registered; give yours '
                    'another name')
  TASKS[name] = family
  return name


def get(name: str) -> base.TaskFamily:
  """The family of --task=`name` (a built-in name or package.module:name).

  Raises:
    UserError: unknown name, or an object that is not a task family.
  """
  if ':' in name:
    family = base.load_object(name, '--task')
    missing = [m for m in _REQUIRED if not callable(getattr(family, m, None))]
    if missing:
      raise UserError(f'--task {name!r} is not a task family: it lacks '
                      f'{", ".join(missing)}; subclass '
                      'tff_pipeline.tasks.base.TaskFamily')
    return family
  family = TASKS.get(name)
  if family is None:
    raise UserError(f'--task={name} is not supported'
                    f'{did_you_mean(name, TASKS)}; choose one of '
                    f'{", ".join(TASKS)} or give package.module:name')
  return family


def defaults(name: str) -> Mapping[str, Any]:
  """The training defaults of task `name` (beneath YAML and flags)."""
  return dict(get(name).defaults)


def data_options(*, data_dir: str, shard_dir: str, num_clients: int,
                 partition: str, partition_alpha: float, seed: int,
                 **extras: Any) -> base.DataOptions:
  """DataOptions from keyword arguments (extras: task-specific options)."""
  return base.DataOptions(data_dir=data_dir, shard_dir=shard_dir,
                          num_clients=num_clients, partition=partition,
                          partition_alpha=partition_alpha, seed=seed,
                          extras=extras)


def data_key(task: str, data: base.DataOptions) -> str:
  """Names everything that decides the shards' contents."""
  return get(task).data_key(data)


def default_shard_dir(task: str, data: base.DataOptions) -> str:
  """A shard folder under the cache, named after the shards' contents."""
  return os.path.join(base.cache_root(), 'shards', data_key(task, data))


def prepare(task: str, data: base.DataOptions) -> shards.Manifest:
  """Prepares (or reuses) the task's shards (data.shard_dir may be '')."""
  if not data.shard_dir:
    data = dataclasses.replace(data, shard_dir=default_shard_dir(task, data))
  with shards.exclusive(data.shard_dir):
    return get(task).prepare(data)


def bind(task: str, manifest: shards.Manifest, model: str, seed: int,
         weight_decay: float = 0.0, precision: str = 'fp32') -> base.Task:
  """Binds task `task` to prepared shards (e.g. the pods') and a model.

  Raises:
    UserError: bf16 for a task that is not FedAvg over its Keras model.
  """
  bound = get(task).bind(manifest, model, seed, weight_decay)
  if precision == 'fp32':
    return bound
  if bound.process_builder is not None:
    raise UserError(f'--precision={precision} applies to tasks trained with '
                    f'FedAvg over one Keras model; --task={task} builds its '
                    'own algorithm; use --precision=fp32')
  return dataclasses.replace(
      bound, model_builder=precision_lib.model_builder(bound.model_builder,
                                                       precision),
      serving_model_builder=bound.model_builder)
