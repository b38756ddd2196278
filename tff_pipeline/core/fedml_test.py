"""FedML's config family: machinery ignored, privacy intent honoured.

The configs (tests/fedml_examples.py) have the structure of FedML's own
examples: cross-silo MNIST LR, LightSecAgg, central DP, cross-device MNIST.
"""

import os
import shutil
import tempfile
import textwrap

from absl.testing import absltest

from data_prep.errors import UserError
from tff_pipeline import plan
from tff_pipeline.core import config as config_lib
from tff_pipeline.core import fedml
from tests.fedml_examples import CENTRAL_DP
from tests.fedml_examples import CROSS_DEVICE_MNIST_LR
from tests.fedml_examples import CROSS_SILO_MNIST_LR
from tests.fedml_examples import LIGHTSECAGG

class FedmlConfigTest(absltest.TestCase):

  def _write(self, text: str) -> str:
    tmp = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, tmp)
    path = os.path.join(tmp, 'fedml_config.yaml')
    with open(path, 'w') as f:
      f.write(textwrap.dedent(text))
    return path

  def _parse(self, text: str) -> config_lib.YamlOverrides:
    return config_lib.parse_yaml(self._write(text))

  def _resolve(self, text: str, **flags) -> config_lib.TrainConfig:
    # FedML's examples sample 2 clients a round: SecAgg+ needs
    # --secagg_threshold=2 for that (3 by default).
    return plan.resolve_config(self._parse(text).values,
                               {'output_dir': '/tmp/x', 'secagg_threshold': 2,
                                **flags})

  def _edit(self, text: str, old: str, new: str) -> str:
    self.assertIn(old, text)
    return text.replace(old, new)

  def test_cross_silo_mnist_lr(self):
    config = self._resolve(CROSS_SILO_MNIST_LR)
    expected = {'seed': 0, 'task': 'mnist', 'data_dir': '/data/mnist',
                'partition': 'dirichlet', 'partition_alpha': 0.5,
                'model': 'lr', 'algorithm': 'fedavg', 'num_clients': 1000,
                'clients_per_round': 2, 'rounds': 50, 'client_epochs': 1,
                'client_batch_size': 10, 'client_optimizer': 'sgd',
                'client_learning_rate': 0.03, 'weight_decay': 0.001,
                'eval_every': 5, 'aggregator': 'mean', 'topology': '',
                'tracking': 'tensorboard', 'wandb_project': 'fedml',
                'wandb_name': 'fedml_torch_fedavg_mnist_lr'}
    self.assertEqual({k: getattr(config, k) for k in expected}, expected)

  def test_machinery_is_ignored_in_one_warning_naming_the_replacement(self):
    warning = self._parse(CROSS_SILO_MNIST_LR).warning()
    self.assertNotIn('\n', warning)
    for key, replacement in (
        ('common_args.training_type', '--executor'),
        ('common_args.scenario', '--executor'),
        ('common_args.using_mlops', '--tracking'),
        ('environment_args.bootstrap', './setup.sh'),
        ('model_args.model_file_cache_folder', '--output_dir'),
        ('model_args.global_model_file_path', '--output_dir'),
        ('train_args.client_id_list', '--seed'),
        ('device_args.gpu_mapping_file', 'TensorFlow places'),
        ('comm_args.backend', 'gRPC'),
        # Not --topology's value: a FedML ip list is no topology.
        ('comm_args.grpc_ipconfig_path', '--topology'),
        ('tracking_args.local_log_output_path', '--output_dir'),
        ('tracking_args.wandb_key', 'offline')):
      groups = [g for g in warning.split(': ', 1)[1].split('; ')
                if key in g.split(' (use ')[0].split(', ')]
      self.assertLen(groups, 1, key)
      self.assertIn(replacement, groups[0].split(' (use ', 1)[1], key)
    # Keys we use, and switches that are off, are not "ignored".
    for key in ('comm_round', 'learning_rate', 'wandb_project',
                'enable_wandb', 'partition_method'):
      self.assertNotIn(key, warning)

  def test_cross_device_mnist_lr(self):
    overrides = self._parse(CROSS_DEVICE_MNIST_LR)
    config = plan.resolve_config(overrides.values, {'output_dir': '/tmp/x'})
    self.assertEqual((config.num_clients, config.clients_per_round,
                      config.rounds, config.client_batch_size),
                     (1, 1, 3, 100))
    warning = overrides.warning()
    for key in ('train_args.batch_num', 'tracking_args.wandb_obj',
                'tracking_args.log_file_dir', 'comm_args.mqtt_config_path',
                'comm_args.s3_config_path', 'device_args.worker_num'):
      self.assertIn(key, warning)

  def test_batch_num_other_than_minus_one_is_an_error(self):
    text = self._edit(CROSS_DEVICE_MNIST_LR, 'batch_num: -1', 'batch_num: 5')
    with self.assertRaisesRegex(UserError, r'train_args\.batch_num=5'):
      self._parse(text)

  def test_lightsecagg_trains_with_secure_aggregation(self):
    overrides = self._parse(LIGHTSECAGG)
    config = plan.resolve_config(overrides.values, {'output_dir': '/tmp/x',
                                                    'secagg_threshold': 2})
    self.assertEqual((config.aggregator, config.algorithm),
                     ('secagg', 'fedavg'))
    self.assertTrue(plan.is_secure(config))
    warning = overrides.warning()
    for key in ('secure_aggregation_args.sa_method',
                'secure_aggregation_args.prime_number',
                'secure_aggregation_args.precision_parameter'):
      self.assertIn(key, warning)
    self.assertIn('--secagg_bits', warning)

  def test_enable_sa_alone_and_lsa_alone(self):
    for sa_method in ('secagg', 'lightsecagg', 'secagg++'):
      text = self._edit(LIGHTSECAGG, 'federated_optimizer: "LSA"',
                        'federated_optimizer: "FedAvg"')
      text = self._edit(text, 'sa_method: lightsecagg', f'sa_method: {sa_method}')
      self.assertEqual(self._resolve(text).aggregator, 'secagg', sa_method)
    without_section = LIGHTSECAGG.split('secure_aggregation_args:')[0] + (
        'device_args:' + LIGHTSECAGG.split('device_args:')[1])
    self.assertEqual(self._resolve(without_section).aggregator, 'secagg')

  def test_lsa_with_sa_disabled_is_an_error_naming_both(self):
    text = self._edit(LIGHTSECAGG, 'enable_sa: true', 'enable_sa: false')
    with self.assertRaisesRegex(
        UserError, r'train_args\.federated_optimizer=LSA.*'
        r'secure_aggregation_args\.enable_sa is false'):
      self._parse(text)

  def test_sa_disabled_is_plain_fedavg(self):
    text = self._edit(LIGHTSECAGG, 'enable_sa: true', 'enable_sa: false')
    text = self._edit(text, 'federated_optimizer: "LSA"',
                      'federated_optimizer: "FedAvg"')
    overrides = self._parse(text)
    self.assertEqual(plan.resolve_config(overrides.values, {}).aggregator,
                     'mean')
    self.assertNotIn('prime_number', overrides.warning())

  def test_central_dp_is_calibrated_to_epsilon_and_delta(self):
    overrides = self._parse(CENTRAL_DP)
    config = plan.resolve_config(overrides.values, {'output_dir': '/tmp/x'})
    self.assertEqual((config.aggregator, config.target_epsilon, config.delta),
                     ('dp_fixed', 0.5, 0.1))
    self.assertTrue(plan.is_private(config))
    # DP aggregators sample clients by Poisson by default.
    self.assertEqual(config.client_sampling, 'poisson')
    warning = overrides.warning()
    for key in ('dp_args.sensitivity', 'dp_args.rdp_alpha',
                'dp_args.enable_rdp_accountant'):
      self.assertIn(key, warning)

  def test_dp_and_sa_together_is_dp_over_secagg(self):
    text = CENTRAL_DP + textwrap.dedent("""\
        secure_aggregation_args:
          enable_sa: true
          sa_method: secagg
        """)
    self.assertEqual(self._resolve(text).aggregator, 'secagg_dp')

  def test_dp_type_spelling_and_clipping_norm(self):
    text = self._edit(CENTRAL_DP, 'dp_solution_type: cdp',
                      'dp_type: cdp\n  clipping_norm: 0.5\n'
                      '  noise_multiplier: 10.0')
    overrides = self._parse(text)
    config = plan.resolve_config(overrides.values, {})
    self.assertEqual((config.aggregator, config.clip, config.target_epsilon),
                     ('dp_fixed', 0.5, 0.5))
    # The epsilon target decides the noise, not FedML's noise_multiplier.
    self.assertIn('dp_args.noise_multiplier (use the noise calibrated to '
                  'dp_args.epsilon=0.5)', overrides.warning())

  def test_dp_clip_takes_clip_and_noise_multiplier(self):
    text = self._edit(CENTRAL_DP, 'dp_solution_type: cdp',
                      'dp_solution_type: dp_clip\n  clipping_norm: 0.04\n'
                      '  noise_multiplier: 1.3')
    config = self._resolve(text)
    self.assertEqual((config.aggregator, config.clip, config.noise_multiplier,
                      config.target_epsilon), ('dp_fixed', 0.04, 1.3, 0.0))

  def test_dp_we_cannot_honour_is_an_error_naming_the_key(self):
    cases = {
        ('dp_solution_type: cdp', 'dp_solution_type: ldp'):
            r'dp_args\.dp_solution_type=ldp \(local DP\) is not supported',
        ('dp_solution_type: cdp', 'dp_solution_type: nbafl'):
            r'dp_args\.dp_solution_type=nbafl is not supported',
        ('mechanism_type: gaussian', 'mechanism_type: laplace'):
            r'dp_args\.mechanism_type=laplace is not supported',
        ('epsilon: 0.5', 'epsilon: -1'):
            r'dp_args\.epsilon: expected a number > 0',
        ('  dp_solution_type: cdp\n', ''):
            r'dp_args\.enable_dp is true but dp_args\.dp_solution_type is '
            'missing',
        ('enable_dp: true', 'enabel_dp: true'):
            r"dp_args\.enabel_dp: unknown key \(did you mean 'enable_dp'\?\)",
    }
    for (old, new), message in cases.items():
      with self.subTest(new):
        with self.assertRaisesRegex(UserError, message):
          self._parse(self._edit(CENTRAL_DP, old, new))

  def test_dp_disabled_is_no_dp(self):
    text = self._edit(CENTRAL_DP, 'enable_dp: true', 'enable_dp: false')
    text = self._edit(text, 'dp_solution_type: cdp', 'dp_solution_type: ldp')
    overrides = self._parse(text)
    config = plan.resolve_config(overrides.values, {})
    self.assertEqual((config.aggregator, config.target_epsilon),
                     ('mean', 0.0))
    self.assertNotIn('dp_args', overrides.warning())

  def test_enable_wandb_adds_wandb_tracking(self):
    text = self._edit(CROSS_SILO_MNIST_LR, 'enable_wandb: false',
                      'enable_wandb: true')
    config = self._resolve(text)
    self.assertEqual((config.tracking, config.wandb_project,
                      config.wandb_name),
                     ('tensorboard,wandb', 'fedml',
                      'fedml_torch_fedavg_mnist_lr'))
    config = self._resolve(text + '  tracking: mlflow\n')
    self.assertEqual(config.tracking, 'mlflow,wandb')
    # Flags beat the YAML.
    self.assertEqual(self._resolve(text, tracking='mlflow').tracking,
                     'mlflow')

  def test_run_name_is_the_wandb_name(self):
    text = self._edit(CROSS_SILO_MNIST_LR, 'wandb_name:', 'run_name:')
    self.assertEqual(self._resolve(text).wandb_name,
                     'fedml_torch_fedavg_mnist_lr')

  def test_equal_duplicates_are_accepted_different_ones_named(self):
    text = self._edit(CROSS_SILO_MNIST_LR, 'learning_rate: 0.03',
                      'learning_rate: 0.03\n  lr: 0.03')
    self.assertEqual(self._resolve(text).client_learning_rate, 0.03)
    text = self._edit(CROSS_SILO_MNIST_LR, 'learning_rate: 0.03',
                      'learning_rate: 0.03\n  lr: 0.001')
    with self.assertRaisesRegex(
        UserError, r'train_args\.lr=0\.001 and train_args\.learning_rate=0\.03 '
        'both set client_learning_rate, differently'):
      self._parse(text)
    # Across sections too (FedML flattens them).
    text = CROSS_SILO_MNIST_LR + 'defense_args:\n  enable_defense: false\n'
    self._resolve(text)

  def test_fedml_keys_count_in_any_section(self):
    # FedML flattens sections: some examples put the model cache path in
    # data_args and eval_batch_size in train_args.
    text = self._edit(CROSS_SILO_MNIST_LR, '  partition_alpha: 0.5\n',
                      '  partition_alpha: 0.5\n'
                      '  model_file_cache_folder: ./cache\n')
    text = self._edit(text, '  weight_decay: 0.001\n',
                      '  weight_decay: 0.001\n  eval_batch_size: 8\n')
    overrides = self._parse(text)
    self.assertIn('data_args.model_file_cache_folder', overrides.warning())
    self.assertEqual(plan.resolve_config(overrides.values, {}).eval_batch_size,
                     8)

  def test_features_we_do_not_have(self):
    cases = {
        'attack_args:\n  enable_attack: true\n  attack_type: byzantine\n':
            r'attack_args\.enable_attack is true: attack simulation',
        'defense_args:\n  enable_defense: true\n  defense_type: krum\n':
            r'defense_args\.enable_defense is true',
        'fhe_args:\n  enable_fhe: true\n  scheme: ckks\n':
            r'fhe_args\.enable_fhe is true',
        'task_args:\n  fa_task: k_percentile\n':
            r'task_args: federated analytics',
    }
    for section, message in cases.items():
      with self.subTest(section):
        with self.assertRaisesRegex(UserError, message):
          self._parse(CROSS_SILO_MNIST_LR + section)
    # Switched off, they are honoured: nothing to do.
    config = self._resolve(
        CROSS_SILO_MNIST_LR +
        'attack_args:\n  enable_attack: false\n  attack_type: None\n')
    self.assertEqual(config.aggregator, 'mean')

  def test_unknown_section_still_an_error(self):
    with self.assertRaisesRegex(UserError, "unknown section 'enviroment_args' "
                                r"\(did you mean 'environment_args'\?\)"):
      self._parse('enviroment_args:\n  bootstrap: x.sh\n')

  def test_every_fedml_section_is_known(self):
    for section in ('common_args', 'environment_args', 'data_args',
                    'model_args', 'train_args', 'validation_args',
                    'device_args', 'comm_args', 'tracking_args',
                    'secure_aggregation_args', 'dp_args', 'lsa_args'):
      self._parse(f'{section}: {{}}\n')
    self.assertIn('lsa_args', fedml.SECTIONS)

  def test_machinery_replacement(self):
    self.assertIn('--topology', fedml.machinery_replacement('grpc_ipconfig_path'))
    self.assertIn('--tracking', fedml.machinery_replacement('mlops_api_key'))
    self.assertIsNone(fedml.machinery_replacement('comm_round'))


if __name__ == '__main__':
  absltest.main()
