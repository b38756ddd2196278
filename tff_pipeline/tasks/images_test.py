import os
import sys
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
import tensorflow as tf

from data_prep.errors import UserError
from tff_pipeline.tasks import base
from tff_pipeline.tasks import images as models


class ModelsTest(parameterized.TestCase):

  @parameterized.parameters(
      ('cnn', 10, 1_199_882),  # TFF's EMNIST CNN summary, only_digits=True.
      ('cnn', 62, 1_206_590),
      ('2nn', 10, 199_210),  # TFF's two-hidden-layer model summary.
      ('lr', 10, 7_850),
  )
  def test_parameter_counts_match_tff_baselines(self, name, classes, params):
    model = models.IMAGE_MODELS[name](classes)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    self.assertEqual(trainable, params)
    # Beyond them only the CNN's dropout step counter (one int64).
    self.assertEqual(model.count_params() - trainable,
                     1 if name == 'cnn' else 0)

  def test_cnn_keeps_tffs_layer_sequence(self):
    # tff.simulation.baselines.emnist's create_conv_dropout_model, in order.
    kinds = [type(layer).__name__
             for layer in models.create_cnn(10).layers
             if type(layer).__name__ not in ('InputLayer', 'StepSeed')]
    self.assertEqual(kinds, ['Conv2D', 'Conv2D', 'MaxPooling2D',
                             'StatelessDropout', 'Flatten', 'Dense',
                             'StatelessDropout', 'Dense'])
    rates = [layer.rate for layer in models.create_cnn(10).layers
             if hasattr(layer, 'rate')]
    self.assertEqual(rates, [0.25, 0.5])

  @parameterized.parameters('cnn', '2nn', 'lr')
  def test_outputs_are_class_probabilities(self, name):
    model = models.IMAGE_MODELS[name](10)
    out = model(tf.random.uniform([4, 28, 28, 1]), training=False).numpy()
    self.assertEqual(out.shape, (4, 10))
    np.testing.assert_allclose(out.sum(axis=1), np.ones(4), rtol=1e-5)

  def test_seed_fixes_initial_weights(self):
    a = models.create_cnn(10, seed=1).get_weights()
    b = models.create_cnn(10, seed=1).get_weights()
    c = models.create_cnn(10, seed=2).get_weights()
    for x, y in zip(a, b):
      np.testing.assert_array_equal(x, y)
    self.assertFalse(np.array_equal(a[0], c[0]))

  def test_weight_decay_adds_torch_style_l2(self):
    model = models.create_lr(10, weight_decay=0.2)
    expected = sum(0.1 * float(np.sum(w ** 2)) for w in model.get_weights())
    self.assertAlmostEqual(float(tf.add_n(model.losses)), expected, places=4)
    self.assertEmpty(models.create_lr(10).losses)



_USER_MODELS = """
import tensorflow as tf

def small_cnn(input_shape, num_classes):
  return tf.keras.Sequential([
      tf.keras.layers.Input(shape=input_shape),
      tf.keras.layers.Conv2D(4, 3, activation='relu'),
      tf.keras.layers.Flatten(),
      tf.keras.layers.Dense(num_classes),  # Logits.
  ])

def probabilities(input_shape, num_classes):
  return tf.keras.Sequential([
      tf.keras.layers.Input(shape=input_shape),
      tf.keras.layers.Flatten(),
      tf.keras.layers.Dense(num_classes, activation='softmax'),
  ])

def wrong_width(input_shape, num_classes):
  return tf.keras.Sequential([tf.keras.layers.Input(shape=input_shape),
                              tf.keras.layers.Flatten(),
                              tf.keras.layers.Dense(num_classes + 1)])

def not_a_model(input_shape, num_classes):
  return 42

NOT_CALLABLE = 3
"""


class UserClassifierTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    root = tempfile.mkdtemp()
    with open(os.path.join(root, 'user_models_for_test.py'), 'w') as f:
      f.write(_USER_MODELS)
    sys.path.insert(0, root)

  def test_builds_the_users_model_for_the_task_shape(self):
    model = base.build_classifier('user_models_for_test:small_cnn',
                                  models.IMAGE_SHAPE, 10)
    self.assertEqual(model(tf.zeros([3, 28, 28, 1])).shape, (3, 10))
    self.assertFalse(base.outputs_probabilities(model))
    self.assertTrue(base.outputs_probabilities(base.build_classifier(
        'user_models_for_test:probabilities', models.IMAGE_SHAPE, 10)))

  def test_family_accepts_module_function_models(self):
    models.FASHION_MNIST.check_model('user_models_for_test:small_cnn')
    with self.assertRaisesRegex(UserError, 'choose one of cnn, 2nn, lr'):
      models.FASHION_MNIST.check_model('resnet')

  def test_clear_errors(self):
    cases = {
        'no_such_module_xyz:f': 'cannot import no_such_module_xyz',
        'user_models_for_test:missing': "has no 'missing'",
        'user_models_for_test:NOT_CALLABLE': 'not a function',
        'user_models_for_test:not_a_model': 'returned int, not a tf.keras',
        'user_models_for_test:wrong_width': r'outputs shape \(11,\) per '
                                            r'example, not \(10,\)',
        'nocolon': 'package.module:name',
    }
    for spec, message in cases.items():
      with self.subTest(spec):
        with self.assertRaisesRegex(UserError, message):
          base.build_classifier(spec, models.IMAGE_SHAPE, 10)


if __name__ == '__main__':
  absltest.main()
