"""Training scenarios: the data, the model and the loss of each `--task`."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from typing import Any, Callable, Optional

import tensorflow as tf

from data_prep import images as image_prep
from data_prep import movielens as movielens_prep
from data_prep import shakespeare as shakespeare_prep
from data_prep import stackoverflow as stackoverflow_prep
from data_prep import shards
from tff_pipeline import keras_metrics
from tff_pipeline import models
from tff_pipeline import text_features
from tff_pipeline.config import TrainConfig
from tff_pipeline.errors import UserError

Batch = dict[str, tf.Tensor]
# Examples parsed at once before re-batching (sequence tasks).
_PARSE_BATCH = 64


@dataclasses.dataclass(frozen=True)
class Task:
  """A scenario bound to its prepared per-client shards."""

  name: str
  manifest: shards.Manifest
  # Builds a fresh, uncompiled Keras model (deterministic for a given config).
  model_builder: Callable[[], tf.keras.Model]
  # Maps a parsed batch of examples to (x, y); pure TF, runs on the executor.
  preprocess: Callable[[Batch], tuple[tf.Tensor, tf.Tensor]]
  loss_builder: Callable[[], tf.keras.losses.Loss]
  metrics_builder: Callable[[], list[tf.keras.metrics.Metric]]
  # Sequence tasks: an example (a snippet) yields a variable number of rows,
  # so batches are re-formed after preprocessing.
  rebatch: bool = False
  # Tasks whose algorithm is not FedAvg/FedProx over one Keras model (e.g.
  # Federated Reconstruction): (config, dataset computation) -> process.
  process_builder: Optional[Callable[..., Any]] = None
  # Replaces the central held-out evaluation of the global Keras model with a
  # federated one on the clients' own held-out data:
  # (held-out client ids or None for the local shard dir's, distribute or
  # None for the current context) -> an evaluator with evaluate(weights).
  evaluator_builder: Optional[Callable[..., Any]] = None

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
    if not self.rebatch:
      return serialized.batch(batch_size).map(self.parse_and_preprocess)
    return (serialized.batch(_PARSE_BATCH).map(self.parse_and_preprocess)
            .unbatch().batch(batch_size))


def cache_root() -> str:
  return os.environ.get('TFF_PIPELINE_CACHE',
                        os.path.expanduser('~/.cache/tff_pipeline'))


def default_shard_dir(config: TrainConfig) -> str:
  """A shard folder named after everything that determines its contents."""
  alpha = f'-a{config.partition_alpha:g}' if config.partition == 'dirichlet' else ''
  subset = f'-{config.emnist_subset}' if config.task == 'emnist' else ''
  source = hashlib.sha256(os.path.abspath(config.data_dir).encode()).hexdigest()[:8] \
      if config.data_dir else 'default'
  # Both Stack Overflow tasks read the same shards.
  family = 'stackoverflow' if config.task.startswith('stackoverflow') else config.task
  name = (f'{family}{subset}-{config.partition}{alpha}-n{config.num_clients}'
          f'-s{config.seed}-{source}')
  return os.path.join(cache_root(), 'shards', name)


def _image_preprocess(batch: Batch) -> tuple[tf.Tensor, tf.Tensor]:
  pixels = tf.cast(batch['pixels'], tf.float32) / 255.0
  return tf.expand_dims(pixels, -1), batch['label']


def _prepare_image_shards(config: TrainConfig) -> shards.Manifest:
  return image_prep.find_or_prepare(
      task=config.task,
      data_dir=config.data_dir or None,
      shard_dir=config.shard_dir or default_shard_dir(config),
      num_clients=config.num_clients,
      partition=config.partition,
      partition_alpha=config.partition_alpha,
      seed=config.seed,
      emnist_subset=config.emnist_subset,
  )


def _image_task(config: TrainConfig, manifest: shards.Manifest) -> Task:
  builder = models.IMAGE_MODELS.get(config.model)
  if builder is None:
    raise UserError(f'--model={config.model} does not fit --task={config.task}; '
                    f'choose one of {", ".join(models.IMAGE_MODELS)}')
  num_classes = manifest.num_classes
  return Task(
      name=config.task,
      manifest=manifest,
      model_builder=lambda: builder(num_classes, seed=config.seed,
                                    weight_decay=config.weight_decay),
      preprocess=_image_preprocess,
      loss_builder=tf.keras.losses.SparseCategoricalCrossentropy,
      metrics_builder=lambda: [
          tf.keras.metrics.SparseCategoricalAccuracy(name='accuracy')],
  )


@dataclasses.dataclass(frozen=True)
class _TaskKind:
  prepare: Callable[[TrainConfig], shards.Manifest]
  bind: Callable[[TrainConfig, shards.Manifest], Task]


_IMAGE = _TaskKind(prepare=_prepare_image_shards, bind=_image_task)


def _require_natural_clients(config: TrainConfig, owners: str) -> None:
  if config.partition != 'natural':
    raise UserError(f'--task={config.task} has natural clients ({owners}); '
                    f'drop --partition={config.partition} or use natural')


def _require_data_dir(config: TrainConfig, what: str) -> None:
  if not config.data_dir:
    raise UserError(f'--task={config.task} needs --data_dir: {what}')


def _require_model(config: TrainConfig, model: str) -> None:
  if config.model != model:
    raise UserError(f'--model={config.model} does not fit --task={config.task}; '
                    f'use {model}')


def _prepare_shakespeare_shards(config: TrainConfig) -> shards.Manifest:
  _require_natural_clients(config, 'speaking roles')
  return shakespeare_prep.find_or_prepare(
      data_dir=config.data_dir or None,
      shard_dir=config.shard_dir or default_shard_dir(config),
      num_clients=config.num_clients,
      seed=config.seed,
  )


def _shakespeare_preprocess(batch: Batch) -> tuple[tf.Tensor, tf.Tensor]:
  return shakespeare_prep.to_sequences(batch['snippet'])


def _shakespeare_task(config: TrainConfig, manifest: shards.Manifest) -> Task:
  _require_model(config, 'char_lstm')
  vocab_size = shakespeare_prep.VOCAB_SIZE
  return Task(
      name=config.task,
      manifest=manifest,
      model_builder=lambda: models.create_char_lstm(
          vocab_size, seed=config.seed, weight_decay=config.weight_decay),
      preprocess=_shakespeare_preprocess,
      loss_builder=lambda: tf.keras.losses.SparseCategoricalCrossentropy(
          from_logits=True),
      # Next-character accuracy, not counting padding.
      metrics_builder=lambda: [keras_metrics.MaskedAccuracy(
          masked_tokens=[shakespeare_prep.PAD_ID])],
      rebatch=True,
  )


_SHAKESPEARE = _TaskKind(prepare=_prepare_shakespeare_shards,
                         bind=_shakespeare_task)


def _prepare_stackoverflow_shards(config: TrainConfig) -> shards.Manifest:
  _require_data_dir(config, 'a BigQuery export of posts_questions (.tsv or '
                    '.csv)')
  _require_natural_clients(config, 'question owners')
  return stackoverflow_prep.find_or_prepare(
      input_path=config.data_dir,
      shard_dir=config.shard_dir or default_shard_dir(config),
      num_clients=config.num_clients,
      seed=config.seed,
  )


def _stackoverflow_tag_task(config: TrainConfig,
                            manifest: shards.Manifest) -> Task:
  _require_model(config, 'lr')
  vocab, tags = manifest.source['vocab'], manifest.source['tags']

  def preprocess(batch: Batch) -> tuple[tf.Tensor, tf.Tensor]:
    return (text_features.bag_of_words(batch['tokens'], vocab),
            text_features.multi_hot_tags(batch['tags'], tags))

  return Task(
      name=config.task,
      manifest=manifest,
      model_builder=lambda: models.create_bag_of_words_lr(
          len(vocab), len(tags), seed=config.seed,
          weight_decay=config.weight_decay),
      preprocess=preprocess,
      loss_builder=tf.keras.losses.BinaryCrossentropy,
      # "accuracy" here is precision@1: the top-scored tag is a true tag.
      metrics_builder=lambda: [
          tf.keras.metrics.Precision(top_k=1, name='accuracy'),
          tf.keras.metrics.Recall(top_k=5, name='recall_at_5')],
  )


def _stackoverflow_nwp_task(config: TrainConfig,
                            manifest: shards.Manifest) -> Task:
  _require_model(config, 'word_lstm')
  words = text_features.WordIds(manifest.source['vocab'])

  def preprocess(batch: Batch) -> tuple[tf.Tensor, tf.Tensor]:
    return text_features.word_sequences(batch['tokens'], words)

  return Task(
      name=config.task,
      manifest=manifest,
      model_builder=lambda: models.create_word_lstm(
          words.size, seed=config.seed, weight_decay=config.weight_decay),
      preprocess=preprocess,
      loss_builder=lambda: tf.keras.losses.SparseCategoricalCrossentropy(
          from_logits=True),
      # TFF's baseline accuracy: padding, out-of-vocabulary and end tokens
      # are neither right nor wrong.
      metrics_builder=lambda: [keras_metrics.MaskedAccuracy(
          masked_tokens=[text_features.PAD_ID, words.oov_id, words.eos_id])],
  )


def _prepare_movielens_shards(config: TrainConfig) -> shards.Manifest:
  _require_data_dir(config, 'a MovieLens 100K folder (u.data, u1.base, '
                    'u1.test) or 1M (ratings.dat)')
  _require_natural_clients(config, 'users')
  return movielens_prep.find_or_prepare(
      config.data_dir, config.shard_dir or default_shard_dir(config))


def _movielens_task(config: TrainConfig, manifest: shards.Manifest) -> Task:
  from tff_pipeline import recommendation  # pylint: disable=g-import-not-at-top
  _require_model(config, 'mf')
  num_items = manifest.source['num_items']
  return Task(
      name=config.task,
      manifest=manifest,
      model_builder=lambda: recommendation.create_matrix_factorization(
          num_items, seed=config.seed)[0],
      preprocess=recommendation.parse_ratings,
      loss_builder=tf.keras.losses.MeanSquaredError,
      metrics_builder=lambda: [],
      process_builder=lambda cfg, datasets: recommendation.build_training_process(
          manifest, cfg, datasets),
      evaluator_builder=functools.partial(recommendation.FedReconEvaluator,
                                          manifest, config),
  )


_MOVIELENS = _TaskKind(prepare=_prepare_movielens_shards, bind=_movielens_task)


_STACKOVERFLOW_TAG = _TaskKind(prepare=_prepare_stackoverflow_shards,
                               bind=_stackoverflow_tag_task)
_STACKOVERFLOW_NWP = _TaskKind(prepare=_prepare_stackoverflow_shards,
                               bind=_stackoverflow_nwp_task)


_TASKS: dict[str, _TaskKind] = {
    'fashion_mnist': _IMAGE,
    'mnist': _IMAGE,
    'emnist': _IMAGE,
    'shakespeare': _SHAKESPEARE,
    'stackoverflow_tag': _STACKOVERFLOW_TAG,
    'stackoverflow_nwp': _STACKOVERFLOW_NWP,
    'movielens': _MOVIELENS,
}


def load(config: TrainConfig) -> Task:
  """Prepares (or reuses) the task's shards and returns the bound task.

  Raises:
    UserError: Unknown task or a model that does not fit it.
    data_prep.errors.DataPrepError: Missing or malformed input data.
  """
  return from_manifest(config, _kind(config).prepare(config))


def from_manifest(config: TrainConfig, manifest: shards.Manifest) -> Task:
  """Binds the task to already-prepared shards (e.g. on an edge pod)."""
  return _kind(config).bind(config, manifest)


def _kind(config: TrainConfig) -> _TaskKind:
  kind = _TASKS.get(config.task)
  if kind is None:
    raise UserError(f'unknown task {config.task!r}; choose one of '
                    f'{", ".join(_TASKS)}')
  return kind
