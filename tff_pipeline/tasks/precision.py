"""bfloat16 mixed precision for any task's Keras model.

Mixed precision training (Micikevicius et al. 2018) with bfloat16 (Kalamkar
et al. 2019, "A Study of BFLOAT16 for Deep Learning Training"): layers
compute in bfloat16 while variables stay float32, as Keras' `mixed_bfloat16`
policy does. bfloat16 keeps float32's exponent range, so no loss scaling is
needed. The output layers stay float32 (a softmax or logits in bfloat16
would round the probabilities the loss and metrics see), so the model's
outputs, its weights, the client updates computed from them and everything
TFF aggregates (SecAgg's quantization, DP's clipping and noise) are float32
as before.
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

from data_prep.errors import UserError

PRECISIONS = ('fp32', 'bf16')
_MIXED = 'mixed_bfloat16'


def _output_layers(model: tf.keras.Model) -> set[int]:
  # pylint: disable-next=protected-access
  return {id(t._keras_history.layer) for t in tf.nest.flatten(model.outputs)}


def mixed_bfloat16(model: tf.keras.Model) -> tf.keras.Model:
  """A copy of `model` with bfloat16 compute, float32 outputs, same weights.

  Every layer is rebuilt from its config under the `mixed_bfloat16` policy,
  except the layers producing the model's outputs (float32); the weights
  (float32 variables either way) are copied, so the copy starts where
  `model` does.
  """
  outputs = _output_layers(model)

  def clone(layer: tf.keras.layers.Layer) -> tf.keras.layers.Layer:
    config = layer.get_config()
    config['dtype'] = 'float32' if id(layer) in outputs else _MIXED
    return layer.__class__.from_config(config)

  copy = tf.keras.models.clone_model(model, clone_function=clone)
  copy.set_weights(model.get_weights())
  return copy


def model_builder(builder: Callable[[], tf.keras.Model], precision: str
                  ) -> Callable[[], tf.keras.Model]:
  """`builder`, or one building its mixed-precision copy for 'bf16'.

  Raises:
    UserError: an unknown precision.
  """
  if precision not in PRECISIONS:
    raise UserError(f'--precision={precision} is not one of '
                    f'{", ".join(PRECISIONS)}')
  if precision == 'fp32':
    return builder
  return lambda: mixed_bfloat16(builder())
