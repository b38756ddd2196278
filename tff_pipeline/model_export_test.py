import json
import os

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
import tensorflow as tf

from tff_pipeline import model_export
from tff_pipeline.tasks import images
from tff_pipeline.tasks import shakespeare


def _svd_model() -> tf.keras.Model:
  """Singular values: an op neither TFLite's builtins nor Flex convert."""
  inputs = tf.keras.layers.Input(shape=(3, 3))
  values = tf.keras.layers.Lambda(
      lambda m: tf.linalg.svd(m, compute_uv=False))(inputs)
  return tf.keras.Model(inputs, tf.keras.layers.Dense(2)(values))


class WriteModelTest(parameterized.TestCase):

  @parameterized.parameters('cnn', '2nn', 'lr')
  def test_saved_model_and_tflite_predict_like_the_keras_model(self, name):
    model = images.IMAGE_MODELS[name](10, seed=4)
    # Weights away from their initial values, as after training.
    model.set_weights([w + np.random.default_rng(1).normal(
        0, 0.05, w.shape).astype(w.dtype) if w.dtype.kind == 'f' else w
                       for w in model.get_weights()])
    model_dir = os.path.join(self.create_tempdir().full_path, 'model')
    exported = model_export.write_model(
        model, tf.TensorSpec([None, 28, 28, 1]), model_dir, round_num=3)
    self.assertIsNone(exported.tflite_problem)
    self.assertEqual(exported.tflite_ops, model_export.BUILTINS)
    self.assertTrue(os.path.isfile(os.path.join(model_dir, 'model.tflite')))
    self.assertTrue(os.path.isfile(os.path.join(
        model_dir, 'saved_model', 'saved_model.pb')))
    x = np.random.default_rng(2).uniform(0, 1, (7, 28, 28, 1)).astype(
        np.float32)
    expected = model(x, training=False).numpy()
    served = model_export.load_saved_model(model_dir)(inputs=tf.constant(x))
    np.testing.assert_allclose(served['outputs'].numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(model_export.tflite_predict(model_dir, x),
                               expected, atol=1e-5)
    with open(os.path.join(model_dir, 'export.json')) as f:
      self.assertEqual(json.load(f)['round'], 3)

  def test_a_model_tflite_cannot_convert_keeps_its_saved_model(self):
    model = _svd_model()
    model_dir = os.path.join(self.create_tempdir().full_path, 'model')
    exported = model_export.write_model(
        model, tf.TensorSpec([None, 3, 3]), model_dir)
    self.assertIsNone(exported.tflite)
    self.assertIsNone(exported.tflite_ops)
    self.assertStartsWith(exported.tflite_problem,
                          'no model.tflite: TFLite cannot convert this model')
    self.assertNotIn('\n', exported.tflite_problem)
    self.assertNotIn('loc(', exported.tflite_problem)
    self.assertFalse(os.path.exists(os.path.join(model_dir, 'model.tflite')))
    x = np.random.default_rng(0).normal(size=(2, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(
        model_export.load_saved_model(model_dir)(inputs=x)['outputs'],
        model(x), atol=1e-5)

  def test_lstm_needs_select_tf_ops_and_predicts_alike(self):
    model = shakespeare.create_char_lstm(units=16)
    model_dir = os.path.join(self.create_tempdir().full_path, 'model')
    exported = model_export.write_model(
        model, tf.TensorSpec([None, 80], tf.int64), model_dir)
    self.assertEqual(exported.tflite_ops, model_export.BUILTINS_AND_TF)
    x = np.random.default_rng(0).integers(1, 80, (3, 80))
    np.testing.assert_allclose(model_export.tflite_predict(model_dir, x),
                               model(x).numpy(), atol=1e-5)

  def test_reexport_replaces_the_folder(self):
    model_dir = os.path.join(self.create_tempdir().full_path, 'model')
    model_export.write_model(images.create_lr(10), tf.TensorSpec(
        [None, 28, 28, 1]), model_dir)
    stale = os.path.join(model_dir, 'stale')
    open(stale, 'w').close()
    model_export.write_model(images.create_lr(10), tf.TensorSpec(
        [None, 28, 28, 1]), model_dir)
    self.assertFalse(os.path.exists(stale))
    self.assertEqual(
        [n for n in os.listdir(os.path.dirname(model_dir)) if n != 'model'],
        [])

  def test_keras_model_uses_the_tasks_weight_assignment(self):
    calls = []

    class _Task:
      model_builder = staticmethod(lambda: images.create_lr(10))
      serving_model_builder = None
      assign_weights = staticmethod(lambda m, w: calls.append(w))

    model_export.keras_model(_Task(), 'weights')
    self.assertEqual(calls, ['weights'])


if __name__ == '__main__':
  absltest.main()
