"""Writes LEAF-format Shakespeare JSON from a tinyshakespeare-style text.

    python -m bench.leaf_shakespeare --output_dir=/tmp/leaf \
        [--text=../shared/data/shakespeare/tinyshakespeare.txt] \
        [--sampling=niid] [--fraction=0.05] [--min_samples=64] \
        [--split=sample] [--train_fraction=0.9] [--seed=1]

No copy of LEAF's data is kept here, so the benchmarks make their own with
LEAF's preprocessing rules (github.com/TalwalkarLab/leaf, data/shakespeare
and data/utils; Caldas et al. 2018, "LEAF: A Benchmark for Federated
Settings"), written anew from their description:

1. Users are speaking roles. (LEAF's users are play_role; tinyshakespeare
   has no play boundaries, so a role spans the plays it samples.) A role's
   raw text is its lines, each followed by a newline; roles with two lines
   or fewer are dropped.
2. Each newline becomes a space, runs of two or more spaces one space, and
   every 80-character window x of the text, with the character y after it,
   is one sample: len(text) - 80 samples per user, in text order.
3. Sampling (`-s`): `niid` shuffles the users and takes whole users until
   `--sf` of all samples is reached; the last user is cut to the remainder:
   its first k samples, in a random order (LEAF's sample.py). `iid` draws
   `--sf` of all samples at random and deals them out to
   `--iu` x (number of users) new users.
4. `-k`: users with fewer samples are removed.
5. Split (`-t`): `sample` puts each user's first `--tf` of samples in train
   and, for Shakespeare, the samples from 79 past the last training one
   on in test (so test windows start after the training text); `user`
   puts a random `--tf` of the users in train, the rest in test.

Files: <output_dir>/train/all_data_<...>_train_<tf>.json and
<output_dir>/test/..._test_<tf>.json, each {"users", "num_samples",
"user_data": {user: {"x": [...], "y": [...]}}} (plus "hierarchies" with
niid sampling, as LEAF writes it). The line printed at the end gives users
and sample counts per split.
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
from typing import Any

from absl import app
from absl import flags

from data_prep import shakespeare as shakespeare_prep

SEQUENCE_LENGTH = 80
# As in bench/quality.py: ../shared/data beside the repo, or the variable.
_DEFAULT_TEXT = os.path.join(
    os.environ.get('TFF_PIPELINE_SHARED_DATA') or os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
            __file__)))), 'shared', 'data'),
    'shakespeare', 'tinyshakespeare.txt')

_OUTPUT_DIR = flags.DEFINE_string('output_dir', None,
                                  'Folder to write train/ and test/ into.')
_TEXT = flags.DEFINE_string('text', _DEFAULT_TEXT,
                            'A tinyshakespeare-style text (NAME: blocks).')
_SAMPLING = flags.DEFINE_enum('sampling', 'niid', ['niid', 'iid'],
                              "LEAF's -s.")
_FRACTION = flags.DEFINE_float('fraction', 0.05,
                               "LEAF's --sf: fraction of samples kept.")
_IID_USERS = flags.DEFINE_float(
    'iid_users', 0.01, "LEAF's --iu: iid users as a fraction of the users.")
_MIN_SAMPLES = flags.DEFINE_integer('min_samples', 64, "LEAF's -k.")
_SPLIT = flags.DEFINE_enum('split', 'sample', ['sample', 'user'],
                           "LEAF's -t.")
_TRAIN_FRACTION = flags.DEFINE_float('train_fraction', 0.9, "LEAF's --tf.")
_SEED = flags.DEFINE_integer('seed', 1,
                             "LEAF's --smplseed and --spltseed.")

UserData = dict[str, dict[str, list[str]]]


def role_texts(text: str) -> dict[str, str]:
  """Role -> its lines, each ending in a newline (roles of > 2 lines)."""
  texts = {}
  for role, speeches in shakespeare_prep.parse_tinyshakespeare(text).items():
    lines = [line for speech in speeches for line in speech.split('\n')]
    if len(lines) > 2:
      texts[role] = ''.join(line + '\n' for line in lines)
  return texts


def windows(text: str, length: int = SEQUENCE_LENGTH
            ) -> tuple[list[str], list[str]]:
  """LEAF's samples of one user's text: (80-char windows, next chars)."""
  text = re.sub(r'  +', ' ', text.replace('\n', ' '))
  xs = [text[i:i + length] for i in range(len(text) - length)]
  ys = [text[i + length] for i in range(len(text) - length)]
  return xs, ys


def sample_niid(users: UserData, fraction: float, rng: random.Random
                ) -> UserData:
  """Whole users in a random order until `fraction` of the samples."""
  wanted = int(fraction * sum(len(d['y']) for d in users.values()))
  order = list(users)
  rng.shuffle(order)
  taken: UserData = {}
  total = 0
  for user in order:
    if total >= wanted:
      break
    data = users[user]
    count = len(data['y'])
    if total + count > wanted:
      # LEAF keeps the user's first samples, shuffled.
      count = wanted - total
      picks = rng.sample(range(count), count)
      data = {'x': [data['x'][i] for i in picks],
              'y': [data['y'][i] for i in picks]}
    taken[user] = data
    total += count
  return taken


def sample_iid(users: UserData, fraction: float, user_fraction: float,
               rng: random.Random) -> UserData:
  """`fraction` of all samples at random, dealt out to new users."""
  xs = [x for d in users.values() for x in d['x']]
  ys = [y for d in users.values() for y in d['y']]
  picks = rng.sample(range(len(ys)), int(fraction * len(ys)))
  num_users = max(1, round(user_fraction * len(users)))
  size, extra = divmod(len(picks), num_users)
  taken, start = {}, 0
  for u in range(num_users):
    # Smaller groups first, as LEAF's iid_divide does.
    end = start + size + (u >= num_users - extra)
    taken[str(u)] = {'x': [xs[i] for i in picks[start:end]],
                     'y': [ys[i] for i in picks[start:end]]}
    start = end
  return taken


def split_by_sample(users: UserData, train_fraction: float
                    ) -> tuple[UserData, UserData]:
  """Each user's first samples train; test starts 79 samples later."""
  train, test = {}, {}
  for user, data in users.items():
    n = len(data['y'])
    if n < 2:
      continue
    num_train = 1 if n == 2 else max(1, int(train_fraction * n))
    first_test = num_train + SEQUENCE_LENGTH - 1
    if first_test >= n:
      continue  # LEAF drops users left without test samples.
    train[user] = {k: v[:num_train] for k, v in data.items()}
    test[user] = {k: v[first_test:] for k, v in data.items()}
  return train, test


