"""Stack Overflow: tag prediction and next-word prediction, per question owner.

Both tasks read the shards of `data_prep.stackoverflow` (a BigQuery export
of posts_questions; clients are question owners) and are TFF's baselines
(`tff.simulation.baselines.stackoverflow`): bag-of-words logistic regression
over the 500 most frequent tags (Reddi et al. 2021, "Adaptive Federated
Optimization"), and an LSTM over sequences of 20 words whose accuracy does
not count padding, out-of-vocabulary or end tokens. The vocabulary lookups
(`text_features`) run on the executor.
"""

from __future__ import annotations

import tensorflow as tf

from data_prep import shards
from data_prep import stackoverflow as stackoverflow_prep
from tff_pipeline.tasks import base
from tff_pipeline.tasks import images
from tff_pipeline.tasks import keras_metrics
from tff_pipeline.tasks import text_features


def create_bag_of_words_lr(vocab_size: int, num_tags: int, seed: int = 0,
                           weight_decay: float = 0.0) -> tf.keras.Model:
  """Tag prediction: one sigmoid per tag over word frequencies."""
  return tf.keras.Sequential([
      tf.keras.layers.Input(shape=(vocab_size,)),
      tf.keras.layers.Dense(num_tags, activation='sigmoid',
                            **images.dense_kwargs(seed, 0, weight_decay)),
  ], name='tag_lr')


def create_word_lstm(vocab_size: int, seed: int = 0, weight_decay: float = 0.0,
                     embedding_dim: int = 96, units: int = 670
                     ) -> tf.keras.Model:
  """TFF's Stack Overflow next-word baseline: embedding, LSTM, two dense."""
  layers = tf.keras.layers
  reg = images.regularizer(weight_decay)
  return tf.keras.Sequential([
      layers.Input(shape=(None,), dtype=tf.int64),
      layers.Embedding(vocab_size, embedding_dim,
                       embeddings_initializer=tf.keras.initializers.RandomUniform(
                           -0.05, 0.05, seed=seed + 30)),
      layers.LSTM(units, return_sequences=True,
                  kernel_initializer=tf.keras.initializers.GlorotUniform(seed),
                  recurrent_initializer=tf.keras.initializers.Orthogonal(
                      seed=seed + 20), kernel_regularizer=reg),
      layers.Dense(embedding_dim, **images.dense_kwargs(seed, 1, weight_decay)),
      layers.Dense(vocab_size, **images.dense_kwargs(seed, 2, weight_decay)),
  ], name='word_lstm')


class _StackOverflow(base.TaskFamily):
  """Question owners as clients; both tasks share one shard dir."""

  def data_key(self, data: base.DataOptions) -> str:
    # Both Stack Overflow tasks read the same shards.
    return super().data_key(data).replace(self.name, 'stackoverflow', 1)

  def prepare(self, data: base.DataOptions) -> shards.Manifest:
    base.require_data_dir(data, self.name, 'a BigQuery export of '
                          'posts_questions (.tsv or .csv)')
    base.require_natural_clients(data, self.name, 'question owners')
    return stackoverflow_prep.find_or_prepare(
        input_path=data.data_dir, shard_dir=data.shard_dir,
        num_clients=data.num_clients, seed=data.seed)


class StackOverflowTags(_StackOverflow):
  """Tag prediction by bag-of-words logistic regression (recall@5)."""

  name = 'stackoverflow_tag'
  model_names = ('lr',)
  # Sigmoid cross-entropy averaged over hundreds of tags has tiny gradients:
  # large client steps (not tuned beyond the 100-question sample).
  defaults = dict(model='lr', partition='natural', num_clients=0,
                  client_learning_rate=10.0, client_batch_size=16,
                  clients_per_round=5, eval_batch_size=100)

  def preprocess(self, manifest: shards.Manifest) -> base.Preprocess:
    vocab, tags = manifest.source['vocab'], manifest.source['tags']

    def preprocess(batch: base.Batch):
      return (text_features.bag_of_words(batch['tokens'], vocab),
              text_features.multi_hot_tags(batch['tags'], tags))

    return preprocess

  def model(self, manifest: shards.Manifest, model_name: str, seed: int,
            weight_decay: float) -> tf.keras.Model:
    del model_name
    return create_bag_of_words_lr(len(manifest.source['vocab']),
                                  len(manifest.source['tags']), seed=seed,
                                  weight_decay=weight_decay)

  def loss(self, manifest: shards.Manifest) -> tf.keras.losses.Loss:
    del manifest
    return tf.keras.losses.BinaryCrossentropy()

  def metrics(self, manifest: shards.Manifest
              ) -> list[tf.keras.metrics.Metric]:
    del manifest
    # "accuracy" here is precision@1: the top-scored tag is a true tag.
    return [tf.keras.metrics.Precision(top_k=1, name='accuracy'),
            tf.keras.metrics.Recall(top_k=5, name='recall_at_5')]


class StackOverflowNextWord(_StackOverflow):
  """Next-word prediction with TFF's baseline LSTM."""

  name = 'stackoverflow_nwp'
  model_names = ('word_lstm',)
  defaults = dict(model='word_lstm', partition='natural', num_clients=0,
                  client_learning_rate=0.3, client_batch_size=16,
                  clients_per_round=5, eval_batch_size=100)

  def preprocess(self, manifest: shards.Manifest) -> base.Preprocess:
    words = text_features.WordIds(manifest.source['vocab'])

    def preprocess(batch: base.Batch):
      return text_features.word_sequences(batch['tokens'], words)

    return preprocess

  def model(self, manifest: shards.Manifest, model_name: str, seed: int,
            weight_decay: float) -> tf.keras.Model:
    del model_name
    words = text_features.WordIds(manifest.source['vocab'])
    return create_word_lstm(words.size, seed=seed, weight_decay=weight_decay)

  def loss(self, manifest: shards.Manifest) -> tf.keras.losses.Loss:
    del manifest
    return tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)

  def metrics(self, manifest: shards.Manifest
              ) -> list[tf.keras.metrics.Metric]:
    words = text_features.WordIds(manifest.source['vocab'])
    # TFF's baseline accuracy: padding, out-of-vocabulary and end tokens are
    # neither right nor wrong.
    return [keras_metrics.MaskedAccuracy(
        masked_tokens=[text_features.PAD_ID, words.oov_id, words.eos_id])]


STACKOVERFLOW_TAG = StackOverflowTags()
STACKOVERFLOW_NWP = StackOverflowNextWord()
