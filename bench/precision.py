"""fp32 vs --precision=bf16: kernels, the CNN round, the Shakespeare LSTM.

    python -m bench.precision [--parts=kernels,cnn,lstm] [--cnn_rounds=4] \
        [--lstm_rounds=20] [--leaf_dir=DIR]

kernels  one thread, as the TFF worker runs each client: GFLOP/s of a
         1024^3 MatMul, of the CNN's second convolution (batch 20) and of
         one CNN training step and one char-LSTM training step, fp32 vs
         bf16; and the oneDNN implementations TensorFlow picked
         (ONEDNN_VERBOSE=1), e.g. brg:avx512_core_amx for AMX-BF16.
cnn      `bench.local_vs_keras`'s workload through `tff_pipeline.train`:
         10 clients holding all 60,000 Fashion-MNIST images, the CNN, batch
         20, every client every round; s/round of rounds 2.., held-out
         accuracy after the last round, the fp32 floor (about 72 MFLOP per
         image, 4.3 TFLOP per round).
lstm     the char LSTM on LEAF's 10-user sample (bench/leaf_shakespeare.py
         writes it into --leaf_dir if missing): s/round, accuracy.

fp32 and bf16 run back to back in one invocation, each in its own process,
same seed, so each ratio comes from one run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap

from absl import app
from absl import flags

_PARTS = flags.DEFINE_list('parts', ['kernels', 'cnn', 'lstm'], 'What to run.')
_CNN_ROUNDS = flags.DEFINE_integer('cnn_rounds', 4, 'CNN rounds (>= 2).')
_LSTM_ROUNDS = flags.DEFINE_integer('lstm_rounds', 20, 'LSTM rounds (>= 2).')
_LEAF_DIR = flags.DEFINE_string(
    'leaf_dir', os.path.join(tempfile.gettempdir(), 'leaf-shakespeare-niid'),
    "LEAF-format Shakespeare (written by bench.leaf_shakespeare if missing).")

CNN_FLOP_PER_IMAGE = 72e6  # Forward + backward, TFF's EMNIST CNN on 28x28.

_KERNELS = textwrap.dedent('''
    import json, sys, time
    import numpy as np
    import tensorflow as tf
    from tff_pipeline.tasks import images, precision, shakespeare
    kind = sys.argv[1]
    out = {}
    def rate(fn, flop, repeats):
      fn()
      start = time.perf_counter()
      for _ in range(repeats):
        fn()
      return flop * repeats / (time.perf_counter() - start) / 1e9
    for dtype in (tf.float32, tf.bfloat16):
      name = dtype.name
      a = tf.random.normal([1024, 1024], dtype=tf.float32)
      a = tf.cast(a, dtype)
      matmul = tf.function(lambda: tf.matmul(a, a))
      out[f'matmul_{name}'] = rate(matmul, 2 * 1024 ** 3, 10)
      x = tf.cast(tf.random.normal([20, 26, 26, 32]), dtype)
      w = tf.cast(tf.random.normal([3, 3, 32, 64]), dtype)
      conv = tf.function(lambda: tf.nn.conv2d(x, w, 1, 'VALID'))
      out[f'conv_{name}'] = rate(conv, 2 * 20 * 24 * 24 * 64 * 9 * 32, 20)
    for label, build, x, y, flop in (
        ('cnn_step', lambda: images.create_cnn(10),
         tf.random.uniform([20, 28, 28, 1]),
         tf.constant(np.arange(20) % 10), 72e6 * 20),
        ('lstm_step', lambda: shakespeare.create_char_lstm(),
         tf.constant(np.random.default_rng(0).integers(1, 86, (8, 80))),
         tf.constant(np.random.default_rng(1).integers(1, 86, (8, 80))),
         8 * 80 * 3 * 2 * (4 * 256 * 264 + 4 * 256 * 512 + 256 * 90))):
      for mode in ('fp32', 'bf16'):
        model = precision.model_builder(build, mode)()
        loss = tf.keras.losses.SparseCategoricalCrossentropy(
            from_logits=label == 'lstm_step')
        opt = tf.keras.optimizers.SGD(0.01)
        @tf.function
        def step():
          with tf.GradientTape() as tape:
            value = loss(y, model(x, training=True))
          opt.apply_gradients(zip(tape.gradient(
              value, model.trainable_variables), model.trainable_variables))
        out[f'{label}_{mode}'] = rate(step, flop, 20)
    print(json.dumps(out))
''')


def _child_env(**extra: str) -> dict[str, str]:
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', TF_NUM_INTRAOP_THREADS='1',
              TF_NUM_INTEROP_THREADS='1', PYTHONPATH=os.getcwd(), **extra)


def kernels() -> None:
  done = subprocess.run([sys.executable, '-c', _KERNELS, 'rates'],
                        env=_child_env(), capture_output=True, text=True,
                        check=True)
  rates = json.loads(done.stdout.strip().splitlines()[-1])
  verbose = subprocess.run([sys.executable, '-c', _KERNELS, 'verbose'],
                           env=_child_env(ONEDNN_VERBOSE='1'),
                           capture_output=True, text=True, check=True)
  picked: dict[str, set[str]] = {}
  for line in verbose.stdout.splitlines():
    fields = line.split(',')
    if len(fields) > 6 and fields[0] == 'onednn_verbose' and fields[1] == 'exec':
      primitive, implementation = fields[3], fields[4]
      data = re.findall(r'src_(\w+?):|wei_(\w+?):', line)
      dtypes = {d for pair in data for d in pair if d}
      picked.setdefault(f'{primitive} ({"/".join(sorted(dtypes))})',
                        set()).add(implementation)
  print('kernels, one thread (GFLOP/s): fp32 -> bf16')
  for name in ('matmul', 'conv'):
    fp32, bf16 = rates[f'{name}_float32'], rates[f'{name}_bfloat16']
    print(f'  {name:10s} {fp32:7.1f} -> {bf16:7.1f}  (x{bf16 / fp32:.2f})')
  for name in ('cnn_step', 'lstm_step'):
    fp32, bf16 = rates[f'{name}_fp32'], rates[f'{name}_bf16']
    print(f'  {name:10s} {fp32:7.1f} -> {bf16:7.1f}  (x{bf16 / fp32:.2f})')
  print('oneDNN implementations (ONEDNN_VERBOSE=1):')
  for primitive, implementations in sorted(picked.items()):
    print(f'  {primitive}: {", ".join(sorted(implementations))}')
  if not picked:
    print('  none reported: TensorFlow ran these ops outside oneDNN')


def _train(args: list[str]) -> tuple[list[dict], dict]:
  out = tempfile.mkdtemp(prefix='precision-')
  subprocess.run([sys.executable, '-m', 'tff_pipeline.train', *args,
                  f'--output_dir={out}/run', '--progress=false'], check=True,
                 env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
  with open(os.path.join(out, 'run', 'metrics.jsonl'), encoding='utf-8') as f:
    rows = [json.loads(line) for line in f]
  with open(os.path.join(out, 'run', 'summary.json'), encoding='utf-8') as f:
    return rows, json.load(f)


def _steady(rows: list[dict]) -> float:
  later = rows[1:] or rows
  return sum(r['round_seconds'] for r in later) / len(later)


def _compare(name: str, args: list[str], flop_per_round: float = 0.0) -> None:
  results = {p: _train([*args, f'--precision={p}']) for p in ('fp32', 'bf16')}
  print(f'{name}: {" ".join(args)}')
  for precision, (rows, summary) in results.items():
    seconds = _steady(rows)
    floor = (f'  {flop_per_round / seconds / 1e9:.0f} GFLOP/s'
             if flop_per_round else '')
    print(f'  {precision}: {seconds:6.1f} s/round (round 1: '
          f'{rows[0]["round_seconds"]:.1f}s){floor}  held-out accuracy '
          f'{summary["final_eval"]["accuracy"]:.4f} after round '
          f'{rows[-1]["round"]}')
  fp32, bf16 = results['fp32'], results['bf16']
  print(f'  bf16/fp32: x{_steady(fp32[0]) / _steady(bf16[0]):.2f} faster, '
        f'accuracy {100 * (bf16[1]["final_eval"]["accuracy"] - fp32[1]["final_eval"]["accuracy"]):+.2f} points')


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  print(f'cores: {len(os.sched_getaffinity(0))}', flush=True)
  if 'kernels' in _PARTS.value:
    kernels()
  if 'cnn' in _PARTS.value:
    _compare('cnn', ['--num_clients=10', '--clients_per_round=10',
                     '--partition=iid', '--model=cnn', '--client_batch_size=20',
                     f'--rounds={_CNN_ROUNDS.value}', '--eval_every=0'],
             flop_per_round=CNN_FLOP_PER_IMAGE * 60000)
  if 'lstm' in _PARTS.value:
    if not os.path.isdir(os.path.join(_LEAF_DIR.value, 'train')):
      subprocess.run([sys.executable, '-m', 'bench.leaf_shakespeare',
                      f'--output_dir={_LEAF_DIR.value}'], check=True)
    _compare('lstm', ['--task=shakespeare', f'--data_dir={_LEAF_DIR.value}',
                      '--clients_per_round=10',
                      f'--rounds={_LSTM_ROUNDS.value}', '--eval_every=0'])
  return 0


if __name__ == '__main__':
  app.run(main)
