"""CIFAR-10 image classification, written only against the task interface.

This module is the proof that a task needs nothing but the public interface
(`tff_pipeline.tasks.base`): it imports no other task module, and the rest
of the project knows it only by its registry entry. Data: the published
Python or binary batches, sharded by `data_prep.cifar10`. Pixels are
standardized per channel with the training set's statistics (in the
manifest); there is no augmentation, so client training stays a pure
function of the client's data.

Models:
  cnn       the small CNN of TensorFlow's CIFAR-10 tutorial (three 3x3
            convolutions of 32, 64, 64 filters, two 2x2 max-pools, a dense
            layer of 64): 122,570 parameters, the CPU default;
  resnet18  ResNet-18 for 32x32 inputs (He et al. 2016: a 3x3 stem of 64
            filters, four stages of two basic blocks, 64/128/256/512
            filters, global average pooling) with every BatchNorm replaced
            by GroupNorm of 2 groups, as Hsieh et al. (2020, "The Non-IID
            Data Quagmire of Decentralized Machine Learning") recommend for
            non-IID federated training: 11,173,962 parameters.
FedML's `dataset: cifar10` and `model: resnet18` (or `resnet18_gn`) map here.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import tensorflow as tf

from data_prep import cifar10 as cifar10_prep
from data_prep import shards
from tff_pipeline.tasks import base

GROUPS = 2  # GroupNorm groups (Hsieh et al. 2020; Reddi et al. 2021).
_STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))  # (filters, first stride)


def _l2(weight_decay: float) -> Optional[tf.keras.regularizers.L2]:
  # torch-style weight decay wd: the gradient of (wd / 2) * ||w||^2.
  return tf.keras.regularizers.L2(weight_decay / 2.0) if weight_decay else None


def create_cnn(num_classes: int = 10, seed: int = 0,
               weight_decay: float = 0.0) -> tf.keras.Model:
  """TensorFlow's CIFAR-10 tutorial CNN (logits)."""
  layers = tf.keras.layers
  reg = _l2(weight_decay)

  def init(i):
    return tf.keras.initializers.GlorotUniform(seed=seed + i)

  return tf.keras.Sequential([
      layers.Input(shape=cifar10_prep.IMAGE_SHAPE),
      layers.Conv2D(32, 3, activation='relu', kernel_initializer=init(0),
                    kernel_regularizer=reg),
      layers.MaxPool2D(2),
      layers.Conv2D(64, 3, activation='relu', kernel_initializer=init(1),
                    kernel_regularizer=reg),
      layers.MaxPool2D(2),
      layers.Conv2D(64, 3, activation='relu', kernel_initializer=init(2),
                    kernel_regularizer=reg),
      layers.Flatten(),
      layers.Dense(64, activation='relu', kernel_initializer=init(3),
                   kernel_regularizer=reg),
      layers.Dense(num_classes, kernel_initializer=init(4),
                   kernel_regularizer=reg),
  ], name='cifar10_cnn')


def create_resnet18(num_classes: int = 10, seed: int = 0,
                    weight_decay: float = 0.0) -> tf.keras.Model:
  """ResNet-18 (CIFAR variant) with GroupNorm(2) instead of BatchNorm."""
  layers = tf.keras.layers
  reg = _l2(weight_decay)
  counter = iter(range(1000))

  def conv(x, filters, kernel, stride):
    return layers.Conv2D(
        filters, kernel, strides=stride, padding='same', use_bias=False,
        kernel_initializer=tf.keras.initializers.HeNormal(
            seed=seed + next(counter)),
        kernel_regularizer=reg)(x)

  def norm(x):
    return layers.GroupNormalization(groups=GROUPS, epsilon=1e-5)(x)

  def basic_block(x, filters, stride):
    shortcut = x
    y = layers.ReLU()(norm(conv(x, filters, 3, stride)))
    y = norm(conv(y, filters, 3, 1))
    if stride != 1 or x.shape[-1] != filters:
      shortcut = norm(conv(x, filters, 1, stride))
    return layers.ReLU()(layers.Add()([y, shortcut]))

  inputs = layers.Input(shape=cifar10_prep.IMAGE_SHAPE)
  x = layers.ReLU()(norm(conv(inputs, 64, 3, 1)))
  for filters, stride in _STAGES:
    x = basic_block(x, filters, stride)
    x = basic_block(x, filters, 1)
  x = layers.GlobalAveragePooling2D()(x)
  outputs = layers.Dense(
      num_classes, kernel_initializer=tf.keras.initializers.GlorotUniform(
          seed=seed + next(counter)), kernel_regularizer=reg)(x)
  return tf.keras.Model(inputs, outputs, name='resnet18_gn')


MODELS = {'cnn': create_cnn, 'resnet18': create_resnet18}


class Cifar10(base.ClassifierFamily):
  """CIFAR-10's 50,000 training images split over clients."""

  name = 'cifar10'
  model_names = tuple(MODELS)
  builtin_from_logits = True  # Both models end in logits.
  custom_models = True
  # Untuned (no CIFAR-10 copy here): FedAvg with 10 of 100 clients a round.
  defaults = dict(model='cnn', num_clients=100, clients_per_round=10,
                  rounds=50, client_batch_size=32, client_learning_rate=0.05)

  def prepare(self, data: base.DataOptions) -> shards.Manifest:
    base.require_data_dir(data, self.name, 'the unpacked Python or binary '
                          'version of CIFAR-10')
    return cifar10_prep.find_or_prepare(
        data.data_dir, data.shard_dir, num_clients=data.num_clients,
        partition=data.partition, partition_alpha=data.partition_alpha,
        seed=data.seed)

  def preprocess(self, manifest: shards.Manifest) -> base.Preprocess:
    mean = np.asarray(manifest.source['channel_mean'], np.float32)
    std = np.asarray(manifest.source['channel_std'], np.float32)

    def preprocess(batch: base.Batch):
      pixels = tf.cast(batch['pixels'], tf.float32) / 255.0
      return (pixels - mean) / std, batch['label']

    return preprocess

  def model(self, manifest: shards.Manifest, model_name: str, seed: int,
            weight_decay: float) -> tf.keras.Model:
    if model_name in MODELS:
      return MODELS[model_name](manifest.num_classes, seed=seed,
                                weight_decay=weight_decay)
    return base.build_classifier(model_name, cifar10_prep.IMAGE_SHAPE,
                                 manifest.num_classes)


CIFAR10 = Cifar10()
