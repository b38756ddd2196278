"""One TFF round equals the same round written in plain Keras/NumPy."""

import os
import shutil
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
import tensorflow as tf

from data_prep import images as image_prep
from data_prep import shards
from tests import testutil
from tff_pipeline.learning import algorithms
from tff_pipeline.learning import client_data
from workers import local_runtime as runtime
from tff_pipeline.tasks import registry as tasks
from tff_pipeline import plan

CLIENT_SIZES = {'client_a': 37, 'client_b': 55, 'client_c': 20}


def _write_synthetic_shards(shard_dir: str) -> shards.Manifest:
  images, labels = testutil.synthetic_images(sum(CLIENT_SIZES.values()) + 30)
  clients, start = [], 0
  for client_id, size in CLIENT_SIZES.items():
    clients.append((client_id, {'pixels': images[start:start + size],
                                'label': labels[start:start + size]}))
    start += size
  return shards.write_shards(
      shard_dir, 'fashion_mnist', image_prep.FEATURES_SPEC, clients,
      eval_examples={'pixels': images[start:], 'label': labels[start:]},
      num_classes=10,
      partition={'method': 'iid', 'alpha': None,
                 'num_clients': len(CLIENT_SIZES), 'seed': 0},
      source={'synthetic': True})


def _reference_round(task, config, w0, client_batches):
  """FedAvg/FedProx round with a Keras model and explicit SGD steps."""
  model = task.model_builder()
  loss_fn = task.loss_builder()
  deltas, weights = [], []
  for batches in client_batches:
    model.set_weights(w0)
    anchor = [tf.constant(w) for w in w0]
    examples = 0
    for x, y in batches:
      with tf.GradientTape() as tape:
        predictions = model(x, training=True)
        loss = loss_fn(y, predictions)
        if model.losses:
          loss += tf.add_n(model.losses)
      grads = tape.gradient(loss, model.trainable_variables)
      for var, grad, w_start in zip(model.trainable_variables, grads, anchor):
        if config.algorithm == 'fedprox':
          grad += config.fedprox_mu * (var - w_start)
        var.assign_sub(config.client_learning_rate * grad)
      examples += int(tf.shape(y)[0])
    deltas.append([a - b for a, b in zip(w0, model.get_weights())])
    weights.append(examples)
  total = sum(weights)
  mean_delta = [sum(w * d[i] for w, d in zip(weights, deltas)) / total
                for i in range(len(w0))]
  return [w - config.server_learning_rate * d for w, d in zip(w0, mean_delta)]


class FedAvgReferenceTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    runtime.use_local_runtime()
    cls._tmp = tempfile.mkdtemp()
    cls._manifest = _write_synthetic_shards(os.path.join(cls._tmp, 'shards'))

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls._tmp)
    super().tearDownClass()

  @parameterized.named_parameters(
      ('fedavg', dict(algorithm='fedavg')),
      ('fedavg_server_lr_weight_decay',
       dict(algorithm='fedavg', server_learning_rate=0.7, weight_decay=1e-2)),
      ('fedprox', dict(algorithm='fedprox', fedprox_mu=0.5)),
  )
  def test_one_round_matches_plain_keras(self, overrides):
    config = plan.resolve_config({}, dict(
        model='2nn', num_clients=3, clients_per_round=3, client_epochs=2,
        client_batch_size=8, client_learning_rate=0.05, seed=3,
        output_dir=self._tmp, **overrides))
    task = plan.bind_task(config, self._manifest)
    process = plan.training_process(config, task)
    state = algorithms.initial_state(process, task)
    w0 = [np.array(w) for w in process.get_model_weights(state).trainable]
    keys = [client_data.client_key(c, 100 + i)
            for i, c in enumerate(CLIENT_SIZES)]

    new_state = process.next(state, keys).state
    tff_weights = process.get_model_weights(new_state).trainable

    # The reference sees exactly the batches TFF's dataset computation makes.
    dataset_computation = algorithms.build_dataset_computation(task, config.client_epochs, config.client_batch_size)
    client_batches = [list(dataset_computation(k)) for k in keys]
    for batches, size in zip(client_batches, CLIENT_SIZES.values()):
      self.assertEqual(sum(int(tf.shape(y)[0]) for _, y in batches),
                       size * config.client_epochs)
    expected = _reference_round(task, config, w0, client_batches)

    moved = max(float(np.max(np.abs(e - w))) for e, w in zip(expected, w0))
    self.assertGreater(moved, 1e-3)  # The round really trained.
    for got, want in zip(tff_weights, expected):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

  def test_shuffle_depends_on_key_seed(self):
    config = plan.resolve_config({}, dict(
        model='lr', num_clients=3, clients_per_round=3, client_batch_size=64,
        output_dir=self._tmp))
    task = plan.bind_task(config, self._manifest)
    dataset_computation = algorithms.build_dataset_computation(task, config.client_epochs, config.client_batch_size)

    def labels(seed):
      (_, y), = list(dataset_computation(client_data.client_key('client_b', seed)))
      return y.numpy().tolist()

    self.assertEqual(labels(1), labels(1))
    self.assertNotEqual(labels(1), labels(2))
    self.assertCountEqual(labels(1), labels(2))


if __name__ == '__main__':
  absltest.main()