def split_by_user(users: UserData, train_fraction: float,
                  rng: random.Random) -> tuple[UserData, UserData]:
  """A random `train_fraction` of the users train; the others test."""
  names = list(users)
  chosen = set(rng.sample(range(len(names)), int(train_fraction * len(names))))
  train = {u: users[u] for i, u in enumerate(names) if i in chosen}
  test = {u: users[u] for i, u in enumerate(names) if i not in chosen}
  return train, test


def _write(path: str, users: UserData, hierarchies: bool) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  data: dict[str, Any] = {'users': list(users)}
  if hierarchies:
    data['hierarchies'] = ['tinyshakespeare'] * len(users)
  data['num_samples'] = [len(d['y']) for d in users.values()]
  data['user_data'] = users
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(data, f)


def generate(text: str, output_dir: str, sampling: str, fraction: float,
             iid_users: float, min_samples: int, split: str,
             train_fraction: float, seed: int) -> tuple[UserData, UserData]:
  """Runs the LEAF steps and writes train/ and test/; returns both."""
  users = {}
  for role, role_text in role_texts(text).items():
    xs, ys = windows(role_text)
    if ys:
      users[role] = {'x': xs, 'y': ys}
  sample_rng, split_rng = random.Random(seed), random.Random(seed)
  if sampling == 'niid':
    users = sample_niid(users, fraction, sample_rng)
  else:
    users = sample_iid(users, fraction, iid_users, sample_rng)
  users = {u: d for u, d in users.items() if len(d['y']) >= min_samples}
  if split == 'sample':
    train, test = split_by_sample(users, train_fraction)
  else:
    train, test = split_by_user(users, train_fraction, split_rng)
  label = f'{sampling}_{str(fraction)[2:]}_keep_{min_samples}'
  tf_label = str(train_fraction)[2:]
  _write(os.path.join(output_dir, 'train',
                      f'all_data_{label}_train_{tf_label}.json'), train,
         sampling == 'niid' and split == 'sample')
  _write(os.path.join(output_dir, 'test',
                      f'all_data_{label}_test_{tf_label}.json'), test,
         sampling == 'niid' and split == 'sample')
  return train, test


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not _OUTPUT_DIR.value:
    raise app.UsageError('--output_dir is required')
  with open(_TEXT.value, encoding='utf-8') as f:
    text = f.read()
  train, test = generate(text, _OUTPUT_DIR.value, _SAMPLING.value,
                         _FRACTION.value, _IID_USERS.value, _MIN_SAMPLES.value,
                         _SPLIT.value, _TRAIN_FRACTION.value, _SEED.value)
  count = lambda split: sum(len(d['y']) for d in split.values())
  print(f'LEAF shakespeare ({_SAMPLING.value}, sf {_FRACTION.value}, '
        f'-k {_MIN_SAMPLES.value}, -t {_SPLIT.value}, tf '
        f'{_TRAIN_FRACTION.value}, seed {_SEED.value}): train {len(train)} '
        f'users / {count(train)} samples, test {len(test)} users / '
        f'{count(test)} samples -> {_OUTPUT_DIR.value}', file=sys.stdout)
  return 0


if __name__ == '__main__':
  app.run(main)
