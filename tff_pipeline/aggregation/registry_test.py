import dataclasses
import math
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top
from absl.testing import absltest
import numpy as np
import tensorflow_federated as tff

from data_prep.errors import UserError
from tff_pipeline import plan
from tff_pipeline.aggregation import ddp_accounting
from tff_pipeline.aggregation import distributed_dp
from tff_pipeline.aggregation import privacy
from tff_pipeline.aggregation import registry as aggregators
from tff_pipeline.core import config as config_lib

_VALUE_TYPE = tff.StructWithPythonType(
    [tff.TensorType(np.float32, [10])], list)


def _config(**values) -> config_lib.TrainConfig:
  return plan.resolve_config({}, dict(values))


class AggregatorsTest(absltest.TestCase):

  def test_mean_is_tffs_weighted_default(self):
    self.assertIsNone(aggregators.build('mean', aggregators.AggregatorParams()))

  def test_every_aggregator_builds_a_process(self):
    params = aggregators.AggregatorParams(clients_per_round=5)
    for name, spec in aggregators.AGGREGATORS.items():
      if name == 'mean':
        continue
      with self.subTest(name):
        if name == 'distributed_dp':  # Its modulus is at most 2^30.
          params = dataclasses.replace(params, bits=20, dim=10)
        factory = aggregators.build(name, params)
        if isinstance(factory, tff.aggregators.WeightedAggregationFactory):
          # secagg: the weighted mean (FedAvg's) under secure sums.
          process = factory.create(_VALUE_TYPE, tff.TensorType(np.float32))
        else:
          self.assertIsInstance(factory,
                                tff.aggregators.UnweightedAggregationFactory)
          process = factory.create(_VALUE_TYPE)
        text = process.next.to_building_block().compact_representation()
        self.assertEqual('federated_secure' in text, spec.secure)

  def test_kinds(self):
    kinds = {name: (a.secure, a.private)
             for name, a in aggregators.AGGREGATORS.items()}
    self.assertEqual(kinds['secagg_dp'], (True, True))
    self.assertEqual(kinds['distributed_dp'], (True, True))
    self.assertEqual(kinds['secagg'], (True, False))
    self.assertEqual(kinds['dp_adaptive'], (False, True))
    self.assertEqual(kinds['mean'], (False, False))

  def test_target_epsilon_calibrates_the_noise(self):
    config = _config(aggregator='dp_fixed', target_epsilon=4.0, rounds=50,
                     clients_per_round=10, client_sampling='poisson')
    z = plan.noise_multiplier(config, 1000)
    self.assertNotEqual(z, config.noise_multiplier)
    sampling = plan.sampling_of(config, 1000)
    self.assertEqual(sampling.kind, 'poisson')
    spent = privacy.epsilon(z, sampling, 50, config.delta)
    self.assertLessEqual(spent['epsilon_rdp'], 4.0)
    self.assertGreater(privacy.epsilon(z * 0.9, sampling, 50,
                                       config.delta)['epsilon_rdp'], 4.0)

  def test_without_target_the_flag_is_used(self):
    config = _config(aggregator='dp_fixed', noise_multiplier=0.7,
                     client_sampling='uniform')
    self.assertEqual(plan.noise_multiplier(config, 100), 0.7)
    self.assertEqual(plan.sampling_of(config, 100).kind, 'fixed')

  def test_dp_aggregators_sample_poisson_by_default(self):
    for name, spec in aggregators.AGGREGATORS.items():
      expected = 'poisson' if spec.private else 'uniform'
      self.assertEqual(_config(aggregator=name).client_sampling, expected)

  def test_secure_rounds_below_the_threshold_are_refused_at_start(self):
    for name in ('secagg', 'secagg_dp'):
      with self.subTest(name):
        with self.assertRaisesRegex(
            UserError, r'--clients_per_round=2 is below --secagg_threshold=3'):
          _config(aggregator=name, clients_per_round=2)
        self.assertEqual(_config(aggregator=name, clients_per_round=2,
                                 secagg_threshold=2).clients_per_round, 2)
    self.assertEqual(_config(aggregator='mean', clients_per_round=1)
                     .clients_per_round, 1)

  def test_bad_values_are_user_errors(self):
    for values, flag in (({'aggregator': 'secure'}, '--aggregator'),
                         ({'clip': 0}, '--clip'),
                         ({'secagg_bits': 60}, '--secagg_bits'),
                         ({'delta': 1.5}, '--delta'),
                         ({'client_sampling': 'random'}, '--client_sampling')):
      with self.subTest(flag):
        with self.assertRaisesRegex(UserError, flag):
          _config(**values)

  def test_movielens_takes_every_central_aggregator(self):
    # Fed Recon aggregates its item updates with any of them.
    for name in ('secagg', 'dp_fixed', 'secagg_dp'):
      config = _config(task='movielens', aggregator=name)
      self.assertIsNotNone(plan.aggregator(config, 943))

  def test_distributed_dp_checks_the_model_size(self):
    factory = aggregators.build('distributed_dp', aggregators.AggregatorParams(
        clients_per_round=5, bits=20, dim=11))
    with self.assertRaisesRegex(ValueError, '10 parameters.*assumed 11'):
      factory.create(_VALUE_TYPE)

  def test_secagg_bits_default_per_aggregator(self):
    self.assertEqual(plan.secagg_bits(_config(aggregator='secagg'), 100), 32)
    self.assertEqual(plan.secagg_bits(_config(aggregator='secagg_dp'), 100),
                     32)
    self.assertEqual(plan.secagg_bits(
        _config(aggregator='secagg', secagg_bits=20), 100), 20)
    # distributed_dp: ddp_accounting's rule (16 for the 2NN at 100 clients,
    # docs/privacy.md), unless given.
    config = _config(aggregator='distributed_dp', clients_per_round=100,
                     num_clients=1000)
    self.assertEqual(plan.secagg_bits(config, 1000, 199210), 16)
    self.assertEqual(plan.secagg_bits(
        dataclasses.replace(config, secagg_bits=18), 1000, 199210), 18)


