"""Keras models for the image tasks (28x28x1 inputs).

The architectures are TFF's EMNIST baselines
(`tff.simulation.baselines.emnist`): the conv-dropout CNN, the 200-200 MLP of
the FedAvg paper, and multinomial logistic regression. Ours take the number of
classes, a seed (deterministic initial weights and dropout) and an optional L2
weight decay.
"""

from __future__ import annotations

from typing import Callable, Optional

import tensorflow as tf

ModelBuilder = Callable[..., tf.keras.Model]

IMAGE_SHAPE = (28, 28, 1)


def _regularizer(weight_decay: float) -> Optional[tf.keras.regularizers.L2]:
  # torch-style weight_decay wd adds wd * w to the gradient, i.e. the gradient
  # of (wd / 2) * ||w||^2; Keras' L2(l) penalizes l * ||w||^2.
  return tf.keras.regularizers.L2(weight_decay / 2.0) if weight_decay else None


def _dense_kwargs(seed: int, index: int, weight_decay: float) -> dict:
  reg = _regularizer(weight_decay)
  return dict(
      kernel_initializer=tf.keras.initializers.GlorotUniform(seed=seed + index),
      kernel_regularizer=reg,
      bias_regularizer=reg,
  )


def create_cnn(num_classes: int, seed: int = 0,
               weight_decay: float = 0.0) -> tf.keras.Model:
  """TFF's EMNIST conv-dropout model (1.2M parameters for 10 classes)."""
  layers = tf.keras.layers
  return tf.keras.Sequential([
      layers.Input(shape=IMAGE_SHAPE),
      layers.Conv2D(32, (3, 3), activation='relu',
                    **_dense_kwargs(seed, 0, weight_decay)),
      layers.Conv2D(64, (3, 3), activation='relu',
                    **_dense_kwargs(seed, 1, weight_decay)),
      layers.MaxPool2D((2, 2)),
      layers.Dropout(0.25, seed=seed + 10),
      layers.Flatten(),
      layers.Dense(128, activation='relu', **_dense_kwargs(seed, 2, weight_decay)),
      layers.Dropout(0.5, seed=seed + 11),
      layers.Dense(num_classes, activation='softmax',
                   **_dense_kwargs(seed, 3, weight_decay)),
  ], name='cnn')


def create_2nn(num_classes: int, seed: int = 0,
               weight_decay: float = 0.0) -> tf.keras.Model:
  """The 200-200 MLP of McMahan et al. (2017)."""
  layers = tf.keras.layers
  return tf.keras.Sequential([
      layers.Input(shape=IMAGE_SHAPE),
      layers.Flatten(),
      layers.Dense(200, activation='relu', **_dense_kwargs(seed, 0, weight_decay)),
      layers.Dense(200, activation='relu', **_dense_kwargs(seed, 1, weight_decay)),
      layers.Dense(num_classes, activation='softmax',
                   **_dense_kwargs(seed, 2, weight_decay)),
  ], name='2nn')


def create_lr(num_classes: int, seed: int = 0,
              weight_decay: float = 0.0) -> tf.keras.Model:
  """Multinomial logistic regression on the flattened pixels."""
  layers = tf.keras.layers
  return tf.keras.Sequential([
      layers.Input(shape=IMAGE_SHAPE),
      layers.Flatten(),
      layers.Dense(num_classes, activation='softmax',
                   **_dense_kwargs(seed, 0, weight_decay)),
  ], name='lr')


IMAGE_MODELS: dict[str, ModelBuilder] = {
    'cnn': create_cnn,
    '2nn': create_2nn,
    'lr': create_lr,
}


def create_char_lstm(vocab_size: int, seed: int = 0, weight_decay: float = 0.0,
                     embedding_dim: int = 8, units: int = 256) -> tf.keras.Model:
  """TFF's Shakespeare baseline: char embedding, two LSTMs, logits per step.

  Input: int64 char ids [batch, time] (0 is padding); output: logits
  [batch, time, vocab_size].
  """
  layers = tf.keras.layers
  reg = _regularizer(weight_decay)
  init = lambda i: tf.keras.initializers.GlorotUniform(seed=seed + i)
  recurrent = lambda i: tf.keras.initializers.Orthogonal(seed=seed + 20 + i)
  return tf.keras.Sequential([
      layers.Input(shape=(None,), dtype=tf.int64),
      layers.Embedding(vocab_size, embedding_dim,
                       embeddings_initializer=tf.keras.initializers.RandomUniform(
                           -0.05, 0.05, seed=seed + 30)),
      layers.LSTM(units, return_sequences=True, kernel_initializer=init(0),
                  recurrent_initializer=recurrent(0), kernel_regularizer=reg),
      layers.LSTM(units, return_sequences=True, kernel_initializer=init(1),
                  recurrent_initializer=recurrent(1), kernel_regularizer=reg),
      layers.Dense(vocab_size, kernel_initializer=init(2),
                   kernel_regularizer=reg),
  ], name='char_lstm')


def create_bag_of_words_lr(vocab_size: int, num_tags: int, seed: int = 0,
                           weight_decay: float = 0.0) -> tf.keras.Model:
  """Stack Overflow tag prediction: one sigmoid per tag over word frequencies."""
  return tf.keras.Sequential([
      tf.keras.layers.Input(shape=(vocab_size,)),
      tf.keras.layers.Dense(num_tags, activation='sigmoid',
                            **_dense_kwargs(seed, 0, weight_decay)),
  ], name='tag_lr')


def create_word_lstm(vocab_size: int, seed: int = 0, weight_decay: float = 0.0,
                     embedding_dim: int = 96, units: int = 670
                     ) -> tf.keras.Model:
  """TFF's Stack Overflow next-word baseline: embedding, LSTM, two dense."""
  layers = tf.keras.layers
  reg = _regularizer(weight_decay)
  return tf.keras.Sequential([
      layers.Input(shape=(None,), dtype=tf.int64),
      layers.Embedding(vocab_size, embedding_dim,
                       embeddings_initializer=tf.keras.initializers.RandomUniform(
                           -0.05, 0.05, seed=seed + 30)),
      layers.LSTM(units, return_sequences=True,
                  kernel_initializer=tf.keras.initializers.GlorotUniform(seed),
                  recurrent_initializer=tf.keras.initializers.Orthogonal(
                      seed=seed + 20), kernel_regularizer=reg),
      layers.Dense(embedding_dim, **_dense_kwargs(seed, 1, weight_decay)),
      layers.Dense(vocab_size, **_dense_kwargs(seed, 2, weight_decay)),
  ], name='word_lstm')
