"""The task interface: what a training scenario is, and a task bound to data.

A task family (`TaskFamily`) knows how to make per-client shards from raw
files (data preparation), how to turn parsed examples into (x, y) batches
(preprocessing, pure TF: it runs on the edge pods' executors), which Keras
models fit it, its loss and metrics, and its training defaults. Binding it
to prepared shards and a model choice gives a `Task`, which the learning
layer trains. Built-in families live in this package, one module each; a
user's own family is any object with the same methods, loaded with
`--task=package.module:name` (see `registry.get`).
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import importlib
import os
from collections.abc import Mapping
from typing import Any, Callable, Optional

import tensorflow as tf

from data_prep import shards
from data_prep.errors import UserError

Batch = dict[str, tf.Tensor]
Preprocess = Callable[[Batch], tuple[Any, Any]]
# (input_shape without the batch dimension, number of classes) -> an
# uncompiled Keras model with outputs [batch, num_classes].
ClassifierFn = Callable[[tuple[int, ...], int], tf.keras.Model]
# Examples parsed at once before re-batching (sequence tasks).
PARSE_BATCH = 64


@dataclasses.dataclass(frozen=True)
class DataOptions:
  """How to make a task's per-client shards.

  Attributes:
    data_dir: Raw input files ('' for the family's default location).
    shard_dir: Where the shards go.
    num_clients: Clients to split the training data into (0: every natural
      owner, for data with owners).
    partition: 'iid', 'dirichlet' or 'natural'.
    partition_alpha: Dirichlet concentration.
    seed: Seed of the partition.
    extras: Family-specific options (e.g. emnist_subset, label_column).
  """
  data_dir: str
  shard_dir: str
  num_clients: int
  partition: str
  partition_alpha: float
  seed: int
  extras: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Task:
  """A scenario bound to its prepared per-client shards and a model."""

  name: str
  manifest: shards.Manifest
  # Builds a fresh, uncompiled Keras model (deterministic for a given seed).
  model_builder: Callable[[], tf.keras.Model]
  # Maps a parsed batch of examples to (x, y); pure TF, runs on the executor.
  preprocess: Preprocess
  loss_builder: Callable[[], tf.keras.losses.Loss]
  metrics_builder: Callable[[], list[tf.keras.metrics.Metric]]
  # Sequence tasks: an example (a snippet) yields a variable number of rows,
  # so batches are re-formed after preprocessing.
  rebatch: bool = False
  # Tasks whose algorithm is not FedAvg/FedProx over one Keras model (e.g.
  # Federated Reconstruction): (dataset computation, client optimizer,
  # server optimizer, model aggregator or None[, metrics_aggregator=: DP runs
  # pass one that withholds the training metrics]) -> learning process.
  process_builder: Optional[Callable[..., Any]] = None
  # Replaces the central held-out evaluation of the global Keras model with a
  # federated one on the clients' own held-out data: (held-out client ids or
  # None for the local shard dir's, distribute or None for the current
  # context) -> an evaluator with evaluate(weights).
  evaluator_builder: Optional[Callable[..., Any]] = None
  # (Keras model from model_builder, global model weights of the process) ->
  # None, putting the weights into the model; None: the weights are the
  # model's own (`ModelWeights.assign_weights_to`). Tasks whose global model
  # is part of the Keras model (Federated Reconstruction) set it.
  assign_weights: Optional[Callable[[tf.keras.Model, Any], None]] = None
  # Replaces the batching of `batched`: (serialized examples, batch size)
  # -> batches of (x, y), e.g. to batch two kinds of rows apart.
  batch_fn: Optional[Callable[[tf.data.Dataset, int], tf.data.Dataset]] = None
  # FedAvg weighs a client by the examples it trained on; where a row of a
  # batch is not one example, this counts them in a batch (x, y).
  example_count: Optional[Callable[[Any], tf.Tensor]] = None
  # What the held-out metrics measure, for logs and summary.json ('' if
  # nothing needs saying).
  eval_note: str = ''
  # Builds the model that is exported and served, with the same weights as
  # model_builder's; None: model_builder. A bf16 run trains a mixed-precision
  # copy but serves float32 (TFLite has no bfloat16 kernels).
  serving_model_builder: Optional[Callable[[], tf.keras.Model]] = None

  @property
  def input_spec(self) -> tuple[tf.TensorSpec, tf.TensorSpec]:
    """The (x, y) batch spec that client datasets yield."""
    traced = tf.function(self.parse_and_preprocess).get_concrete_function(
        tf.TensorSpec([None], tf.string))
    return tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype),
                                 traced.structured_outputs)

  def parse_and_preprocess(self, serialized: tf.Tensor):
    return self.preprocess(shards.parse_batch(serialized, self.manifest.features))

  def batched(self, serialized: tf.data.Dataset,
              batch_size: int) -> tf.data.Dataset:
    """Serialized examples -> batches of (x, y) of `batch_size` rows."""
    if self.batch_fn is not None:
      return self.batch_fn(serialized, batch_size)
    if not self.rebatch:
      return serialized.batch(batch_size).map(self.parse_and_preprocess)
    return (serialized.batch(PARSE_BATCH).map(self.parse_and_preprocess)
            .unbatch().batch(batch_size))


class TaskFamily(abc.ABC):
  """A training scenario: data preparation, preprocessing, model, loss.

  Subclass it (or write any object with these attributes and methods) for
  your own task. The defaults of `data_key`, `rebatch`, `process_builder`
  and `evaluator_builder` fit a supervised task trained with FedAvg.

  Attributes:
    name: The task's name (as in --task).
    defaults: Training options this task changes from the global defaults
      (beneath YAML and flags), e.g. {'model': 'char_lstm', 'rounds': 100}.
    model_names: The --model values it accepts.
    custom_models: Whether --model may name a user's classifier function
      (`package.module:function`, see `load_classifier_fn`).
    data_option_names: Training options (fields of the config's data_args,
      e.g. 'label_column') that this family's data preparation reads from
      `DataOptions.extras`.
  """

  name: str = ''
  defaults: Mapping[str, Any] = {}
  model_names: tuple[str, ...] = ()
  custom_models: bool = False
  rebatch: bool = False
  data_option_names: tuple[str, ...] = ()

  def defaults_for(self, requested: Mapping[str, Any]) -> Mapping[str, Any]:
    """`defaults`, given the options a run asks for (YAML and flags).

    Override when an option implies others (e.g. a client column implies
    the natural partition).
    """
    del requested
    return self.defaults

  def data_key(self, data: DataOptions) -> str:
    """Names everything that decides the shards' contents."""
    alpha = (f'-a{data.partition_alpha:g}' if data.partition == 'dirichlet'
             else '')
    extras = ''.join(f'-{v}' for _, v in sorted(data.extras.items()) if v)
    source = (hashlib.sha256(os.path.abspath(data.data_dir).encode())
              .hexdigest()[:8] if data.data_dir else 'default')
    return (f'{self.name}{extras}-{data.partition}{alpha}-n{data.num_clients}'
            f'-s{data.seed}-{source}')

  @abc.abstractmethod
  def prepare(self, data: DataOptions) -> shards.Manifest:
    """Makes (or reuses) the shards in data.shard_dir; returns the manifest."""

  @abc.abstractmethod
  def preprocess(self, manifest: shards.Manifest) -> Preprocess:
    """Parsed batch (feature dict) -> (x, y), in pure TF."""

  @abc.abstractmethod
  def model(self, manifest: shards.Manifest, model_name: str, seed: int,
            weight_decay: float) -> tf.keras.Model:
    """A fresh, uncompiled Keras model (seeded initial weights)."""

  @abc.abstractmethod
  def loss(self, manifest: shards.Manifest) -> tf.keras.losses.Loss:
    """The training loss."""

  def metrics(self, manifest: shards.Manifest
              ) -> list[tf.keras.metrics.Metric]:
    """Metrics reported in training and evaluation ('accuracy' first)."""
    del manifest
    return []

  def process_builder(self, manifest: shards.Manifest, seed: int
                      ) -> Optional[Callable[..., Any]]:
    """Task.process_builder, or None for FedAvg over `model`."""
    del manifest, seed
    return None

  def evaluator_builder(self, manifest: shards.Manifest, seed: int
                        ) -> Optional[Callable[..., Any]]:
    """Task.evaluator_builder, or None for central held-out evaluation."""
    del manifest, seed
    return None

  def batch_fn(self, manifest: shards.Manifest
               ) -> Optional[Callable[[tf.data.Dataset, int], tf.data.Dataset]]:
    """Task.batch_fn, or None for the generic batching."""
    del manifest
    return None

  def example_count(self, manifest: shards.Manifest
                    ) -> Optional[Callable[[Any], tf.Tensor]]:
    """Task.example_count, or None: each row of a batch is one example."""
    del manifest
    return None

  def eval_note(self, manifest: shards.Manifest) -> str:
    """Task.eval_note."""
    del manifest
    return ''

  def check_model(self, model_name: str) -> None:
    """Raises UserError if --model does not fit this task."""
    if model_name in self.model_names:
      return
    if self.custom_models and ':' in model_name:
      load_classifier_fn(model_name)
      return
    hint = (' or package.module:function (your own Keras classifier)'
            if self.custom_models else '')
    raise UserError(f'--model={model_name} does not fit --task={self.name}; '
                    f'choose one of {", ".join(self.model_names)}{hint}')

  def bind(self, manifest: shards.Manifest, model_name: str, seed: int,
           weight_decay: float = 0.0) -> Task:
    """This task on prepared shards, with the chosen model."""
    self.check_model(model_name)
    return Task(
        name=self.name,
        manifest=manifest,
        model_builder=lambda: self.model(manifest, model_name, seed,
                                         weight_decay),
        preprocess=self.preprocess(manifest),
        loss_builder=lambda: self.loss(manifest),
        metrics_builder=lambda: self.metrics(manifest),
        rebatch=self.rebatch,
        process_builder=self.process_builder(manifest, seed),
        evaluator_builder=self.evaluator_builder(manifest, seed),
        batch_fn=self.batch_fn(manifest),
        example_count=self.example_count(manifest),
        eval_note=self.eval_note(manifest),
    )


def outputs_probabilities(model: tf.keras.Model) -> bool:
  """Whether a classifier ends in softmax (else its outputs are logits)."""
  activation = getattr(model.layers[-1], 'activation', None) if model.layers \
      else None
  return activation is tf.keras.activations.softmax


class ClassifierFamily(TaskFamily):
  """A family of classifiers: sparse categorical cross-entropy, accuracy.

  Its own models (`model_names`) end in logits iff `builtin_from_logits`; a
  user's model (`--model=package.module:function`) may end in softmax or in
  logits, and the loss follows what it ends in.
  """

  builtin_from_logits = False

  def loss(self, manifest: shards.Manifest) -> tf.keras.losses.Loss:
    del manifest
    return tf.keras.losses.SparseCategoricalCrossentropy(
        from_logits=self.builtin_from_logits)

  def metrics(self, manifest: shards.Manifest
              ) -> list[tf.keras.metrics.Metric]:
    del manifest
    return [tf.keras.metrics.SparseCategoricalAccuracy(name='accuracy')]

  def bind(self, manifest: shards.Manifest, model_name: str, seed: int,
           weight_decay: float = 0.0) -> Task:
    task = super().bind(manifest, model_name, seed, weight_decay)
    if model_name in self.model_names:
      return task
    from_logits = not outputs_probabilities(task.model_builder())
    return dataclasses.replace(
        task, loss_builder=lambda: tf.keras.losses.SparseCategoricalCrossentropy(
            from_logits=from_logits))


def load_object(spec: str, what: str) -> Any:
  """Imports `package.module:name` and returns that attribute.

  Raises:
    UserError: the module or the attribute does not exist.
  """
  module_name, sep, attribute = spec.partition(':')
  if not sep or not module_name or not attribute:
    raise UserError(f'{what} {spec!r} must look like package.module:name')
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise UserError(f'{what} {spec!r}: cannot import {module_name} ({e}); '
                    'check the name and that it is on PYTHONPATH') from None
  try:
    return getattr(module, attribute)
  except AttributeError:
    raise UserError(f'{what} {spec!r}: {module_name} has no {attribute!r}; '
                    'check the name') from None


def load_classifier_fn(spec: str) -> ClassifierFn:
  """The user's `function(input_shape, num_classes) -> tf.keras.Model`."""
  fn = load_object(spec, '--model')
  if not callable(fn):
    raise UserError(f'--model {spec!r} is not a function; give one that takes '
                    '(input_shape, num_classes) and returns a Keras model')
  return fn


def build_classifier(spec: str, input_shape: tuple[int, ...],
                     num_classes: int) -> tf.keras.Model:
  """Builds the user's classifier and checks it fits the task.

  Raises:
    UserError: it does not return a Keras model, or its output is not
      [batch, num_classes] for inputs [batch, *input_shape].
  """
  try:
    model = load_classifier_fn(spec)(tuple(input_shape), num_classes)
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f'--model {spec!r} failed for input shape '
                    f'{tuple(input_shape)} and {num_classes} classes: '
                    f'{type(e).__name__}: {e}') from None
  if not isinstance(model, tf.keras.Model):
    raise UserError(f'--model {spec!r} returned {type(model).__name__}, not a '
                    'tf.keras.Model')
  try:
    output = model(tf.zeros([2, *input_shape]), training=False)
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f'--model {spec!r} does not take inputs of shape '
                    f'[batch, {", ".join(map(str, input_shape))}]: '
                    f'{type(e).__name__}: {e}') from None
  if tuple(output.shape) != (2, num_classes):
    raise UserError(f'--model {spec!r} outputs shape {tuple(output.shape)[1:]} '
                    f'per example, not ({num_classes},) (one score per class)')
  return model


def cache_root() -> str:
  """Where prepared shards are kept between runs."""
  return os.environ.get('TFF_PIPELINE_CACHE',
                        os.path.expanduser('~/.cache/tff_pipeline'))


def require_natural_clients(data: DataOptions, task: str, owners: str) -> None:
  if data.partition != 'natural':
    raise UserError(f'--task={task} has natural clients ({owners}); '
                    f'drop --partition={data.partition} or use natural')


def require_data_dir(data: DataOptions, task: str, what: str) -> None:
  if not data.data_dir:
    raise UserError(f'--task={task} needs --data_dir: {what}')
