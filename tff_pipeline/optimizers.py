"""TFF optimizers by name, for clients and for the server (FedOpt)."""

from __future__ import annotations

import tensorflow_federated as tff

from tff_pipeline.config import TrainConfig
from tff_pipeline.errors import UserError


def build(name: str, learning_rate: float,
          momentum: float = 0.9) -> tff.learning.optimizers.Optimizer:
  """Returns the TFF optimizer `name` (sgd, sgdm, adam, yogi, adagrad).

  Args:
    name: Optimizer name.
    learning_rate: Step size.
    momentum: Momentum of `sgdm`.

  Raises:
    UserError: Unknown name.
  """
  if name == 'sgd':
    return tff.learning.optimizers.build_sgdm(learning_rate=learning_rate)
  if name == 'sgdm':
    return tff.learning.optimizers.build_sgdm(learning_rate=learning_rate,
                                              momentum=momentum)
  if name == 'adam':
    return tff.learning.optimizers.build_adam(learning_rate=learning_rate)
  if name == 'yogi':
    return tff.learning.optimizers.build_yogi(learning_rate=learning_rate)
  if name == 'adagrad':
    return tff.learning.optimizers.build_adagrad(learning_rate=learning_rate)
  raise UserError(f'unknown optimizer {name!r}; choose one of sgd, sgdm, adam, '
                  'yogi, adagrad')


def client_optimizer(config: TrainConfig) -> tff.learning.optimizers.Optimizer:
  return build(config.client_optimizer, config.client_learning_rate,
               config.client_momentum)


def server_optimizer(config: TrainConfig) -> tff.learning.optimizers.Optimizer:
  return build(config.server_optimizer, config.server_learning_rate,
               config.server_momentum)
