import contextlib
import io
import os
import shutil
import tempfile

from absl import flags
from absl.testing import absltest

from tff_pipeline.core import config as config_lib
from tff_pipeline import config_flags
from tff_pipeline import train  # pylint: disable=unused-import  (defines the flags)

FLAGS = flags.FLAGS


class TrainFlagsTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self._dir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self._dir)
    self._saved = FLAGS.flag_values_dict()
    self.addCleanup(self._restore)

  def _restore(self):
    for name in list(config_lib.OPTION_FIELDS) + ['config']:
      FLAGS[name].value = self._saved[name]
      FLAGS[name].present = 0

  def _parse(self, *args):
    self._restore()
    FLAGS(['train', *args], known_only=False)
    return config_flags.resolve()

  def test_every_option_is_a_flag_with_its_yaml_key_in_the_help(self):
    for name, field in config_lib.OPTION_FIELDS.items():
      self.assertIn(name, FLAGS)
      self.assertIn(f'{field.metadata["section"]}.{name}', FLAGS[name].help)

  def test_flags_override_yaml(self):
    path = os.path.join(self._dir, 'c.yaml')
    with open(path, 'w') as f:
      f.write('train_args:\n  comm_round: 7\n  client_num_per_round: 3\n')
    config = self._parse(f'--config={path}', '--rounds=4',
                         f'--output_dir={self._dir}/o')
    self.assertEqual(config.rounds, 4)
    self.assertEqual(config.clients_per_round, 3)

  def test_defaults_without_flags(self):
    config = self._parse()
    self.assertEqual((config.task, config.model, config.num_clients,
                      config.partition, config.partition_alpha,
                      config.clients_per_round, config.algorithm),
                     ('fashion_mnist', 'cnn', 100, 'dirichlet', 0.5, 10,
                      'fedavg'))

  def test_ignored_fedml_keys_are_one_warning_printed_once(self):
    path = os.path.join(self._dir, 'fedml_config.yaml')
    with open(path, 'w') as f:
      f.write('common_args:\n  training_type: cross_silo\n'
              'device_args:\n  using_gpu: false\n'
              'comm_args:\n  backend: MQTT_S3\n'
              '  grpc_ipconfig_path: config/grpc_ipconfig.csv\n')
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
      config = self._parse(f'--config={path}', f'--output_dir={self._dir}/o')
    lines = stderr.getvalue().splitlines()
    self.assertLen(lines, 1, stderr.getvalue())
    self.assertStartsWith(lines[0], 'warning: ignoring FedML keys')
    for key in ('common_args.training_type', 'device_args.using_gpu',
                'comm_args.backend', 'comm_args.grpc_ipconfig_path'):
      self.assertEqual(lines[0].count(key), 1, key)
    # FedML's gRPC ip list is no topology of ours.
    self.assertEqual(config.topology, '')


if __name__ == '__main__':
  absltest.main()
