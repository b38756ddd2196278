"""MovieLens matrix factorization with Federated Reconstruction.

Item embeddings are global and trained with FedAvg-style updates; each
user's embedding is local: it is rebuilt on the client from the user's own
ratings every round and never leaves it (`tff.learning.algorithms.
build_fed_recon`). Evaluation reconstructs each held-out user's embedding from
their training ratings and scores their held-out ratings
(`build_fed_recon_eval`), as in TFF's reconstruction tutorial.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from data_prep import movielens as movielens_prep
from data_prep import shards
from tff_pipeline import keras_metrics
from tff_pipeline import optimizers
from tff_pipeline.config import TrainConfig

EMBEDDING_DIM = 50
# Rebuilding a user's embedding is a small least-squares fit (dim + 1
# numbers): two passes over the user's ratings, in batches of
# --client_batch_size, at a step that halves the user-bias error per step
# (its curvature is 2 * scale^2 ~ 2). Training and evaluation rebuild it the
# same way; --client_learning_rate is the step for the global item weights.
RECONSTRUCTION_EPOCHS = 2
RECONSTRUCTION_LEARNING_RATE = 0.25
_PARSE_BATCH = 256


class UserEmbedding(tf.keras.layers.Layer):
  """The one local user vector, repeated for every row of the batch."""

  def __init__(self, dim: int, seed: int = 0, **kwargs):
    super().__init__(**kwargs)
    self._dim = dim
    self._seed = seed

  def build(self, input_shape):
    self.embedding = self.add_weight(
        shape=(1, self._dim), name='user_embedding',
        initializer=tf.keras.initializers.RandomNormal(stddev=0.1,
                                                       seed=self._seed))

  def call(self, inputs):
    return tf.tile(self.embedding, [tf.shape(inputs)[0], 1])


def create_matrix_factorization(num_items: int, dim: int = EMBEDDING_DIM,
                                seed: int = 0) -> tuple[tf.keras.Model, list, list]:
  """(model, global layers, local layers); input item ids [batch, 1].

  rating = scale * (item . user + user bias + item bias) + offset. The user
  vector and bias are the local part; item vectors, item biases, scale and
  offset are global.
  """
  item_input = tf.keras.layers.Input(shape=[1], dtype=tf.int64)
  item_embedding = tf.keras.layers.Embedding(
      num_items, dim, embeddings_initializer=tf.keras.initializers.RandomNormal(
          stddev=0.1, seed=seed + 1), name='item_embedding')
  item_bias = tf.keras.layers.Embedding(num_items, 1, embeddings_initializer='zeros',
                                        name='item_bias')
  # The extra coordinate meets a constant 1 on the item side: a user bias.
  user_embedding = UserEmbedding(dim + 1, seed=seed + 2, name='user_embedding')
  items = tf.keras.layers.Flatten()(item_embedding(item_input))
  items = tf.keras.layers.Concatenate()([items, tf.ones_like(items[:, :1])])
  users = user_embedding(item_input)
  dot = tf.keras.layers.Dot(axes=1)([items, users])
  score = tf.keras.layers.Add()(
      [dot, tf.keras.layers.Flatten()(item_bias(item_input))])
  # scale * score + offset; the offset starts near the mean rating. (A zero
  # scale would block every gradient to the embeddings.)
  output = tf.keras.layers.Dense(
      1, kernel_initializer='ones',
      bias_initializer=tf.keras.initializers.Constant(3.5), name='output')
  model = tf.keras.Model(inputs=item_input, outputs=output(score))
  return model, [item_embedding, item_bias, output], [user_embedding]


def parse_ratings(batch: dict[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
  items = tf.expand_dims(batch['item'], -1)
  ratings = tf.expand_dims(tf.cast(batch['rating'], tf.float32), -1)
  return items, ratings


def input_spec() -> tuple[tf.TensorSpec, tf.TensorSpec]:
  return (tf.TensorSpec([None, 1], tf.int64), tf.TensorSpec([None, 1], tf.float32))


def model_fn_for(num_items: int, seed: int) -> Callable[[], Any]:
  def model_fn():
    model, global_layers, local_layers = create_matrix_factorization(
        num_items, seed=seed)
    return tff.learning.models.ReconstructionModel.from_keras_model_and_layers(
        model, global_layers=global_layers, local_layers=local_layers,
        input_spec=input_spec())
  return model_fn


def _loss():
  return tf.keras.losses.MeanSquaredError()


def _metrics():
  return [tf.keras.metrics.RootMeanSquaredError(name='rmse'),
          keras_metrics.RatingAccuracy(name='accuracy')]


def build_training_process(manifest: shards.Manifest, config: TrainConfig,
                           dataset_computation: tff.Computation
                           ) -> tff.learning.templates.LearningProcess:
  """Fed Recon over client keys (datasets built on the executor)."""
  process = tff.learning.algorithms.build_fed_recon(
      model_fn_for(manifest.source['num_items'], config.seed),
      loss_fn=_loss,
      metrics_fn=_metrics,
      client_optimizer_fn=optimizers.client_optimizer(config),
      server_optimizer_fn=optimizers.server_optimizer(config),
      reconstruction_optimizer_fn=optimizers.build(
          'sgd', RECONSTRUCTION_LEARNING_RATE),
      dataset_split_fn=tff.learning.models.ReconstructionModel
      .build_dataset_split_fn(recon_epochs=RECONSTRUCTION_EPOCHS),
  )
  return tff.simulation.compose_dataset_computation_with_learning_process(
      dataset_computation, process)


def _eval_split_fn(batch_size: int) -> Callable[
    [tf.data.Dataset], tuple[tf.data.Dataset, tf.data.Dataset]]:
  """Splits an eval client's dataset into reconstruction and scored parts."""

  def split(dataset):
    # An eval client's dataset holds its reconstruction ratings as +r and the
    # ratings to score as -r (ratings are 1..5): one dataset carries both.
    # Reconstruction runs as in training: same batch size and epochs.
    rows = dataset.unbatch()
    recon = rows.filter(lambda x, y: y[0] > 0).batch(batch_size).repeat(
        RECONSTRUCTION_EPOCHS)
    scored = rows.filter(lambda x, y: y[0] < 0).map(
        lambda x, y: (x, -y)).batch(_PARSE_BATCH)
    return recon, scored

  return split


