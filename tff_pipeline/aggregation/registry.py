"""The aggregator registry: how client updates become one model update.

Every `--aggregator` is here, once, with what it is (secure: its sums need
real masks, so rounds run through the secure round; private: it has an
epsilon) and a builder that takes explicit parameters.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import tensorflow_federated as tff

from data_prep.errors import UserError
from data_prep.errors import did_you_mean
from tff_pipeline.aggregation import distributed_dp
from tff_pipeline.secagg import quantized_sum
from tff_pipeline.secagg import weighted_mean

# dp_adaptive's clip learning rate: TFF's DP-FedAvg default.
_ADAPTIVE_CLIP_LEARNING_RATE = 0.2

Factory = (tff.aggregators.UnweightedAggregationFactory |
           tff.aggregators.WeightedAggregationFactory)
# secagg's weight cap when the caller knows no client sizes.
DEFAULT_MAX_WEIGHT = float(2**16 - 1)


@dataclasses.dataclass(frozen=True)
class AggregatorParams:
  """What the aggregators are built from (each takes what it needs).

  Attributes:
    clip: L2 bound of each client update (the initial one for dp_adaptive).
    bits: Fixed-point bits per coordinate of a secure sum.
    noise_multiplier: DP noise standard deviation over the clip.
    clients_per_round: Expected clients per round (DP normalization).
    target_unclipped_quantile: dp_adaptive's target quantile.
    dim: Parameters of the aggregated update (distributed_dp checks its
      model against it: its accounting depends on it); 0: not checked.
    max_weight: secagg's cap on a client's weight (its examples trained on);
      0: DEFAULT_MAX_WEIGHT.
  """
  clip: float = 1.0
  bits: int = quantized_sum.DEFAULT_BITS
  noise_multiplier: float = 1.0
  clients_per_round: float = 10.0
  target_unclipped_quantile: float = 0.5
  dim: int = 0
  max_weight: float = 0.0


@dataclasses.dataclass(frozen=True)
class Aggregator:
  """One --aggregator.

  Attributes:
    name: Its --aggregator name.
    secure: Its sums are secure sums (rounds need real masks).
    private: It adds DP noise (the run has an epsilon).
    build: AggregatorParams -> a factory (unweighted: each client counts
      once; weighted: by its examples), or None for TFF's weighted mean.
    summary: One line for --help.
  """
  name: str
  secure: bool
  private: bool
  build: Callable[[AggregatorParams], Optional[Factory]]
  summary: str


def _dp_fixed(p: AggregatorParams) -> Factory:
  return tff.aggregators.DifferentiallyPrivateFactory.gaussian_fixed(
      noise_multiplier=p.noise_multiplier,
      clients_per_round=float(p.clients_per_round), clip=p.clip)


def _dp_adaptive(p: AggregatorParams) -> Factory:
  expected = float(p.clients_per_round)
  # The clipped-count query shares the privacy budget: TFF needs its noise
  # above z/2. Its default (0.05 per expected client) is too low for few
  # clients per round; then z is used, leaving the updates ~1.15 z.
  return tff.aggregators.DifferentiallyPrivateFactory.gaussian_adaptive(
      noise_multiplier=p.noise_multiplier, clients_per_round=expected,
      initial_l2_norm_clip=p.clip,
      target_unclipped_quantile=p.target_unclipped_quantile,
      learning_rate=_ADAPTIVE_CLIP_LEARNING_RATE,
      clipped_count_stddev=max(0.05 * expected, p.noise_multiplier))


def _distributed_dp(p: AggregatorParams) -> Factory:
  return distributed_dp.DistributedDpFactory(
      clip=p.clip, noise_multiplier=p.noise_multiplier,
      expected_clients=float(p.clients_per_round), bits=p.bits,
      dim=p.dim or None)


AGGREGATORS: dict[str, Aggregator] = {a.name: a for a in (
    Aggregator('mean', secure=False, private=False, build=lambda p: None,
               summary='weighted FedAvg mean, plain sums'),
    Aggregator('secagg', secure=True, private=False,
               build=lambda p: weighted_mean.SecureWeightedMeanFactory(
                   p.max_weight or DEFAULT_MAX_WEIGHT, p.bits),
               summary='the weighted mean (as mean) under SecAgg+ secure '
                       'aggregation; adaptive clip that does not bite'),
    Aggregator('dp_fixed', secure=False, private=True, build=_dp_fixed,
               summary='DP-FedAvg: Gaussian noise, fixed clip'),
    Aggregator('dp_adaptive', secure=False, private=True, build=_dp_adaptive,
               summary='DP-FedAvg: Gaussian noise, quantile-adaptive clip'),
    Aggregator('secagg_dp', secure=True, private=True,
               build=lambda p: quantized_sum.dp_factory(
                   p.noise_multiplier, float(p.clients_per_round), p.clip,
                   p.bits),
               summary='dp_fixed over a secure sum (central noise)'),
    Aggregator('distributed_dp', secure=True, private=True,
               build=_distributed_dp,
               summary='distributed Skellam DP: each client adds its share '
                       'of the noise before the secure sum'),
)}


def get(name: str) -> Aggregator:
  """The aggregator called `name`; UserError naming the choices if none."""
  aggregator = AGGREGATORS.get(name)
  if aggregator is None:
    raise UserError(f'--aggregator={name} is not supported'
                    f'{did_you_mean(name, AGGREGATORS)}; choose one of '
                    f'{", ".join(AGGREGATORS)}')
  return aggregator


def build(name: str, params: AggregatorParams) -> Optional[Factory]:
  """The model aggregator `name`, or None for TFF's weighted mean."""
  return get(name).build(params)
