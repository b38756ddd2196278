from absl.testing import absltest
import numpy as np
import tensorflow as tf

from tff_pipeline.tasks import text_features

VOCAB = ['the', 'cat', 'sat']


class TextFeaturesTest(absltest.TestCase):

  def test_bag_of_words_frequencies_ignore_oov(self):
    bow = text_features.bag_of_words(
        tf.constant(['the cat the dog', 'zebra']), VOCAB).numpy()
    np.testing.assert_allclose(bow[0], [2 / 3, 1 / 3, 0.0])
    np.testing.assert_allclose(bow[1], [0.0, 0.0, 0.0])

  def test_multi_hot_tags(self):
    tags = text_features.multi_hot_tags(
        tf.constant(['python|c++', 'java|python|python', '']),
        ['python', 'java', 'c++']).numpy()
    np.testing.assert_array_equal(tags, [[1, 0, 1], [1, 1, 0], [0, 0, 0]])

  def test_word_sequences_bos_eos_pad_and_truncate(self):
    words = text_features.WordIds(VOCAB)
    x, y = text_features.word_sequences(
        tf.constant(['the cat sat', ' '.join(['cat'] * 30), 'dog']), words,
        length=5)
    bos, eos, oov = words.bos_id, words.eos_id, words.oov_id
    np.testing.assert_array_equal(x.numpy(), [[bos, 1, 2, 3, eos],
                                              [bos, 2, 2, 2, 2],
                                              [bos, oov, eos, 0, 0]])
    np.testing.assert_array_equal(y.numpy(), [[1, 2, 3, eos, 0],
                                              [2, 2, 2, 2, 2],
                                              [oov, eos, 0, 0, 0]])
    self.assertEqual(words.size, len(VOCAB) + 4)

  def test_runs_in_a_dataset_map(self):
    dataset = tf.data.Dataset.from_tensor_slices(['the cat', 'sat']).batch(2)
    (bow,) = list(dataset.map(lambda t: text_features.bag_of_words(t, VOCAB)))
    self.assertEqual(bow.shape, (2, 3))


if __name__ == '__main__':
  absltest.main()
