import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top
from absl.testing import absltest
import numpy as np
import tensorflow_federated as tff

from data_prep.errors import UserError
from tff_pipeline import plan
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

  def test_bad_values_are_user_errors(self):
    for values, flag in (({'aggregator': 'secure'}, '--aggregator'),
                         ({'clip': 0}, '--clip'),
                         ({'secagg_bits': 60}, '--secagg_bits'),
                         ({'delta': 1.5}, '--delta'),
                         ({'client_sampling': 'random'}, '--client_sampling')):
      with self.subTest(flag):
        with self.assertRaisesRegex(UserError, flag):
          _config(**values)

  def test_movielens_takes_every_aggregator(self):
    # Fed Recon aggregates its item updates with any of them.
    for name in ('secagg', 'dp_fixed', 'secagg_dp'):
      config = _config(task='movielens', aggregator=name)
      self.assertIsNotNone(plan.aggregator(config, 943))


if __name__ == '__main__':
  absltest.main()
