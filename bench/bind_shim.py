"""Seconds per round with and without the loopback bind shim.

    python -m bench.bind_shim --before=/path/to/checkout-without-it \
        [--rounds=6] [--repeats=2] [--num_clients=10] [--model=2nn]

Runs the same local training (`python -m tff_pipeline.train`) from a
checkout without the shim (--before, e.g. `git archive` of the commit before
it) and from this one, alternating, --repeats times each, and prints the
mean seconds per round of each run (round 1, which traces and builds graphs,
left out) and the difference. The shim acts once, at bind(); the socket check
once, after start: rounds should not differ beyond noise.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile

from absl import app
from absl import flags

_BEFORE = flags.DEFINE_string('before', None, 'Checkout without the shim.')
_ROUNDS = flags.DEFINE_integer('rounds', 6, 'Rounds per run (>= 2).')
_REPEATS = flags.DEFINE_integer('repeats', 2, 'Runs per checkout.')
_NUM_CLIENTS = flags.DEFINE_integer('num_clients', 10, 'Clients.')
_PER_ROUND = flags.DEFINE_integer('clients_per_round', 5, 'Clients per round.')
_MODEL = flags.DEFINE_string('model', '2nn', 'Model.')

_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(repo: str, out: str) -> list[float]:
  args = [sys.executable, '-m', 'tff_pipeline.train', '--progress=false',
          f'--num_clients={_NUM_CLIENTS.value}', '--partition=iid',
          f'--clients_per_round={_PER_ROUND.value}',
          f'--rounds={_ROUNDS.value}', f'--model={_MODEL.value}',
          '--eval_every=0', f'--output_dir={out}']
  subprocess.run(args, cwd=repo, check=True, capture_output=True,
                 env=dict(os.environ, PYTHONPATH=repo,
                          TF_CPP_MIN_LOG_LEVEL='3'))
  with open(os.path.join(out, 'metrics.jsonl'), encoding='utf-8') as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [row['round_seconds'] for row in rows[1:]]


def main(argv: list[str]) -> int:
  del argv
  if not _BEFORE.value:
    print('error: --before is required (a checkout without the shim)',
          file=sys.stderr)
    return 2
  root = tempfile.mkdtemp(prefix='bind-shim-bench-')
  seconds = {'without shim': [], 'with shim': []}
  for repeat in range(_REPEATS.value):
    for name, repo in (('without shim', _BEFORE.value), ('with shim', _HERE)):
      rounds = _run(repo, os.path.join(root, f'{name}-{repeat}'))
      seconds[name].append(statistics.mean(rounds))
      print(f'{name:13s} run {repeat + 1}: {statistics.mean(rounds):.3f} '
            f's/round (rounds 2-{_ROUNDS.value}: '
            f'{", ".join(f"{s:.2f}" for s in rounds)})', flush=True)
  means = {name: statistics.mean(values) for name, values in seconds.items()}
  for name, mean in means.items():
    print(f'{name:13s} mean {mean:.3f} s/round over {_REPEATS.value} runs')
  print(f'difference (with - without): '
        f'{means["with shim"] - means["without shim"]:+.3f} s/round')
  return 0


if __name__ == '__main__':
  app.run(main)
