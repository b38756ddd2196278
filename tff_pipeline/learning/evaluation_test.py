import os
import shutil
import tempfile

from absl.testing import absltest
import numpy as np
import tensorflow_federated as tff

from data_prep import images as image_prep
from data_prep import shards
from tests import testutil
from tff_pipeline.learning import evaluation
from tff_pipeline.tasks import registry as tasks
from tff_pipeline import plan


class CentralEvaluatorTest(absltest.TestCase):

  def test_matches_keras_evaluate(self):
    tmp = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, tmp)
    images, labels = testutil.synthetic_images(230)
    manifest = shards.write_shards(
        os.path.join(tmp, 's'), 'fashion_mnist', image_prep.FEATURES_SPEC,
        [('c0', {'pixels': images[:30], 'label': labels[:30]})],
        {'pixels': images[30:], 'label': labels[30:]}, 10,
        {'method': 'iid', 'alpha': None, 'num_clients': 1, 'seed': 0}, {})
    config = plan.resolve_config({}, dict(model='2nn', num_clients=1,
                                         clients_per_round=1, output_dir=tmp,
                                         eval_batch_size=64))
    task = plan.bind_task(config, manifest)
    model = task.model_builder()
    weights = tff.learning.models.ModelWeights.from_model(model)
    got = evaluation.CentralEvaluator(task, 64).evaluate(weights)

    model.compile(loss=task.loss_builder(), metrics=task.metrics_builder())
    x = images[30:, :, :, None].astype(np.float32) / 255.0
    loss, accuracy = model.evaluate(x, labels[30:], batch_size=64, verbose=0)
    self.assertAlmostEqual(got['loss'], loss, places=4)
    self.assertAlmostEqual(got['accuracy'], accuracy, places=5)


if __name__ == '__main__':
  absltest.main()
