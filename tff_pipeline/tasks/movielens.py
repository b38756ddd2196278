"""MovieLens recommendation: matrix factorization, Federated Reconstruction.

Item embeddings are global and trained with FedAvg-style updates; each
user's embedding is local: it is rebuilt on the client from the user's own
ratings every round and never leaves it (`tff.learning.algorithms.
build_fed_recon`). Evaluation reconstructs each held-out user's embedding from
their training ratings and scores their held-out ratings
(`build_fed_recon_eval`), as in TFF's reconstruction tutorial (Singhal et
al. 2021, "Federated Reconstruction: Partially Local Federated Learning").
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Optional, Sequence

import tensorflow as tf
import tensorflow_federated as tff

from data_prep import movielens as movielens_prep
from data_prep import shards
from data_prep.errors import UserError
from tff_pipeline.tasks import base
from tff_pipeline.tasks import keras_metrics

EMBEDDING_DIM = 50
# L2 penalties per rating on the rows it touches: lambda * ||row||^2 for the
# rated item's vector and bias, and for the user's vector and bias. Without
# them item vectors grow with every round and held-out RMSE rises after ~30
# rounds; the user penalty makes reconstruction a well-posed ridge fit for
# users with few ratings.
ITEM_L2 = 0.05
USER_L2 = 0.3
# Rebuilding a user's embedding is that ridge fit (dim + 1 numbers), solved by
# full-batch gradient descent: the rate must stay below 2 / curvature (the
# curvature 2 * (USER_L2 + top eigenvalue of the user's item Gram matrix) was
# at most 5.7 over all u1.base users of a trained model) and converges at
# 1 - 2 * rate * USER_L2 per step, so 30 steps leave ~2% of the initial error.
# Training and evaluation rebuild it the same way; --client_learning_rate is
# the step for the global item weights.
RECONSTRUCTION_EPOCHS = 30
RECONSTRUCTION_LEARNING_RATE = 0.2
_RECONSTRUCTION_BATCH = 1 << 16  # One batch holds all of a user's ratings.
_PARSE_BATCH = 256
_MEAN_RATING = 3.5


def gather_with_l2(table: tf.Tensor, ids: tf.Tensor, l2: float) -> tf.Tensor:
  """`tf.gather(table, ids)` whose gradient includes a per-row L2 penalty.

  TFF's Federated Reconstruction differentiates only `loss_fn(labels,
  predictions)` (Keras regularization losses are not added), so the penalty
  enters through the gradient: for a loss averaged over the batch, each looked
  up row gets 2 * l2 * row / batch_size more, which is the gradient of
  mean over the batch of l2 * ||row||^2. The forward value, and so every
  reported loss and metric, is the unpenalized one.

  Args:
    table: [rows, width] values (a variable's value).
    ids: [batch] int row indices.
    l2: The penalty per lookup.
  """

  @tf.custom_gradient
  def gather(values):
    rows = tf.gather(values, ids)

    def grad(upstream):
      batch_size = tf.cast(tf.shape(ids)[0], rows.dtype)
      per_lookup = upstream + (2.0 * l2 / batch_size) * rows
      return tf.math.unsorted_segment_sum(per_lookup, ids, tf.shape(values)[0])

    return rows, grad

  return gather(table)


class PenalizedEmbedding(tf.keras.layers.Layer):
  """An embedding table with an L2 penalty per lookup (see gather_with_l2)."""

  def __init__(self, rows: int, width: int, l2: float,
               initializer: Any = 'zeros', **kwargs):
    super().__init__(**kwargs)
    self._rows = rows
    self._width = width
    self._l2 = l2
    self._initializer = tf.keras.initializers.get(initializer)

  def build(self, input_shape):
    self.embeddings = self.add_weight(
        shape=(self._rows, self._width), name='embeddings',
        initializer=self._initializer)

  def call(self, ids):
    return gather_with_l2(self.embeddings, tf.reshape(ids, [-1]), self._l2)


class UserEmbedding(PenalizedEmbedding):
  """The one local user vector, looked up for every rating of the batch."""

  def __init__(self, width: int, l2: float, seed: int = 0, **kwargs):
    super().__init__(1, width, l2, tf.keras.initializers.RandomNormal(
        stddev=0.1, seed=seed), **kwargs)

  def call(self, item_ids):
    return super().call(tf.zeros_like(item_ids))


class Offset(tf.keras.layers.Layer):
  """A learned constant added to every prediction (starts at the mean)."""

  def build(self, input_shape):
    self.offset = self.add_weight(
        shape=(1,), name='offset',
        initializer=tf.keras.initializers.Constant(_MEAN_RATING))

  def call(self, inputs):
    return inputs + self.offset


def create_matrix_factorization(num_items: int, dim: int = EMBEDDING_DIM,
                                seed: int = 0) -> tuple[tf.keras.Model, list, list]:
  """(model, global layers, local layers); input item ids [batch, 1].

  rating = item . user + user bias + item bias + offset. The user vector and
  bias are the local part; item vectors, item biases and the offset are
  global. Each rating penalizes its item's vector and bias by ITEM_L2 and the
  user's by USER_L2 (squared norms).
  """
  item_input = tf.keras.layers.Input(shape=[1], dtype=tf.int64)
  item_embedding = PenalizedEmbedding(
      num_items, dim, ITEM_L2,
      tf.keras.initializers.RandomNormal(stddev=0.1, seed=seed + 1),
      name='item_embedding')
  item_bias = PenalizedEmbedding(num_items, 1, ITEM_L2, name='item_bias')
  # The extra coordinate meets a constant 1 on the item side: a user bias.
  user_embedding = UserEmbedding(dim + 1, USER_L2, seed=seed + 2,
                                 name='user_embedding')
  items = item_embedding(item_input)
  items = tf.keras.layers.Concatenate()([items, tf.ones_like(items[:, :1])])
  users = user_embedding(item_input)
  dot = tf.keras.layers.Dot(axes=1)([items, users])
  offset = Offset(name='offset')
  score = offset(tf.keras.layers.Add()([dot, item_bias(item_input)]))
  model = tf.keras.Model(inputs=item_input, outputs=score)
  return model, [item_embedding, item_bias, offset], [user_embedding]


GLOBAL_LAYERS = ('item_embedding', 'item_bias', 'offset')


def assign_global_weights(model: tf.keras.Model, weights: Any) -> None:
  """Puts Fed Recon's global weights (items, offset) into the Keras model.

  Their order is TFF's: the variables of the global layers, layer by layer
  (`ReconstructionModel.from_keras_model_and_layers`). The user embedding
  keeps its initial value: it is rebuilt on each user's device.
  """
  variables = [v for name in GLOBAL_LAYERS
               for v in model.get_layer(name).trainable_variables]
  for variable, value in zip(variables, weights.trainable, strict=True):
    variable.assign(value)


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


def _reconstruction_optimizer() -> tff.learning.optimizers.Optimizer:
  return tff.learning.optimizers.build_sgdm(
      learning_rate=RECONSTRUCTION_LEARNING_RATE)


def build_training_process(
    num_items: int, seed: int, dataset_computation: tff.Computation,
    client_optimizer: tff.learning.optimizers.Optimizer,
    server_optimizer: tff.learning.optimizers.Optimizer,
    aggregator: Optional[tff.aggregators.UnweightedAggregationFactory] = None,
    metrics_aggregator: Optional[Callable[..., tff.Computation]] = None,
) -> tff.learning.templates.LearningProcess:
  """Fed Recon over client keys (datasets built on the executor).

  Args:
    num_items: Rows of the global item embedding.
    seed: Seed of the initial weights.
    dataset_computation: Client key -> the client's ratings dataset.
    client_optimizer: Steps on the global item weights.
    server_optimizer: Applies the averaged item update.
    aggregator: None: TFF's weighted mean of the item-weight updates; else an
      unweighted factory (SecAgg, DP): each user counts once, as in
      DP-FedAvg.
    metrics_aggregator: How training metrics are aggregated (None: TFF's
      sum_then_finalize); DP runs pass one that withholds them.
  """
  metrics = ({'metrics_aggregator': metrics_aggregator}
             if metrics_aggregator is not None else {})
  process = tff.learning.algorithms.build_fed_recon(
      model_fn_for(num_items, seed),
      loss_fn=_loss,
      metrics_fn=_metrics,
      client_optimizer_fn=client_optimizer,
      server_optimizer_fn=server_optimizer,
      reconstruction_optimizer_fn=_reconstruction_optimizer(),
      dataset_split_fn=_train_split_fn,
      model_aggregator_factory=aggregator,
      client_weighting=(None if aggregator is None
                        else tff.learning.ClientWeighting.UNIFORM),
      **metrics,
  )
  return tff.simulation.compose_dataset_computation_with_learning_process(
      dataset_computation, process)


def _reconstruction_passes(rows: tf.data.Dataset) -> tf.data.Dataset:
  """Full-batch gradient steps over a user's ratings (see RECONSTRUCTION_*)."""
  return rows.batch(_RECONSTRUCTION_BATCH).repeat(RECONSTRUCTION_EPOCHS)


def _train_split_fn(
    dataset: tf.data.Dataset) -> tuple[tf.data.Dataset, tf.data.Dataset]:
  """Reconstruction on all of a client's ratings, then one pass of training.

  The training pass keeps the dataset's --client_batch_size batches.
  """
  return _reconstruction_passes(dataset.unbatch()), dataset


def _eval_split_fn(
    dataset: tf.data.Dataset) -> tuple[tf.data.Dataset, tf.data.Dataset]:
  """Splits an eval client's dataset into reconstruction and scored parts.

  An eval client's dataset holds its reconstruction ratings as +r and the
  ratings to score as -r (ratings are 1..5): one dataset carries both.
  Reconstruction runs as in training.
  """
  rows = dataset.unbatch()
  recon = _reconstruction_passes(rows.filter(lambda x, y: y[0] > 0))
  scored = rows.filter(lambda x, y: y[0] < 0).map(
      lambda x, y: (x, -y)).batch(_PARSE_BATCH)
  return recon, scored


# Runs a round computation, `(state, client keys) -> output`, where the
# clients' data is: the local runtime calls it; a cluster fans it out.
Distribute = Callable[[tff.Computation], Callable[[Any, list[str]], Any]]


class FedReconEvaluator:
  """Federated evaluation on every user that has held-out ratings.

  Each user rebuilds their embedding from their training ratings
  (clients/<id>) and is scored on their held-out ratings
  (held_out/clients/<id>), read where both live: the prepared shard dir in
  the local runtime, the user's own pod (paths relative to its shard dir) on
  a cluster.
  """

  def __init__(self, manifest: shards.Manifest, seed: int,
               held_out_clients: Optional[Sequence[str]] = None,
               distribute: Optional[Distribute] = None):
    """Builds the evaluation.

    Args:
      manifest: The training shards (shard_dir '.' on pods).
      seed: The model's seed (as in training).
      held_out_clients: Users to evaluate; None: those of the local shard
        dir's held_out/ (data_prep.movielens writes it).
      distribute: Where evaluation rounds run; None: the current context.
    """
    if held_out_clients is None:
      held_out = shards.load_held_out(manifest)
      if held_out is None:
        raise UserError(f'{manifest.shard_dir} has no {shards.HELD_OUT_DIR}/ '
                        'of per-user held-out ratings; prepare it with '
                        'python -m data_prep.movielens')
      held_out_clients = held_out.client_ids()
    features = manifest.features
    shard_dir = manifest.shard_dir
    held_out_dir = os.path.join(shard_dir, shards.HELD_OUT_DIR)

    def parse(serialized):
      return shards.parse_batch(serialized, features)

    @tff.tensorflow.computation(tf.string)
    def eval_dataset(client_id):
      def read(path):
        return (tf.data.TFRecordDataset(path).batch(_PARSE_BATCH).map(parse)
                .map(parse_ratings))
      recon = read(shards.shard_path(shard_dir, client_id))
      scored = read(shards.shard_path(held_out_dir, client_id)).map(
          lambda x, y: (x, -y))
      return recon.concatenate(scored)

    evaluation = tff.learning.algorithms.build_fed_recon_eval(
        model_fn_for(manifest.source['num_items'], seed),
        loss_fn=_loss, metrics_fn=_metrics,
        reconstruction_optimizer_fn=_reconstruction_optimizer(),
        dataset_split_fn=_eval_split_fn)
    self._process = tff.simulation.compose_dataset_computation_with_learning_process(
        eval_dataset, evaluation)
    self._next = (distribute(self._process.next) if distribute is not None
                  else self._process.next)
    self._keys = list(held_out_clients)

  @property
  def client_ids(self) -> list[str]:
    return list(self._keys)

  def evaluate(self, weights: tff.learning.models.ModelWeights) -> dict[str, float]:
    state = self._process.set_model_weights(self._process.initialize(), weights)
    metrics = self._next(state, self._keys).metrics
    current = metrics['client_work']['eval']['current_round_metrics']
    return {'loss': float(current['loss']), 'rmse': float(current['rmse']),
            'accuracy': float(current['accuracy'])}


class MovieLens(base.TaskFamily):
  """One client per user; item embeddings global, user embeddings local."""

  name = 'movielens'
  model_names = ('mf',)
  # TFF's reconstruction tutorial: local user embeddings, global items. An
  # item is in few of a round's users: averaged, its update is tiny, so the
  # server step is Adam's. With the L2 penalties above, held-out RMSE on
  # u1.test is 0.982 / 0.954 / 0.942 / 0.939 after 10 / 20 / 30 / 40 rounds.
  # Evaluating 459 users takes over a minute: only at the end.
  defaults = dict(model='mf', partition='natural', num_clients=0,
                  client_learning_rate=0.1, client_batch_size=16,
                  clients_per_round=50, rounds=40, eval_every=0,
                  server_optimizer='adam', server_learning_rate=0.03)

  def prepare(self, data: base.DataOptions) -> shards.Manifest:
    base.require_data_dir(data, self.name, 'a MovieLens 100K folder (u.data, '
                          'u1.base, u1.test) or 1M (ratings.dat)')
    base.require_natural_clients(data, self.name, 'users')
    return movielens_prep.find_or_prepare(data.data_dir, data.shard_dir)

  def preprocess(self, manifest: shards.Manifest) -> base.Preprocess:
    del manifest
    return parse_ratings

  def model(self, manifest: shards.Manifest, model_name: str, seed: int,
            weight_decay: float) -> tf.keras.Model:
    del model_name, weight_decay  # L2 is per rating (see gather_with_l2).
    return create_matrix_factorization(manifest.source['num_items'],
                                       seed=seed)[0]

  def loss(self, manifest: shards.Manifest) -> tf.keras.losses.Loss:
    del manifest
    return tf.keras.losses.MeanSquaredError()

  def process_builder(self, manifest: shards.Manifest, seed: int):
    num_items = manifest.source['num_items']
    return lambda datasets, client_optimizer, server_optimizer, aggregator, \
        metrics_aggregator=None: build_training_process(
            num_items, seed, datasets, client_optimizer, server_optimizer,
            aggregator, metrics_aggregator)

  def bind(self, manifest: shards.Manifest, model_name: str, seed: int,
           weight_decay: float = 0.0) -> base.Task:
    task = super().bind(manifest, model_name, seed, weight_decay)
    return dataclasses.replace(task, assign_weights=assign_global_weights)

  def evaluator_builder(self, manifest: shards.Manifest, seed: int):
    return lambda held_out_clients=None, distribute=None: FedReconEvaluator(
        manifest, seed, held_out_clients, distribute)


MOVIELENS = MovieLens()
