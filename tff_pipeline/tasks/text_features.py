"""Pure-TF text featurization for the Stack Overflow tasks.

Texts are the space-joined normalized tokens data_prep.stackoverflow writes.

Runs inside the dataset computation on the executor, so vocabularies are
static lookup tables built in the graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

SEQUENCE_LENGTH = 20  # TFF's Stack Overflow next-word baseline.
PAD_ID = 0


def _index_table(keys: Sequence[str], first_id: int,
                 default_id: int) -> tf.lookup.StaticHashTable:
  """keys[i] -> first_id + i; anything else -> default_id."""
  return tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(
          tf.constant(list(keys), tf.string),
          tf.range(first_id, first_id + len(keys), dtype=tf.int64)),
      default_value=default_id)


def _known_ids(texts: tf.Tensor, keys: Sequence[str],
               sep: str) -> tf.RaggedTensor:
  """Split texts -> 0-based ids of known keys (unknown ones dropped)."""
  ids = tf.ragged.map_flat_values(_index_table(keys, 0, -1).lookup,
                                  tf.strings.split(texts, sep=sep))
  return tf.ragged.boolean_mask(ids, ids >= 0)


class WordIds:
  """Word ids: 0 pad, 1..V the vocabulary, then OOV, BOS, EOS."""

  def __init__(self, vocab: Sequence[str]):
    self.vocab = list(vocab)
    self.oov_id = len(self.vocab) + 1
    self.bos_id = len(self.vocab) + 2
    self.eos_id = len(self.vocab) + 3
    self.size = len(self.vocab) + 4

  def table(self) -> tf.lookup.StaticHashTable:
    return _index_table(self.vocab, 1, self.oov_id)


def bag_of_words(texts: tf.Tensor, vocab: Sequence[str]) -> tf.Tensor:
  """[batch] texts -> [batch, len(vocab)] in-vocabulary word frequencies."""
  ids = _known_ids(texts, vocab, sep=' ')
  counts = tf.math.bincount(tf.cast(ids, tf.int32), minlength=len(vocab),
                            maxlength=len(vocab), dtype=tf.float32, axis=-1)
  total = tf.reduce_sum(counts, axis=1, keepdims=True)
  return tf.math.divide_no_nan(counts, total)


def multi_hot_tags(tags: tf.Tensor, tag_vocab: Sequence[str]) -> tf.Tensor:
  """[batch] '|'-joined tags -> [batch, len(tag_vocab)] 0/1 (unknown dropped)."""
  ids = _known_ids(tags, tag_vocab, sep='|')
  return tf.math.bincount(tf.cast(ids, tf.int32), minlength=len(tag_vocab),
                          maxlength=len(tag_vocab), dtype=tf.float32, axis=-1,
                          binary_output=True)


def word_sequences(texts: tf.Tensor, words: WordIds,
                   length: int = SEQUENCE_LENGTH) -> tuple[tf.Tensor, tf.Tensor]:
  """[batch] texts -> (x, y) int64 [batch, length]: BOS + ids (+ EOS), cut
  to length + 1 and padded; y is x shifted by one word."""
  ids = tf.ragged.map_flat_values(words.table().lookup,
                                  tf.strings.split(texts, sep=' '))
  batch = tf.shape(texts, out_type=tf.int64)[0]
  bos = tf.fill([batch, 1], tf.constant(words.bos_id, tf.int64))
  eos = tf.fill([batch, 1], tf.constant(words.eos_id, tf.int64))
  tokens = tf.concat([tf.RaggedTensor.from_tensor(bos), ids,
                      tf.RaggedTensor.from_tensor(eos)], axis=1)
  dense = tokens.to_tensor(default_value=PAD_ID, shape=[None, length + 1])
  return dense[:, :-1], dense[:, 1:]
