import os

from absl.testing import absltest
import numpy as np
import tensorflow as tf

from data_prep import shakespeare as shakespeare_prep
from data_prep import shards
from data_prep import testing
from tff_pipeline.tasks import keras_metrics
from tff_pipeline.tasks import shakespeare


def _snippets(manifest, info):
  return [s.decode("utf-8")
          for s in shards.read_numpy(manifest, info)["snippet"]]


class ToSequencesTest(absltest.TestCase):

  def test_vocab_matches_tff(self):
    # pylint: disable=g-import-not-at-top
    from tensorflow_federated.python.simulation.baselines.shakespeare import (
        char_prediction_preprocessing as tff_preprocessing)
    self.assertEqual(shakespeare.CHAR_VOCAB, tff_preprocessing.CHAR_VOCAB)
    self.assertLen(shakespeare.CHAR_VOCAB, 86)
    self.assertEqual(
        (shakespeare.PAD_ID, shakespeare.OOV_ID, shakespeare.BOS_ID,
         shakespeare.EOS_ID), tff_preprocessing.get_special_tokens())
    self.assertEqual(shakespeare.VOCAB_SIZE, 90)

  def test_matches_tff_tokenizer(self):
    # pylint: disable=g-import-not-at-top
    from tensorflow_federated.python.simulation.baselines.shakespeare import (
        char_prediction_preprocessing as tff_preprocessing)
    snippets = ["To be, or not to be:\nthat is the question.", "",
                "x" * 79, "y" * 80, "Zounds! ~ {odd} \t chars" * 7]
    # pylint: disable-next=protected-access
    tokenize = tff_preprocessing._build_tokenize_fn(81)
    expected = np.concatenate(
        [tokenize({"snippets": tf.constant(s)}).numpy() for s in snippets])
    x, y = shakespeare.to_sequences(tf.constant(snippets))
    chunks = expected.reshape(-1, 81)
    np.testing.assert_array_equal(x.numpy(), chunks[:, :-1])
    np.testing.assert_array_equal(y.numpy(), chunks[:, 1:])

  def test_shapes_padding_and_decoding(self):
    texts = ["Who's there?", "a" * 79, "b" * 80, "Long live the king!\n" * 9]
    x, y = shakespeare.to_sequences(tf.constant(texts))
    self.assertEqual(x.dtype, tf.int64)
    # BOS + n + EOS tokens padded to multiples of 81: 1, 1, 2, 3 chunks.
    self.assertEqual(x.shape, (7, 80))
    self.assertEqual(y.shape, (7, 80))
    x, y = x.numpy(), y.numpy()
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    self.assertEqual(x[0, 0], shakespeare.BOS_ID)
    self.assertEqual(y[0, 12], shakespeare.EOS_ID)
    np.testing.assert_array_equal(y[0, 13:], 0)
    self.assertEqual(y[1, 79], shakespeare.EOS_ID)  # 81 tokens exactly.
    self.assertEqual(x[2, 0], shakespeare.BOS_ID)
    self.assertEqual(x[3, 0], shakespeare.EOS_ID)  # 82nd token of "b" * 80.
    np.testing.assert_array_equal(x[3, 1:], 0)
    # Rebuild the token stream from chunk[0] + y: split at BOS, decode.
    stream = np.concatenate([x[:, :1], y], axis=1).reshape(-1)
    decoded = [shakespeare.decode_ids(part)
               for part in np.split(stream, np.flatnonzero(
                   stream == shakespeare.BOS_ID))[1:]]
    self.assertEqual(decoded, texts)
    self.assertEqual(shakespeare.decode_ids([shakespeare.OOV_ID]), "\ufffd")

  def test_out_of_vocab_and_unicode(self):
    x, _ = shakespeare.to_sequences(tf.constant(["a~é\t".encode(), b"\xff"]))
    ids = x.numpy()
    oov = shakespeare.OOV_ID
    np.testing.assert_array_equal(
        ids[0, :6], [shakespeare.BOS_ID, shakespeare.CHAR_VOCAB.index("a") + 1,
                     oov, oov, oov, shakespeare.EOS_ID])
    np.testing.assert_array_equal(ids[1, :3],
                                  [shakespeare.BOS_ID, oov,
                                   shakespeare.EOS_ID])

  def test_empty_batch(self):
    x, y = shakespeare.to_sequences(tf.constant([], tf.string))
    self.assertEqual(x.shape, (0, 80))
    self.assertEqual(y.shape, (0, 80))

  def test_in_dataset_map_on_batches(self):
    texts = [testing.speech("A", i) for i in range(5)]
    dataset = tf.data.Dataset.from_tensor_slices(texts).batch(2).map(
        shakespeare.to_sequences)
    self.assertEqual(dataset.element_spec[0].shape.as_list(), [None, 80])
    batches = list(dataset)
    expected_x, expected_y = shakespeare.to_sequences(tf.constant(texts))
    np.testing.assert_array_equal(
        np.concatenate([b[0].numpy() for b in batches]), expected_x.numpy())
    np.testing.assert_array_equal(
        np.concatenate([b[1].numpy() for b in batches]), expected_y.numpy())

  def test_in_tff_computation(self):
    import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top

    @tff.tensorflow.computation(tff.TensorType(np.str_, [None]))
    def to_sequences(snippets):
      return shakespeare.to_sequences(snippets)

    texts = ["Who's there?", "Nay, answer me: stand, and unfold yourself."]
    x, y = to_sequences(texts)
    expected_x, expected_y = shakespeare.to_sequences(tf.constant(texts))
    np.testing.assert_array_equal(x, expected_x.numpy())
    np.testing.assert_array_equal(y, expected_y.numpy())

  def test_shard_snippets_feed_to_sequences(self):
    root = self.create_tempdir().full_path
    tiny = os.path.join(root, "tiny.txt")
    testing.write_tinyshakespeare(tiny, num_speakers=4)
    manifest = shakespeare_prep.prepare(tiny, os.path.join(root, "s"),
                                   eval_fraction=0.0, min_chars=0)
    info = manifest.clients[-1]
    dataset = tf.data.TFRecordDataset(manifest.path(info)).batch(3).map(
        lambda s: shards.parse_batch(s, manifest.features)["snippet"]).map(
            shakespeare.to_sequences)
    x = np.concatenate([b[0].numpy() for b in dataset])
    texts = _snippets(manifest, info)
    self.assertLen(texts, 4)
    expected_x, _ = shakespeare.to_sequences(tf.constant(texts))
    np.testing.assert_array_equal(x, expected_x.numpy())


