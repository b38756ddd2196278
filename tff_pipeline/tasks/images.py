"""Image classification on 28x28 grayscale digits and clothes.

Tasks `fashion_mnist`, `mnist` and `emnist` (the idx files of
`data_prep.images`). The models are TFF's EMNIST baselines
(`tff.simulation.baselines.emnist`): the conv-dropout CNN, the 200-200 MLP of
McMahan et al. (2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data") and multinomial logistic regression; `--model` may also
name your own classifier (`package.module:function`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import tensorflow as tf

from data_prep import images as image_prep
from data_prep import shards
from tff_pipeline.tasks import base
from tff_pipeline.tasks import stateless_dropout

IMAGE_SHAPE = (28, 28, 1)
ModelBuilder = Callable[..., tf.keras.Model]


def regularizer(weight_decay: float) -> Optional[tf.keras.regularizers.L2]:
  """Keras L2 equal to torch-style weight decay (None for 0).

  torch's weight_decay wd adds wd * w to the gradient, i.e. the gradient of
  (wd / 2) * ||w||^2; Keras' L2(l) penalizes l * ||w||^2.
  """
  return tf.keras.regularizers.L2(weight_decay / 2.0) if weight_decay else None


def dense_kwargs(seed: int, index: int, weight_decay: float) -> dict:
  """Seeded Glorot initializer and weight decay for layer `index`."""
  reg = regularizer(weight_decay)
  return dict(
      kernel_initializer=tf.keras.initializers.GlorotUniform(seed=seed + index),
      kernel_regularizer=reg,
      bias_regularizer=reg,
  )


def create_cnn(num_classes: int, seed: int = 0,
               weight_decay: float = 0.0,
               input_shape: tuple[int, ...] = IMAGE_SHAPE) -> tf.keras.Model:
  """TFF's EMNIST conv-dropout model (1.2M parameters for 10 classes).

  Its two dropout layers are `stateless_dropout.StatelessDropout`: masks
  depend only on the client's batch and step, whichever runtime (local,
  edge pods) trains it. `StepSeed` adds one non-trainable int64 (the
  step), not counted in TFF's 1,199,882 trainable parameters.
  """
  layers = tf.keras.layers
  inputs = layers.Input(shape=input_shape)
  dropout_seed = stateless_dropout.StepSeed(name='dropout_seed')(inputs)
  x = layers.Conv2D(32, (3, 3), activation='relu',
                    **dense_kwargs(seed, 0, weight_decay))(inputs)
  x = layers.Conv2D(64, (3, 3), activation='relu',
                    **dense_kwargs(seed, 1, weight_decay))(x)
  x = layers.MaxPool2D((2, 2))(x)
  x = stateless_dropout.StatelessDropout(0.25, salt=seed + 10)(
      [x, dropout_seed])
  x = layers.Flatten()(x)
  x = layers.Dense(128, activation='relu',
                   **dense_kwargs(seed, 2, weight_decay))(x)
  x = stateless_dropout.StatelessDropout(0.5, salt=seed + 11)(
      [x, dropout_seed])
  outputs = layers.Dense(num_classes, activation='softmax',
                         **dense_kwargs(seed, 3, weight_decay))(x)
  return tf.keras.Model(inputs, outputs, name='cnn')


def create_2nn(num_classes: int, seed: int = 0,
               weight_decay: float = 0.0,
               input_shape: tuple[int, ...] = IMAGE_SHAPE) -> tf.keras.Model:
  """The 200-200 MLP of McMahan et al. (2017)."""
  layers = tf.keras.layers
  return tf.keras.Sequential([
      layers.Input(shape=input_shape),
      layers.Flatten(),
      layers.Dense(200, activation='relu', **dense_kwargs(seed, 0, weight_decay)),
      layers.Dense(200, activation='relu', **dense_kwargs(seed, 1, weight_decay)),
      layers.Dense(num_classes, activation='softmax',
                   **dense_kwargs(seed, 2, weight_decay)),
  ], name='2nn')


def create_lr(num_classes: int, seed: int = 0,
              weight_decay: float = 0.0,
              input_shape: tuple[int, ...] = IMAGE_SHAPE) -> tf.keras.Model:
  """Multinomial logistic regression on the flattened pixels."""
  layers = tf.keras.layers
  return tf.keras.Sequential([
      layers.Input(shape=input_shape),
      layers.Flatten(),
      layers.Dense(num_classes, activation='softmax',
                   **dense_kwargs(seed, 0, weight_decay)),
  ], name='lr')


IMAGE_MODELS: dict[str, ModelBuilder] = {
    'cnn': create_cnn,
    '2nn': create_2nn,
    'lr': create_lr,
}


def _preprocess(batch: base.Batch):
  pixels = tf.cast(batch['pixels'], tf.float32) / 255.0
  return tf.expand_dims(pixels, -1), batch['label']


class ImageClassification(base.ClassifierFamily):
  """One of the idx image datasets, split over clients."""

  model_names = tuple(IMAGE_MODELS)
  custom_models = True

  def __init__(self, name: str):
    self.name = name
    if name == 'emnist':
      self.data_option_names = ('emnist_subset',)

  def data_key(self, data: base.DataOptions) -> str:
    if self.name != 'emnist':  # emnist_subset only matters for EMNIST.
      data = dataclasses.replace(data, extras={})
    return super().data_key(data)

  def prepare(self, data: base.DataOptions) -> shards.Manifest:
    return image_prep.find_or_prepare(
        task=self.name,
        data_dir=data.data_dir or None,
        shard_dir=data.shard_dir,
        num_clients=data.num_clients,
        partition=data.partition,
        partition_alpha=data.partition_alpha,
        seed=data.seed,
        emnist_subset=data.extras.get('emnist_subset', 'auto'),
    )

  def preprocess(self, manifest: shards.Manifest) -> base.Preprocess:
    del manifest
    return _preprocess

  def model(self, manifest: shards.Manifest, model_name: str, seed: int,
            weight_decay: float) -> tf.keras.Model:
    if model_name in IMAGE_MODELS:
      return IMAGE_MODELS[model_name](manifest.num_classes, seed=seed,
                                      weight_decay=weight_decay)
    return base.build_classifier(model_name, IMAGE_SHAPE, manifest.num_classes)


FASHION_MNIST = ImageClassification('fashion_mnist')
MNIST = ImageClassification('mnist')
EMNIST = ImageClassification('emnist')
