"""What rounding and modular wrapping cost distributed_dp, over bits.

    python -m bench.ddp_bits [--clients=100,1000] [--models=2nn,cnn] \
        [--bits=10,12,14,15,16,17,18,20] [--noise_multiplier=1.0] \
        [--repeats=1] [--json_out=PATH]

For each model size (Fashion-MNIST 2NN: 199,210 parameters; CNN: 1,199,882),
clients per round n and bits, one simulated round of the distributed Skellam
mechanism with `tff_pipeline.distributed_dp`'s own rounding and decoding:

* n updates of norm C = 1 (all clipped), pairwise cosine 0.5 (a common
  direction plus an individual one of the same size), made directly in the
  rotated domain: the rotation is orthogonal and the update directions are
  isotropic Gaussians, so their rotations are isotropic Gaussians too;
* each is scaled and rounded by `distributed_dp.conditional_round`;
* the aggregate noise Skellam(lambda)^D is drawn in one go (the shares of n
  clients sum to exactly that; distributed_dp_test checks the shares);
* the sum modulo 2^bits is decoded by `distributed_dp.decode`.

Printed per row:
  err_signal  ||decoded - (clean sum + the drawn noise)|| / ||clean sum||:
              what rounding and wrapping add, against the signal;
  predicted   ddp_accounting.predicted_rounding_error (against an aligned
              sum, n C);
  err_noise   the same error against the norm of the DP noise itself;
  wraps       coordinates whose true sum left [-2^(b-1), 2^(b-1)), per
              coordinate;
  inflation   Delta_2 / (s C) - 1, the sensitivity added by rounding (it
              costs epsilon, or noise under --target_epsilon).
The default rule (`ddp_accounting.default_bits`) is the smallest bits with
predicted <= 1% and inflation <= 1%; the last column marks it.
"""

from __future__ import annotations

import json
import math
import os
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top
from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from tff_pipeline.aggregation import ddp_accounting
from tff_pipeline.aggregation import distributed_dp

MODEL_DIMS = {'2nn': 199_210, 'cnn': 1_199_882}

_CLIENTS = flags.DEFINE_list('clients', ['100', '1000'], 'Clients per round.')
_MODELS = flags.DEFINE_list('models', ['2nn', 'cnn'], 'Model sizes.')
_BITS = flags.DEFINE_list('bits', ['10', '12', '14', '15', '16', '17', '18',
                                   '20'], 'Bits to try.')
_NOISE = flags.DEFINE_float('noise_multiplier', 1.0,
                            'Aggregate noise stddev over the clip.')
_REPEATS = flags.DEFINE_integer('repeats', 1, 'Rounds per setting.')
_JSON_OUT = flags.DEFINE_string('json_out', None, 'Also write rows here.')


def _round(params: ddp_accounting.SkellamParams, n: int,
           rng: np.random.Generator) -> dict[str, float]:
  size = params.padded_dim
  seed = tf.constant([int(rng.integers(1 << 62)), 0], tf.int64)
  common = rng.standard_normal(size)
  common /= np.linalg.norm(common)
  clean = np.zeros(size)
  rounded = np.zeros(size, np.int64)
  round_fn = tf.function(lambda v, s: distributed_dp.conditional_round(
      v, s, params.l2_bound_squared))
  for i in range(n):
    own = rng.standard_normal(size)
    own /= np.linalg.norm(own)
    y = common + own
    y *= params.clip / np.linalg.norm(y)  # Rotated, clipped update.
    clean += y
    r = round_fn(tf.constant(params.scale * y),
                 tf.constant([int(rng.integers(1 << 62)), i], tf.int64))
    rounded += r.numpy()
  noise = distributed_dp.skellam_noise(
      tf.constant([int(rng.integers(1 << 62)), 1], tf.int64), size,
      tf.constant(params.lam, tf.float64)).numpy()
  total = rounded + noise
  half = params.modulus // 2
  wraps = np.count_nonzero((total < -half) | (total >= half))
  decoded = distributed_dp.decode(
      tf.constant(np.mod(total, params.modulus)), seed, params).numpy()
  # The same rotation back for the clean sum and the noise.
  to_model = lambda v: distributed_dp.unrotate(  # pylint: disable=g-long-lambda
      tf.constant(v), seed).numpy()[:params.dim]
  clean_model = to_model(clean)
  noise_model = to_model(noise / params.scale)
  error = np.linalg.norm(decoded - clean_model - noise_model)
  return {'err_signal': error / np.linalg.norm(clean_model),
          'err_noise': error / np.linalg.norm(noise_model),
          'wraps': wraps / size}


def main(argv):
  del argv
  rng = np.random.default_rng(1)
  rows = []
  print(f'noise_multiplier {_NOISE.value}, updates of norm 1 with pairwise '
        'cosine 0.5')
  print(f'{"model":>5} {"n":>5} {"bits":>4} {"err_signal":>10} '
        f'{"predicted":>9} {"err_noise":>9} {"wraps":>8} {"inflation":>9} '
        f'{"s/round":>7}')
  for model in _MODELS.value:
    dim = MODEL_DIMS[model]
    for n in (int(c) for c in _CLIENTS.value):
      rule = ddp_accounting.default_bits(n, dim, _NOISE.value)
      for bits in (int(b) for b in _BITS.value):
        try:
          params = ddp_accounting.SkellamParams(
              dim=dim, clip=1.0, noise_multiplier=_NOISE.value,
              expected_clients=n, bits=bits)
        except Exception as e:  # pylint: disable=broad-except
          print(f'{model:>5} {n:>5} {bits:>4}  refused: {e}')
          continue
        start = time.monotonic()
        results = [_round(params, n, rng) for _ in range(_REPEATS.value)]
        seconds = (time.monotonic() - start) / _REPEATS.value
        row = {key: float(np.mean([r[key] for r in results]))
               for key in results[0]}
        row.update(
            model=model, clients=n, bits=bits,
            predicted=ddp_accounting.predicted_rounding_error(
                n, dim, _NOISE.value, bits),
            inflation=ddp_accounting.sensitivity_inflation(
                n, dim, _NOISE.value, bits),
            default=bits == rule, seconds=seconds)
        rows.append(row)
        print(f'{model:>5} {n:>5} {bits:>4} {row["err_signal"]:>10.4f} '
              f'{row["predicted"]:>9.4f} {row["err_noise"]:>9.5f} '
              f'{row["wraps"]:>8.1e} {row["inflation"]:>9.4f} '
              f'{seconds:>7.1f}{"  <- default" if row["default"] else ""}',
              flush=True)
  if _JSON_OUT.value:
    with open(_JSON_OUT.value, 'w', encoding='utf-8') as f:
      json.dump(rows, f, indent=2)


if __name__ == '__main__':
  app.run(main)