class DistributedDpConfigTest(absltest.TestCase):
  """distributed_dp's wiring in plan, and its one-line refusals."""

  def _ddp(self, **values):
    return _config(aggregator='distributed_dp', **values)

  def _assert_one_line(self, error):
    self.assertNotIn('\n', str(error.exception))

  def test_target_epsilon_calibrates_with_its_own_accountant(self):
    config = self._ddp(target_epsilon=4.0, rounds=100, clients_per_round=100,
                       num_clients=1000)
    mechanism = plan.distributed_mechanism(config, 1000, 199_210)
    ledger = plan.ledger(config, 1000, 199_210)
    self.assertIsInstance(ledger, ddp_accounting.Ledger)
    self.assertLessEqual(ledger.after(100)['epsilon'], 4.0)
    self.assertEqual(plan.noise_multiplier(config, 1000, 199_210),
                     mechanism.noise_multiplier)
    # The bits rule at the calibrated noise (ddp_accounting.default_bits).
    self.assertEqual(mechanism.bits, ddp_accounting.default_bits(
        100, 199_210, mechanism.noise_multiplier))
    factory = plan.aggregator(config, 1000, 199_210)
    self.assertIsInstance(factory, distributed_dp.DistributedDpFactory)

  def test_logged_participants_calibrate_for_the_unamplified_epsilon(self):
    for aggregator in ('dp_fixed', 'distributed_dp'):
      with self.subTest(aggregator):
        config = _config(aggregator=aggregator, target_epsilon=8.0,
                         rounds=20, clients_per_round=100, num_clients=1000)
        logged = dataclasses.replace(config, log_participants=True)
        row = plan.ledger(logged, 1000, 199_210).after(20)
        self.assertFalse(row['amplified'])
        self.assertLessEqual(row['epsilon'], 8.0)
        self.assertGreater(plan.noise_multiplier(logged, 1000, 199_210),
                           2 * plan.noise_multiplier(config, 1000, 199_210))

  def test_unreachable_target_in_rounds(self):
    config = self._ddp(target_epsilon=0.05, rounds=100000, secagg_bits=30,
                       clients_per_round=500, num_clients=1000)
    with self.assertRaisesRegex(
        UserError, r'--target_epsilon=0.05 is unreachable in '
        r'--rounds=100000') as error:
      plan.distributed_mechanism(config, 1000, 1000)
    self._assert_one_line(error)

  def test_too_few_bits_for_the_clients_per_round(self):
    config = self._ddp(secagg_bits=8, clients_per_round=3000,
                       num_clients=5000)
    with self.assertRaisesRegex(
        UserError, r'--secagg_bits=8 is too few for 3000 expected clients '
        r'per round.*use --secagg_bits=\d+') as error:
      plan.distributed_mechanism(config, 5000, 7850)
    self._assert_one_line(error)

  def test_too_few_clients_per_round(self):
    with self.assertRaisesRegex(
        UserError, r'--clients_per_round=1 is too few for distributed_dp: '
        r'it needs at least 2') as error:
      self._ddp(clients_per_round=1)
    self._assert_one_line(error)

  def test_poisson_sampling_only(self):
    with self.assertRaisesRegex(UserError, 'client_sampling=poisson') as error:
      self._ddp(client_sampling='uniform')
    self._assert_one_line(error)

  def test_more_bits_than_the_mechanism_takes(self):
    with self.assertRaisesRegex(UserError, 'secagg_bits=40 is more than'):
      self._ddp(secagg_bits=40)


class SecaggDpAccountingTest(absltest.TestCase):
  """secagg_dp's ledger takes its rounding's sensitivity into account."""

  def test_low_bits_raise_epsilon_and_calibration_compensates(self):
    dim = 1_199_882  # The CNN.
    h = (2**8 - 1) / 2
    # Kairouz et al. Theorem 1 bound, by hand (see quantized_sum_test).
    inflation = math.sqrt(h * h + dim / 4 + h + math.sqrt(dim) / 2) / h
    config = _config(aggregator='secagg_dp', secagg_bits=8,
                     noise_multiplier=4.0, clients_per_round=100,
                     num_clients=1000, rounds=50)
    row = plan.ledger(config, 1000, dim).after(50)
    self.assertAlmostEqual(row['sensitivity_inflation'], inflation, places=9)
    self.assertAlmostEqual(row['epsilon'], privacy.epsilon(
        4.0 / inflation, plan.sampling_of(config, 1000), 50,
        1e-5)['epsilon'])
    self.assertGreater(row['epsilon'], privacy.epsilon(
        4.0, plan.sampling_of(config, 1000), 50, 1e-5)['epsilon'])
    target = dataclasses.replace(config, target_epsilon=4.0)
    z = plan.noise_multiplier(target, 1000, dim)
    self.assertAlmostEqual(z / inflation, plan.noise_multiplier(
        dataclasses.replace(target, aggregator='dp_fixed'), 1000))
    self.assertLessEqual(plan.ledger(target, 1000, dim).after(50)['epsilon'],
                         4.0)
    # 32 bits (the default): no visible change.
    self.assertLess(plan.sensitivity_inflation(
        dataclasses.replace(config, secagg_bits=0), dim) - 1, 1e-9)


if __name__ == '__main__':
  absltest.main()
