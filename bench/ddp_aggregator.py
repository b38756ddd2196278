"""Seconds per round of the aggregator alone: distributed_dp against secagg.

    python -m bench.ddp_aggregator [--clients=10] [--rounds=3] \
        [--aggregators=plain,secagg,distributed_dp] [--noise_multiplier=1.0]

The value summed has the shapes of the Fashion-MNIST CNN's trainable weights
(1,199,882 float32). Each client's update is drawn inside the client
computation from its key (no training, no data), so a round is: the
aggregator's client work on every client, the secure sum with real pairwise
masks (`secure_form.SecureForm` + `LocalSecureRound`, masks generated for
the round as the pods would), and the server's decoding. `plain` is TFF's
unweighted mean of clipped updates on the plain runtime (no masks), the
floor. Round 1 (tracing) is reported apart; the figure is the mean of the
rest. All on the local runtime of this machine.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top
from absl import app
from absl import flags
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_pipeline.aggregation import ddp_accounting
from tff_pipeline.aggregation import distributed_dp
from workers import local_runtime as runtime
from tff_pipeline.secagg import quantized_sum as secagg
from tff_pipeline.secagg import form as secure_form
from workers import secure_round as secure_rounds

CNN_SHAPES = [(3, 3, 1, 32), (32,), (3, 3, 32, 64), (64,), (9216, 128),
              (128,), (128, 10), (10,)]

_CLIENTS = flags.DEFINE_integer('clients', 10, 'Clients per round.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Rounds per aggregator (>= 2).')
_AGGREGATORS = flags.DEFINE_list(
    'aggregators', ['plain', 'secagg', 'distributed_dp'], 'To time.')
_NOISE = flags.DEFINE_float('noise_multiplier', 1.0, 'distributed_dp noise.')
_CLIP = 1.0


def _factory(name: str, clients: int):
  if name == 'plain':
    return tff.aggregators.UnweightedMeanFactory(
        value_sum_factory=tff.aggregators.clipping_factory(
            _CLIP, tff.aggregators.SumFactory()))
  if name == 'secagg':
    return secagg.mean_factory(_CLIP)
  if name == 'distributed_dp':
    dim = sum(int(np.prod(s)) for s in CNN_SHAPES)
    return distributed_dp.DistributedDpFactory(
        clip=_CLIP, noise_multiplier=_NOISE.value, expected_clients=clients,
        bits=ddp_accounting.default_bits(clients, dim, _NOISE.value))
  raise ValueError(f'unknown aggregator {name}')


def _round_fn(process):
  @tff.tensorflow.computation(np.str_)
  def update(key):
    index = tf.strings.to_number(tf.strings.split(key, '#')[0], tf.int64)
    return [tf.random.stateless_normal(shape, seed=tf.stack([index, j]))
            * 1e-3 for j, shape in enumerate(CNN_SHAPES)]

  @tff.federated_computation(process.initialize.type_signature.result,
                             tff.FederatedType(np.str_, tff.CLIENTS))
  def round_fn(state, keys):
    output = process.next(state, tff.federated_map(update, keys))
    return output.state, output.result

  return round_fn


def main(argv):
  del argv
  runtime.use_local_runtime(_CLIENTS.value)
  value_type = tff.StructWithPythonType(
      [tff.TensorType(np.float32, s) for s in CNN_SHAPES], list)
  ids = [str(i) for i in range(_CLIENTS.value)]
  keys = [f'{i}#0' for i in ids]
  print(f'{_CLIENTS.value} clients, CNN-size update (1,199,882 float32), '
        f'{_ROUNDS.value} rounds')
  baseline = None
  for name in _AGGREGATORS.value:
    factory = _factory(name, _CLIENTS.value)
    process = factory.create(value_type)
    round_fn = _round_fn(process)
    root = tempfile.mkdtemp(prefix='ddp-bench-')
    # pylint: disable=cell-var-from-loop
    if name == 'plain':
      run = lambda state, r: round_fn(state, keys)
    else:
      form = secure_form.SecureForm(round_fn, _CLIENTS.value, root)
      runner = secure_rounds.LocalSecureRound(
          form, root, distributed_dp.set_participants)
      run = lambda state, r: runner(state, keys, ids, r)[0]
    # pylint: enable=cell-var-from-loop
    state = process.initialize()
    seconds = []
    for r in range(1, _ROUNDS.value + 1):
      start = time.monotonic()
      state = run(state, r)[0]
      seconds.append(time.monotonic() - start)
    shutil.rmtree(root, ignore_errors=True)
    steady = float(np.mean(seconds[1:]))
    if baseline is None:
      baseline = steady
    extra = ''
    if name == 'distributed_dp':
      dim = sum(int(np.prod(s)) for s in CNN_SHAPES)
      extra = f' ({factory.params_for(dim).bits} bits)'
    print(f'{name:>15}: round 1 {seconds[0]:6.2f} s, then '
          f'{steady:6.2f} s/round ({steady / baseline:4.2f}x '
          f'{_AGGREGATORS.value[0]}){extra}', flush=True)


if __name__ == '__main__':
  app.run(main)
