"""FedProx as FedAvg with a proximal client optimizer.

TFF 0.87's `build_weighted_fed_prox` adds `mu * (w_start - w)` to the client
gradients (proximal_client_work.py), which pushes clients *away* from the
global model; the gradient of FedProx's term (mu / 2) * ||w - w_start||^2 is
`mu * (w - w_start)`. We get the correct update by wrapping the client
optimizer: TFF initializes the client optimizer at the start of every local
update, so the weights at its first step are the broadcast global model.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tensorflow_federated as tff


class ProximalOptimizer(tff.learning.optimizers.Optimizer):
  """Adds FedProx's proximal gradient `mu * (w - w_start)` to `inner`."""

  def __init__(self, inner: tff.learning.optimizers.Optimizer, mu: float):
    if mu < 0:
      raise ValueError(f'FedProx mu must be >= 0, got {mu}')
    self._inner = inner
    self._mu = mu

  def initialize(self, specs: Any) -> dict[str, Any]:
    return {
        'inner': self._inner.initialize(specs),
        'anchor': tf.nest.map_structure(
            lambda s: tf.zeros(s.shape, s.dtype), specs),
        'step': tf.constant(0, tf.int64),
    }

  def next(self, state: dict[str, Any], weights: Any,
           gradients: Any) -> tuple[dict[str, Any], Any]:
    first_step = tf.equal(state['step'], 0)
    anchor = tf.nest.map_structure(lambda a, w: tf.where(first_step, w, a),
                                   state['anchor'], weights)
    gradients = tf.nest.map_structure(
        lambda g, w, a: g + self._mu * (w - a), gradients, weights, anchor)
    inner_state, weights = self._inner.next(state['inner'], weights, gradients)
    return {'inner': inner_state, 'anchor': anchor,
            'step': state['step'] + 1}, weights

  def get_hparams(self, state: dict[str, Any]) -> dict[str, Any]:
    return self._inner.get_hparams(state['inner'])

  def set_hparams(self, state: dict[str, Any],
                  hparams: dict[str, Any]) -> dict[str, Any]:
    return dict(state, inner=self._inner.set_hparams(state['inner'], hparams))
