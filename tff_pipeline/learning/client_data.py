"""Client datasets built from a client key on the executor.

Training never ships examples through the runtime: the learning process is
composed with a TFF dataset computation that maps a *client key* (the client
id plus this round's shuffle seed) to a `tf.data.Dataset` read from that
client's shard, wherever the computation runs.
"""

from __future__ import annotations

import zlib
from typing import Callable

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from data_prep import shards

_KEY_SEPARATOR = '#'
NOT_HELD_MARKER = shards.NOT_HELD_MARKER


def client_key(client_id: str, shuffle_seed: int) -> str:
  """The string a dataset computation turns into one client's dataset."""
  return f'{client_id}{_KEY_SEPARATOR}{shuffle_seed}'


def client_id_of(key: str) -> str:
  """The client id inside a client key."""
  return key.split(_KEY_SEPARATOR, 1)[0]


def shuffle_seed(seed: int, round_num: int, client_id: str) -> int:
  """A per-(run, round, client) seed, so a resumed run replays exactly."""
  client_hash = zlib.crc32(client_id.encode())
  state = np.random.SeedSequence([seed, round_num, client_hash])
  return int(state.generate_state(1, np.uint32)[0])


def client_dataset(
    key: tf.Tensor,
    shard_dir: str,
    batch_fn: Callable[[tf.data.Dataset, int], tf.data.Dataset],
    epochs: int,
    batch_size: int,
    shuffle_buffer: int,
) -> tf.data.Dataset:
  """The batched, shuffled, repeated dataset of the client named by `key`."""
  parts = tf.strings.split(key, sep=_KEY_SEPARATOR)
  client_id = parts[0]
  seed = tf.strings.to_number(parts[1], out_type=tf.int64)
  path = shards.shard_path(shard_dir, client_id)
  # On an edge pod a missing shard means the client was routed to the wrong
  # pod: say so, not just "No such file" deep inside TF.
  held = tf.debugging.Assert(
      tf.size(tf.io.matching_files(path)) > 0,
      [tf.strings.join([f'client data {NOT_HELD_MARKER} (no file ', path,
                        ' under its data dir)'])])
  with tf.control_dependencies([held]):
    path = tf.identity(path)
  dataset = tf.data.TFRecordDataset(path)
  dataset = dataset.shuffle(shuffle_buffer, seed=seed,
                            reshuffle_each_iteration=True)
  return batch_fn(dataset.repeat(epochs), batch_size)


def build_dataset_computation(
    shard_dir: str,
    batch_fn: Callable[[tf.data.Dataset, int], tf.data.Dataset],
    epochs: int,
    batch_size: int,
    shuffle_buffer: int,
) -> tff.Computation:
  """A `tff.tensorflow.computation` from a client key to its dataset."""

  @tff.tensorflow.computation(tf.string)
  def dataset_from_key(key):
    return client_dataset(key, shard_dir, batch_fn, epochs, batch_size,
                          shuffle_buffer)

  return dataset_from_key
