import os
import shutil
import tempfile
import textwrap

from absl.testing import absltest

from tff_pipeline import plan
from tff_pipeline.core import config as config_lib
from tff_pipeline.tasks import registry as tasks
from data_prep.errors import UserError

FEDML_CONFIG = """\
common_args:
  training_type: "simulation"
  random_seed: 7
  using_mlops: false
data_args:
  dataset: "mnist"
  data_cache_dir: ~/fedml_data
  partition_method: "hetero"
  partition_alpha: 0.3
model_args:
  model: "lr"
train_args:
  federated_optimizer: "FedProx"
  client_id_list: "[]"
  client_num_in_total: 40
  client_num_per_round: 4
  comm_round: 6
  epochs: 2
  batch_size: 10
  client_optimizer: sgd
  learning_rate: 0.03
  weight_decay: 0.001
validation_args:
  frequency_of_the_test: 3
device_args:
  worker_num: 4
  using_gpu: false
  gpu_mapping_file: config/gpu_mapping.yaml
  gpu_mapping_key: mapping_default
comm_args:
  backend: "MPI"
  is_mobile: 0
tracking_args:
  log_file_dir: ./log
  enable_wandb: false
  wandb_project: fedml
"""


class ConfigTest(absltest.TestCase):

  def _write(self, text: str) -> str:
    tmp = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, tmp)
    path = os.path.join(tmp, 'c.yaml')
    with open(path, 'w') as f:
      f.write(textwrap.dedent(text))
    return path

  def test_fedml_config_maps_to_our_options(self):
    overrides = config_lib.parse_yaml(self._write(FEDML_CONFIG))
    config = plan.resolve_config(overrides.values, {'output_dir': '/tmp/x'})
    self.assertEqual(config.seed, 7)
    self.assertEqual(config.task, 'mnist')
    self.assertEqual(config.data_dir, os.path.expanduser('~/fedml_data'))
    self.assertEqual(config.partition, 'dirichlet')
    self.assertAlmostEqual(config.partition_alpha, 0.3)
    self.assertEqual(config.model, 'lr')
    self.assertEqual(config.algorithm, 'fedprox')
    self.assertEqual(config.num_clients, 40)
    self.assertEqual(config.clients_per_round, 4)
    self.assertEqual(config.rounds, 6)
    self.assertEqual(config.client_epochs, 2)
    self.assertEqual(config.client_batch_size, 10)
    self.assertAlmostEqual(config.client_learning_rate, 0.03)
    self.assertAlmostEqual(config.weight_decay, 0.001)
    self.assertEqual(config.eval_every, 3)

  def test_deployment_keys_are_ignored_with_one_warning(self):
    overrides = config_lib.parse_yaml(self._write(FEDML_CONFIG))
    warning = overrides.warning()
    self.assertEqual(warning.count('\n'), 0)
    for key in ('common_args.training_type', 'device_args.gpu_mapping_file',
                'comm_args.backend', 'tracking_args.log_file_dir'):
      self.assertIn(key, warning)
    self.assertIn('--output_dir', warning)
    # Used (the W&B project), or a switch that is off: not ignored.
    self.assertNotIn('wandb_project', warning)
    self.assertNotIn('enable_wandb', warning)

  def test_flags_override_yaml(self):
    overrides = config_lib.parse_yaml(self._write(FEDML_CONFIG))
    config = plan.resolve_config(overrides.values,
                                {'rounds': 9, 'output_dir': '/tmp/x'})
    self.assertEqual(config.rounds, 9)
    self.assertEqual(config.clients_per_round, 4)

  def test_our_own_key_names_work(self):
    path = self._write("""\
        train_args:
          rounds: 3
          clients_per_round: 2
        data_args:
          num_clients: 5
          partition: iid
        """)
    config = plan.resolve_config(config_lib.parse_yaml(path).values, {})
    self.assertEqual((config.rounds, config.clients_per_round,
                      config.num_clients, config.partition), (3, 2, 5, 'iid'))
    self.assertTrue(config.output_dir.startswith('runs/'))

  def test_typo_is_an_error_with_a_suggestion(self):
    path = self._write('train_args:\n  comm_rund: 3\n')
    with self.assertRaisesRegex(UserError, r"train_args.comm_rund: unknown key "
                                r"\(did you mean 'comm_round'\?\)"):
      config_lib.parse_yaml(path)

  def test_unknown_section_is_an_error(self):
    with self.assertRaisesRegex(UserError, "unknown section 'trian_args'"):
      config_lib.parse_yaml(self._write('trian_args:\n  rounds: 3\n'))

  def test_key_in_wrong_section_says_where_it_belongs(self):
    with self.assertRaisesRegex(UserError, 'belongs in section train_args'):
      config_lib.parse_yaml(self._write('data_args:\n  rounds: 3\n'))

  def test_invalid_yaml_names_line(self):
    with self.assertRaisesRegex(UserError, r'line \d+ is not valid YAML'):
      config_lib.parse_yaml(self._write('train_args:\n  rounds: [3\n'))

  def test_missing_file(self):
    with self.assertRaisesRegex(UserError, 'does not exist'):
      config_lib.parse_yaml('/nonexistent/c.yaml')

  def test_value_we_cannot_honour_is_an_error(self):
    overrides = config_lib.parse_yaml(
        self._write('train_args:\n  federated_optimizer: FedNova\n'))
    with self.assertRaisesRegex(UserError, '--algorithm=fednova is not supported'):
      plan.resolve_config(overrides.values, {})
    overrides = config_lib.parse_yaml(
        self._write('data_args:\n  dataset: fed_cifar100\n'))
    with self.assertRaisesRegex(UserError,
                                '--task=fed_cifar100 is not supported'):
      plan.resolve_config(overrides.values, {})

  def test_tracking_is_a_subset_of_the_trackers(self):
    config = plan.resolve_config({}, {'tracking': 'MLflow,wandb'})
    self.assertEqual(config_lib.tracker_names(config.tracking),
                     ['mlflow', 'wandb'])
    self.assertEqual(config_lib.tracker_names(
        plan.resolve_config({}, {'tracking': 'none'}).tracking), [])
    with self.assertRaisesRegex(UserError, r"--tracking has 'mlfow' \(did you "
                                r"mean 'mlflow'\?\)"):
      plan.resolve_config({}, {'tracking': 'tensorboard,mlfow'})
    path = self._write('tracking_args:\n  tracking: [mlflow, wandb]\n')
    self.assertEqual(config_lib.parse_yaml(path).values,
                     {'tracking': 'mlflow,wandb'})

  def test_wrong_type(self):
    with self.assertRaisesRegex(UserError, 'comm_round: expected an integer'):
      config_lib.parse_yaml(self._write('train_args:\n  comm_round: many\n'))

  def test_bad_values(self):
    with self.assertRaisesRegex(UserError, '--rounds must be >= 1, got -1'):
      plan.resolve_config({}, {'rounds': -1})
    with self.assertRaisesRegex(UserError, 'clients_per_round=20 is greater than '
                                '--num_clients=10'):
      plan.resolve_config({}, {'clients_per_round': 20, 'num_clients': 10})
    with self.assertRaisesRegex(UserError, "did you mean 'adam'"):
      plan.resolve_config({}, {'client_optimizer': 'adma'})
    with self.assertRaisesRegex(UserError, '--partition_alpha must be > 0'):
      plan.resolve_config({}, {'partition_alpha': 0})

  def test_resume_needs_output_dir(self):
    with self.assertRaisesRegex(UserError, '--resume needs --output_dir'):
      plan.resolve_config({}, {'resume': True})

  def test_duplicate_alias_with_another_value_is_an_error(self):
    path = self._write('train_args:\n  learning_rate: 0.1\n  lr: 0.2\n')
    with self.assertRaisesRegex(UserError, r'train_args\.lr=0\.2 and '
                                r'train_args\.learning_rate=0\.1 both set '
                                'client_learning_rate, differently'):
      config_lib.parse_yaml(path)
    path = self._write('train_args:\n  learning_rate: 0.1\n  lr: 0.1\n')
    self.assertEqual(config_lib.parse_yaml(path).values,
                     {'client_learning_rate': 0.1})

  def test_sections_round_trip(self):
    config = plan.resolve_config({}, {'output_dir': '/tmp/x', 'rounds': 4})
    sections = config_lib.to_yaml_sections(config)
    path = self._write(__import__('yaml').safe_dump(sections))
    again = plan.resolve_config(config_lib.parse_yaml(path).values, {})
    self.assertEqual(again, config)



class ShippedConfigsTest(absltest.TestCase):

  def test_every_shipped_config_resolves(self):
    configs_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), 'configs')
    names = sorted(n for n in os.listdir(configs_dir) if n.endswith('.yaml'))
    self.assertNotEmpty(names)
    for name in names:
      overrides = config_lib.parse_yaml(os.path.join(configs_dir, name))
      config = plan.resolve_config(overrides.values, {'output_dir': '/tmp/x'})
      self.assertIn(config.task, tasks.TASKS, name)

  def test_shipped_defaults_file_matches_code_defaults(self):
    configs_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), 'configs')
    overrides = config_lib.parse_yaml(os.path.join(configs_dir,
                                                   'fashion_mnist.yaml'))
    self.assertEqual(plan.resolve_config(overrides.values, {'output_dir': 'x'}),
                     plan.resolve_config({}, {'output_dir': 'x'}))


if __name__ == '__main__':
  absltest.main()