class FedReconEvaluator:
  """Federated evaluation on every user that has held-out ratings."""

  def __init__(self, manifest: shards.Manifest, config: TrainConfig):
    features = manifest.features
    shard_dir = manifest.shard_dir

    def parse(serialized):
      return shards.parse_batch(serialized, features)

    by_user_dir = _eval_shards_by_user(manifest)

    @tff.tensorflow.computation(tf.string)
    def eval_dataset(client_id):
      def read(path):
        return (tf.data.TFRecordDataset(path).batch(_PARSE_BATCH).map(parse)
                .map(parse_ratings))
      recon = read(shards.shard_path(shard_dir, client_id))
      scored = read(shards.shard_path(by_user_dir, client_id)).map(
          lambda x, y: (x, -y))
      return recon.concatenate(scored)

    evaluation = tff.learning.algorithms.build_fed_recon_eval(
        model_fn_for(manifest.source['num_items'], config.seed),
        loss_fn=_loss, metrics_fn=_metrics,
        reconstruction_optimizer_fn=optimizers.build(
            'sgd', RECONSTRUCTION_LEARNING_RATE),
        dataset_split_fn=_eval_split_fn(config.client_batch_size))
    self._process = tff.simulation.compose_dataset_computation_with_learning_process(
        eval_dataset, evaluation)
    self._keys = shards.load_manifest(by_user_dir).client_ids()

  def evaluate(self, weights: tff.learning.models.ModelWeights) -> dict[str, float]:
    state = self._process.set_model_weights(self._process.initialize(), weights)
    metrics = self._process.next(state, self._keys).metrics
    current = metrics['client_work']['eval']['current_round_metrics']
    return {'loss': float(current['loss']), 'rmse': float(current['rmse']),
            'accuracy': float(current['accuracy'])}


def _eval_shards_by_user(manifest: shards.Manifest) -> str:
  """The held-out ratings as one shard per user, built once.

  Scanning the whole eval shard for every user made one evaluation of 943
  users take minutes; a shard per user makes it a plain read. The shard dir
  sits beside the training shards, keyed by the eval shard's sha256.
  """
  target = f'{manifest.shard_dir}-eval-by-user-{manifest.eval.sha256[:12]}'
  existing = shards.load_if_matching(
      target, lambda m: m.source.get('eval_sha256') == manifest.eval.sha256)
  if existing is not None:
    return target
  columns = shards.read_numpy(manifest, manifest.eval)
  client_ids = movielens_prep.user_client_ids(
      np.array(manifest.source['user_ids']))
  order = np.argsort(columns['user'], kind='stable')
  users = columns['user'][order]
  starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
  per_user = (
      (client_ids[int(users[start])],
       {name: values[order[start:end]] for name, values in columns.items()})
      for start, end in zip(starts, np.r_[starts[1:], len(users)]))
  shards.write_shards(
      target, manifest.task, manifest.features, per_user, eval_examples=None,
      num_classes=None, partition=dict(manifest.partition),
      source={'eval_sha256': manifest.eval.sha256}, label_key=None)
  return target
