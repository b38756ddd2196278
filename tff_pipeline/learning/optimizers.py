"""TFF optimizers by name, for clients and for the server (FedOpt).

Server optimizers are those of Reddi et al. (2021), "Adaptive Federated
Optimization": sgd (FedAvg), sgdm (FedAvgM), adam, yogi, adagrad.
"""

from __future__ import annotations

from typing import Callable

import tensorflow_federated as tff

from data_prep.errors import UserError
from data_prep.errors import did_you_mean

_BUILDERS: dict[str, Callable[[float, float],
                              tff.learning.optimizers.Optimizer]] = {
    'sgd': lambda lr, momentum: tff.learning.optimizers.build_sgdm(
        learning_rate=lr),
    'sgdm': lambda lr, momentum: tff.learning.optimizers.build_sgdm(
        learning_rate=lr, momentum=momentum),
    'adam': lambda lr, momentum: tff.learning.optimizers.build_adam(
        learning_rate=lr),
    'yogi': lambda lr, momentum: tff.learning.optimizers.build_yogi(
        learning_rate=lr),
    'adagrad': lambda lr, momentum: tff.learning.optimizers.build_adagrad(
        learning_rate=lr),
}
SERVER_OPTIMIZERS = tuple(_BUILDERS)
# Clients: stateless across rounds or cheaply reset (no adaptive server
# statistics on a client).
CLIENT_OPTIMIZERS = ('sgd', 'sgdm', 'adam')


def check(name: str, role: str) -> None:
  """Raises UserError unless `name` is a --<role>_optimizer choice."""
  names = CLIENT_OPTIMIZERS if role == 'client' else SERVER_OPTIMIZERS
  if name not in names:
    raise UserError(f'--{role}_optimizer={name} is not supported'
                    f'{did_you_mean(name, names)}; choose one of '
                    f'{", ".join(names)}')


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
  builder = _BUILDERS.get(name)
  if builder is None:
    raise UserError(f'unknown optimizer {name!r}; choose one of '
                    f'{", ".join(_BUILDERS)}')
  return builder(learning_rate, momentum)