class LeafRowsTest(absltest.TestCase):

  def test_window_rows_have_one_target(self):
    window = "To be, or not to be, that is the question: Whether 'tis nobler " \
        "in the mind to suf"
    self.assertLen(window, 81)
    x, y = shakespeare.window_rows(tf.constant([window, window[::-1]]))
    self.assertEqual(x.shape, (2, 80))
    self.assertEqual(shakespeare.decode_ids(x[0].numpy()), window[:80])
    self.assertEqual(y.numpy()[0, :79].tolist(), [0] * 79)
    self.assertEqual(shakespeare.decode_ids(y[0].numpy()), "f")
    self.assertEqual(shakespeare.decode_ids(y[1].numpy()), "T")

  def test_leaf_shards_batch_texts_and_lone_samples_apart(self):
    root = self.create_tempdir().full_path
    text = " ".join(testing.speech("ROMEO", i) for i in range(8)).replace("\n", " ")
    lone = [f"{i:03d}" + "x" * 77 + "y" for i in range(300)]  # 81 chars.
    manifest = shards.write_shards(
        root, "shakespeare", shakespeare_prep.LEAF_FEATURES_SPEC,
        [("ROMEO", {"snippet": np.array([text] + lone, dtype=object),
                    "window": np.array([0] + [1] * 300)})], None,
        num_classes=None, partition={}, source={}, label_key=None)
    task = shakespeare.SHAKESPEARE.bind(manifest, "char_lstm", 0)
    batches = list(task.batched(
        tf.data.TFRecordDataset(manifest.path(manifest.clients[0])), 8))
    text_rows = -(-(len(text) + 2) // 81)
    lone_batches = [b for b in batches if b[1].numpy()[:, :79].max() == 0]
    text_batches = [b for b in batches if b[1].numpy()[:, :79].max() > 0]
    self.assertEqual(sum(len(b[0]) for b in text_batches), text_rows)
    self.assertEqual([len(b[0]) for b in lone_batches],
                     [shakespeare.WINDOW_BATCH] * 2 + [300 - 256])
    self.assertTrue(all(len(b[0]) <= 8 for b in text_batches))
    # Each lone sample's target once; every character of the text (and EOS)
    # once, but for the first of each row after the first (TFF's chunking:
    # a row's first character is input only).
    counted = sum(int(shakespeare.count_targets(b)) for b in batches)
    self.assertEqual(counted, 300 + len(text) + 1 - (text_rows - 1))
    self.assertEqual(shakespeare.decode_ids(lone_batches[0][1].numpy()),
                     "y" * shakespeare.WINDOW_BATCH)
    self.assertIsInstance(task.loss_builder(),
                          keras_metrics.MaskedCrossentropy)
    self.assertIs(task.example_count, shakespeare.count_targets)


class CharLstmTest(absltest.TestCase):

  def test_shapes_and_parameter_count(self):
    model = shakespeare.create_char_lstm(90)
    logits = model(tf.zeros([2, 80], tf.int64))
    self.assertEqual(logits.shape, (2, 80, 90))
    lstm = lambda n_in: 4 * 256 * (n_in + 256 + 1)
    self.assertEqual(model.count_params(),
                     90 * 8 + lstm(8) + lstm(256) + 256 * 90 + 90)



if __name__ == "__main__":
  absltest.main()
