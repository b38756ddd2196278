"""`--aggregator`: how client updates become one model update."""

from __future__ import annotations

import functools
from typing import Optional

import tensorflow_federated as tff

from tff_pipeline import privacy
from tff_pipeline import secagg
from tff_pipeline import config as config_lib
from tff_pipeline.config import TrainConfig

SECURE = frozenset({'secagg', 'secagg_dp'})
PRIVATE = frozenset(config_lib.DP_AGGREGATORS)
# dp_adaptive's clip learning rate: TFF's DP-FedAvg default.
_ADAPTIVE_CLIP_LEARNING_RATE = 0.2


def is_secure(config: TrainConfig) -> bool:
  return config.aggregator in SECURE


def is_private(config: TrainConfig) -> bool:
  return config.aggregator in PRIVATE


def sampling_of(config: TrainConfig, population: int) -> privacy.Sampling:
  kind = 'poisson' if config.client_sampling == 'poisson' else 'fixed'
  return privacy.Sampling(kind=kind, population=population,
                          expected_size=config.clients_per_round)


@functools.lru_cache(maxsize=8)
def noise_multiplier(config: TrainConfig, population: int) -> float:
  """--noise_multiplier, or the one --target_epsilon calls for.

  Cached: the learning process and the privacy report of a run both need it,
  and calibration runs an accountant search (seconds).
  """
  if config.target_epsilon > 0:
    return privacy.calibrate_noise_multiplier(
        config.target_epsilon, sampling_of(config, population), config.rounds,
        config.delta)
  return config.noise_multiplier


def build(config: TrainConfig, population: int
          ) -> Optional[tff.aggregators.UnweightedAggregationFactory]:
  """The model aggregator, or None for TFF's weighted mean (`mean`)."""
  name = config.aggregator
  if name == 'mean':
    return None
  if name == 'secagg':
    return secagg.mean_factory(config.clip, config.secagg_bits)
  z = noise_multiplier(config, population)
  expected = float(config.clients_per_round)
  if name == 'dp_fixed':
    return tff.aggregators.DifferentiallyPrivateFactory.gaussian_fixed(
        noise_multiplier=z, clients_per_round=expected, clip=config.clip)
  if name == 'dp_adaptive':
    # The clipped-count query shares the privacy budget: TFF needs its noise
    # above z/2. Its default (0.05 per expected client) is too low for few
    # clients per round; then z is used, leaving the updates ~1.15 z.
    return tff.aggregators.DifferentiallyPrivateFactory.gaussian_adaptive(
        noise_multiplier=z, clients_per_round=expected,
        initial_l2_norm_clip=config.clip,
        target_unclipped_quantile=config.target_unclipped_quantile,
        learning_rate=_ADAPTIVE_CLIP_LEARNING_RATE,
        clipped_count_stddev=max(0.05 * expected, z))
  if name == 'secagg_dp':
    return secagg.dp_factory(z, expected, config.clip, config.secagg_bits)
  raise ValueError(f'unknown aggregator {name}')
