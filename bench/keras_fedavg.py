"""A plain Keras FedAvg loop: the reference our TFF pipeline is measured against.

Same clients, sampling, shuffles, initial weights and client optimizer as
`tff_pipeline.learning.loop`, but each client trains with `model.fit` in this
process, one after the other, and the server averages weights in NumPy.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Optional

import tensorflow as tf

from tff_pipeline.learning import client_data
from tff_pipeline.learning import evaluation
from tff_pipeline.learning import sampling
from tff_pipeline.core.config import TrainConfig
from tff_pipeline.tasks.base import Task


def run(task: Task, config: TrainConfig,
        on_round: Optional[Callable[[dict[str, Any]], None]] = None
        ) -> list[dict[str, Any]]:
  """Trains `config.rounds` rounds of weighted FedAvg (server lr 1, SGD)."""
  if config.algorithm != 'fedavg' or config.server_optimizer != 'sgd' or (
      config.server_learning_rate != 1.0) or config.client_optimizer != 'sgd':
    raise ValueError('the Keras reference implements plain FedAvg with SGD')
  model = task.model_builder()
  model.compile(optimizer=tf.keras.optimizers.SGD(config.client_learning_rate),
                loss=task.loss_builder(), metrics=task.metrics_builder())
  evaluator = evaluation.CentralEvaluator(task, config.eval_batch_size)
  global_weights = model.get_weights()
  ids = task.manifest.client_ids()
  largest = max(i.num_examples for i in task.manifest.clients)
  rows = []
  for round_num in range(1, config.rounds + 1):
    start = time.monotonic()
    sampled = sampling.sample_clients(ids, config.clients_per_round,
                                      config.seed, round_num)
    total, summed, losses = 0, None, []
    for c in sampled:
      key = tf.constant(client_data.client_key(
          c, client_data.shuffle_seed(config.seed, round_num, c)))
      dataset = client_data.client_dataset(
          key, task.manifest.shard_dir, task.batched,
          config.client_epochs, config.client_batch_size, largest)
      model.set_weights(global_weights)
      for v in model.optimizer.variables:  # Fresh client optimizer state.
        v.assign(tf.zeros_like(v))
      history = model.fit(dataset, epochs=1, verbose=0)
      n = task.manifest.client(c).num_examples
      losses.append((history.history['loss'][-1], n))
      weights = model.get_weights()
      summed = ([w * n for w in weights] if summed is None else
                [s + w * n for s, w in zip(summed, weights)])
      total += n
    global_weights = [s / total for s in summed]
    row = {'round': round_num, 'round_seconds': time.monotonic() - start,
           'train': {'loss': sum(l * n for l, n in losses) / total}}
    due = config.eval_every and round_num % config.eval_every == 0
    if due or round_num == config.rounds:
      model.set_weights(global_weights)
      row['eval'] = evaluator.evaluate_keras(model)
    rows.append(row)
    if on_round:
      on_round(row)
    print(f'  keras round {round_num}: {row["round_seconds"]:.1f}s'
          + (f'  eval acc {row["eval"]["accuracy"]:.4f}' if 'eval' in row else ''),
          file=sys.stderr)
  return rows
