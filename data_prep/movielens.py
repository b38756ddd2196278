"""Builds per-user shards of MovieLens ratings for recommendation tasks.

Usage:
  python -m data_prep.movielens --data_dir=DIR --output_dir=DIR
      [--split=u1|per_user] [--eval_fraction=0.2]

--data_dir is a MovieLens 100K folder (u.data, plus u1.base / u1.test for
--split=u1, the 100K default) or a MovieLens 1M folder (ratings.dat;
--split=per_user, the only choice there).

One client per user (client id user_<original id>, zero-padded) holding that
user's training ratings; the eval shard holds the eval ratings, and the
nested shard dir held_out/ holds them again split by user (one shard per
user with eval ratings): held-out ratings belong to their user, so
evaluation runs where the user's training ratings are. Features:
  item    int64  dense item index 0..num_items-1 (ascending original id)
  rating  float  1..5
  user    int64  dense user index 0..num_users-1 (ascending original id),
                 for grouping eval ratings by user
manifest.source records num_users, num_items, item_ids and user_ids:
item_ids[i] is the original MovieLens id of dense item index i, over every
item in the files read (the id -> index mapping is {id: i for i, id in
enumerate(item_ids)}; see `item_index`); user_ids likewise for users.

Users are the clients, so only users with training ratings get a dense
index; eval ratings of other users are dropped and counted (Federated
Reconstruction rebuilds a user's embedding from local training data, so such
users cannot be evaluated).

Splits:
  u1        train = u1.base, eval = u1.test (GroupLens' standard 80/20).
  per_user  for each user, the latest round(eval_fraction * n) (half up)
            of their n ratings by (timestamp, item id) go to eval,
            keeping at least one rating in train. Ties in timestamp are
            broken by item id, so the split does not depend on line order.
Client shards list a user's ratings by (timestamp, item id); the eval shard
by (user, timestamp, item id).
"""

import dataclasses
import math
import os
import statistics

from absl import flags
from absl import logging
import numpy as np

# cli must stay the first data_prep import: it quiets TF's import-time
# logging before shards imports TensorFlow.
from data_prep import cli
from data_prep import entry_point
from data_prep import errors
from data_prep import shards

TASK = "movielens"
FEATURES_SPEC = {
    "item": {"kind": "int64", "shape": []},
    "rating": {"kind": "float", "shape": []},
    "user": {"kind": "int64", "shape": []},
}
SPLITS = ("u1", "per_user")
DEFAULT_EVAL_FRACTION = 0.2
ML_100K = "ml-100k"
ML_1M = "ml-1m"
MIN_RATING, MAX_RATING = 1, 5
_FILES = {ML_100K: "u.data", ML_1M: "ratings.dat"}
_SEPARATORS = {ML_100K: "\t", ML_1M: "::"}
_U1_FILES = ("u1.base", "u1.test")
_HOW_TO_GET = ("download ml-100k.zip or ml-1m.zip from "
               "https://grouplens.org/datasets/movielens/, unzip it and pass "
               "the folder as --data_dir")


@dataclasses.dataclass(frozen=True)
class Ratings:
  """Ratings of one file, as parallel arrays of original ids."""
  users: np.ndarray  # int64 original user ids.
  items: np.ndarray  # int64 original item ids.
  ratings: np.ndarray  # int64 in MIN_RATING..MAX_RATING.
  timestamps: np.ndarray  # int64 seconds.
  path: str

  def __len__(self) -> int:
    return len(self.users)


@dataclasses.dataclass(frozen=True)
class Split:
  """A train/eval split before dense indexing, plus what was dropped."""
  train: Ratings
  eval: Ratings
  item_ids: np.ndarray  # Sorted ids of every item read, dropped or not.
  dropped_eval_ratings: int
  dropped_eval_users: int


def prepare(data_dir: str, shard_dir: str, split: str | None = None,
            eval_fraction: float = DEFAULT_EVAL_FRACTION) -> shards.Manifest:
  """Reads MovieLens ratings, splits them and writes per-user shards.

  Args:
    data_dir: a MovieLens 100K or 1M folder (autodetected).
    shard_dir: output directory, replaced atomically.
    split: "u1" (100K only), "per_user", or None for the dataset's
      default (u1 for 100K, per_user for 1M).
    eval_fraction: share of each user's latest ratings held out, in
      [0, 1); per_user only.

  Returns:
    The written manifest; see the module docstring for its contents.

  Raises:
    DataPrepError: bad request or missing files.
    DataFormatError: a malformed ratings file (names the file and line).
  """
  dataset, split = _check_request(data_dir, split, eval_fraction)
  data_dir = os.path.abspath(data_dir)
  parts = split_ratings(data_dir, dataset, split, eval_fraction)
  if parts.dropped_eval_ratings:
    logging.warning(
        "dropped %d eval ratings of %d users who have no training ratings",
        parts.dropped_eval_ratings, parts.dropped_eval_users)
  train, evaluation = parts.train, parts.eval
  item_ids = parts.item_ids
  user_ids = np.unique(train.users)
  train_user = np.searchsorted(user_ids, train.users)
  order = np.lexsort((train.items, train.timestamps, train_user))
  bounds = np.searchsorted(train_user[order], np.arange(len(user_ids) + 1))
  train_columns = _columns(train, order, item_ids, user_ids)
  names = user_client_ids(user_ids)

  def clients():
    for i, client_id in enumerate(names):
      lo, hi = bounds[i], bounds[i + 1]
      yield client_id, {name: column[lo:hi]
                        for name, column in train_columns.items()}

  eval_user = np.searchsorted(user_ids, evaluation.users)
  eval_order = np.lexsort((evaluation.items, evaluation.timestamps,
                           eval_user))
  source = _source_record(data_dir, dataset, split)
  source.update({
      "num_users": len(user_ids),
      "num_items": len(item_ids),
      "num_train_ratings": len(train),
      "num_eval_ratings": len(evaluation),
      "dropped_eval_ratings": parts.dropped_eval_ratings,
      "dropped_eval_users": parts.dropped_eval_users,
      "user_ids": user_ids.tolist(),
      "item_ids": item_ids.tolist(),
  })
  manifest = shards.write_shards(
      shard_dir, TASK, FEATURES_SPEC, clients(),
      eval_examples=(_columns(evaluation, eval_order, item_ids, user_ids)
                     if len(evaluation) else None),
      num_classes=None,
      partition=_partition_record(split, eval_fraction),
      source=source)
  held_out_by_user(manifest)
  return manifest


def find_or_prepare(data_dir: str, shard_dir: str, split: str | None = None,
                    eval_fraction: float = DEFAULT_EVAL_FRACTION
                    ) -> shards.Manifest:
  """Returns existing shards if built from the same request, else builds.

  "Same request" means equal task, partition record and input files (path,
  size and mtime of each file read). Shard contents are not hashed here;
  call shards.verify_shards for that.

  Args/Raises: as for `prepare`.
  """
  dataset, resolved = _check_request(data_dir, split, eval_fraction)
  data_dir = os.path.abspath(data_dir)
  wanted_source = _source_record(data_dir, dataset, resolved)
  wanted_partition = _partition_record(resolved, eval_fraction)
  manifest = shards.load_if_matching(
      shard_dir, lambda manifest: (manifest.task == TASK and
                                  manifest.partition == wanted_partition and
                                  {k: manifest.source.get(k) for k in wanted_source} ==
                                  wanted_source))
  if manifest is not None:
    held_out_by_user(manifest)  # Shard dirs of earlier versions lack it.
    return manifest
  return prepare(data_dir, shard_dir, resolved, eval_fraction)


def held_out_by_user(manifest: shards.Manifest) -> shards.Manifest:
  """The eval ratings as one shard per user in <shard_dir>/held_out.

  Built from the eval shard once and reused while the eval shard's sha256
  matches. Users without eval ratings get no shard.
  """
  target = os.path.join(manifest.shard_dir, shards.HELD_OUT_DIR)
  eval_sha256 = manifest.eval.sha256 if manifest.eval else None
  existing = shards.load_if_matching(
      target, lambda m: m.source.get("eval_sha256") == eval_sha256)
  if existing is not None:
    return existing
  per_user = iter(())
  if manifest.eval is not None:
    columns = shards.read_numpy(manifest, manifest.eval)
    client_ids = user_client_ids(np.array(manifest.source["user_ids"]))
    order = np.argsort(columns["user"], kind="stable")
    users = columns["user"][order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    per_user = (
        (client_ids[int(users[start])],
         {name: values[order[start:end]] for name, values in columns.items()})
        for start, end in zip(starts, np.r_[starts[1:], len(users)]))
  return shards.write_shards(
      target, manifest.task, manifest.features, per_user, eval_examples=None,
      num_classes=None, partition=dict(manifest.partition),
      source={"eval_sha256": eval_sha256}, label_key=None)


def detect_dataset(data_dir: str) -> str:
  """Returns ML_100K (u.data present) or ML_1M (ratings.dat present).

  Raises:
    DataPrepError: missing directory, neither or both files present.
  """
  data_dir = os.path.abspath(data_dir)
  if not os.path.isdir(data_dir):
    raise errors.DataPrepError(
        f"MovieLens data directory {data_dir} does not exist or is not a "
        f"directory; {_HOW_TO_GET}")
  found = [name for name, file in _FILES.items()
           if os.path.isfile(os.path.join(data_dir, file))]
  if not found:
    raise errors.DataPrepError(
        f"{data_dir} holds neither u.data (MovieLens 100K) nor ratings.dat "
        f"(MovieLens 1M); {_HOW_TO_GET}")
  if len(found) > 1:
    raise errors.DataPrepError(
        f"{data_dir} holds both u.data (MovieLens 100K) and ratings.dat "
        "(MovieLens 1M); pass a --data_dir holding only one dataset")
  return found[0]


def read_ratings(path: str, separator: str) -> Ratings:
  """Parses a `user<sep>item<sep>rating<sep>timestamp` file.

  Every line must have exactly four integer fields, a rating in
  MIN_RATING..MAX_RATING and end with a newline (a missing final newline
  means the file was cut short).

  Raises:
    DataPrepError: the file cannot be opened.
    DataFormatError: a bad line, naming the file and its line number.
  """
  columns = ([], [], [], [])
  lineno = 0
  try:
    f = open(path, encoding="latin-1", newline="")
  except OSError as e:
    raise errors.DataPrepError(
        f"cannot read MovieLens ratings file {path} ({e.strerror}); check "
        "that it exists and is readable") from e
  with f:
    for lineno, line in enumerate(f, 1):
      if not line.endswith("\n"):
        raise errors.DataFormatError(
            f"{path} line {lineno}: the last line {line[:40]!r} has no "
            "newline, so the file looks truncated; restore the original "
            f"file ({_HOW_TO_GET})")
      fields = line.rstrip("\r\n").split(separator)
      if len(fields) != 4:
        raise errors.DataFormatError(
            f"{path} line {lineno}: expected 4 {separator!r}-separated "
            f"fields (user, item, rating, timestamp), got {len(fields)} in "
            f"{line.rstrip()[:60]!r}; fix or remove the line")
      try:
        values = [int(field) for field in fields]
      except ValueError:
        raise errors.DataFormatError(
            f"{path} line {lineno}: fields must be integers, got "
            f"{line.rstrip()[:60]!r}; fix or remove the line") from None
      if values[0] < 0 or values[1] < 0:
        raise errors.DataFormatError(
            f"{path} line {lineno}: user and item ids must be non-negative, "
            f"got {line.rstrip()[:60]!r}; fix or remove the line")
      if not MIN_RATING <= values[2] <= MAX_RATING:
        raise errors.DataFormatError(
            f"{path} line {lineno}: rating {values[2]} is outside "
            f"{MIN_RATING}..{MAX_RATING}; fix or remove the line")
      for column, value in zip(columns, values):
        column.append(value)
  if not lineno:
    raise errors.DataFormatError(
        f"{path} is empty; restore the original file ({_HOW_TO_GET})")
  arrays = [np.array(column, dtype=np.int64) for column in columns]
  return Ratings(*arrays, path=path)


def split_ratings(data_dir: str, dataset: str, split: str,
                  eval_fraction: float) -> Split:
  """Reads the files a split needs and returns its train and eval ratings.

  Eval ratings of users with no training rating are dropped and counted;
  their items still get an index, so num_items counts every item read.
  """
  if split == "u1":
    train, evaluation = (
        read_ratings(os.path.join(data_dir, name), _SEPARATORS[dataset])
        for name in _U1_FILES)
  else:
    path = os.path.join(data_dir, _FILES[dataset])
    train, evaluation = per_user_split(
        read_ratings(path, _SEPARATORS[dataset]), eval_fraction)
  has_train = np.isin(evaluation.users, train.users)
  dropped_users = np.unique(evaluation.users[~has_train])
  return Split(train=train, eval=_take(evaluation, np.flatnonzero(has_train)),
               item_ids=np.unique(np.concatenate([train.items,
                                                  evaluation.items])),
               dropped_eval_ratings=int(np.sum(~has_train)),
               dropped_eval_users=len(dropped_users))


def per_user_split(ratings: Ratings, eval_fraction: float
                   ) -> tuple[Ratings, Ratings]:
  """Holds out each user's latest ratings; see the module docstring.

  A user with n ratings gets min(n - 1, floor(eval_fraction * n + 0.5))
  eval ratings: the last ones by (timestamp, item id).

  Returns:
    (train, eval), each sorted by (user, timestamp, item).
  """
  order = np.lexsort((ratings.items, ratings.timestamps, ratings.users))
  users = ratings.users[order]
  starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
  counts = np.diff(np.r_[starts, len(users)])
  num_eval = np.minimum(counts - 1,
                        np.floor(eval_fraction * counts + 0.5).astype(
                            np.int64))
  # Position of each rating within its user's run, counted from the end.
  from_end = np.repeat(starts + counts, counts) - np.arange(len(users))
  is_eval = from_end <= np.repeat(num_eval, counts)
  return (_take(ratings, order[~is_eval]), _take(ratings, order[is_eval]))


def user_client_ids(user_ids: np.ndarray) -> list[str]:
  """Returns user_0001.. for original ids, padded so ids sort by number."""
  width = max(4, len(str(int(np.max(user_ids))))) if len(user_ids) else 4
  return [f"user_{int(u):0{width}d}" for u in user_ids]


def item_index(manifest: shards.Manifest) -> dict[int, int]:
  """Returns {original item id: dense index} from a movielens manifest."""
  return {item: i for i, item in enumerate(manifest.source["item_ids"])}


def _check_request(data_dir: str, split: str | None,
                   eval_fraction: float) -> tuple[str, str]:
  """Validates flags; returns (dataset, resolved split)."""
  dataset = detect_dataset(data_dir)
  if split is None:
    split = "u1" if dataset == ML_100K else "per_user"
  if split not in SPLITS:
    raise errors.DataPrepError(
        f"unknown --split={split}; use {' or '.join(SPLITS)}")
  if split == "u1":
    if dataset != ML_100K:
      raise errors.DataPrepError(
          f"--split=u1 needs MovieLens 100K's u1.base/u1.test, but "
          f"{os.path.abspath(data_dir)} holds MovieLens 1M; use "
          "--split=per_user")
    missing = [name for name in _U1_FILES
               if not os.path.isfile(os.path.join(data_dir, name))]
    if missing:
      raise errors.DataPrepError(
          f"--split=u1 needs {', '.join(missing)} in "
          f"{os.path.abspath(data_dir)}; restore them from ml-100k.zip or "
          "use --split=per_user")
  elif not (0 <= eval_fraction < 1 and math.isfinite(eval_fraction)):
    raise errors.DataPrepError(
        f"--eval_fraction={eval_fraction} must be in [0, 1), e.g. 0.2")
  return dataset, split


def _partition_record(split: str, eval_fraction: float) -> dict:
  fraction = float(eval_fraction) if split == "per_user" else None
  return {"method": "natural", "unit": "user", "split": split,
          "eval_fraction": fraction}


def _source_record(data_dir: str, dataset: str, split: str) -> dict:
  """Describes the input files; cheap (stats files without reading)."""
  names = _U1_FILES if split == "u1" else (_FILES[dataset],)
  return {"data_dir": data_dir, "dataset": dataset,
          "files": [_file_record(os.path.join(data_dir, name))
                    for name in names]}


def _file_record(path: str) -> dict:
  try:
    stat = os.stat(path)
  except OSError as e:
    raise errors.DataPrepError(
        f"cannot read MovieLens ratings file {path} ({e.strerror}); "
        f"{_HOW_TO_GET}") from e
  return {"path": path, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _take(ratings: Ratings, indices: np.ndarray) -> Ratings:
  return Ratings(ratings.users[indices], ratings.items[indices],
                 ratings.ratings[indices], ratings.timestamps[indices],
                 path=ratings.path)


def _columns(ratings: Ratings, order: np.ndarray, item_ids: np.ndarray,
             user_ids: np.ndarray) -> dict[str, np.ndarray]:
  """Dense-indexed feature columns of `ratings` in `order`."""
  return {
      "item": np.searchsorted(item_ids, ratings.items[order]),
      "rating": ratings.ratings[order].astype(np.float32),
      "user": np.searchsorted(user_ids, ratings.users[order]),
  }


# Command line.


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the flags of `python -m data_prep.movielens`."""
  flags.DEFINE_string(
      "data_dir", None,
      "MovieLens 100K folder (u.data, u1.base, u1.test) or 1M folder "
      "(ratings.dat).", required=True, flag_values=flag_values)
  flags.DEFINE_string(
      "output_dir", None,
      "Directory for manifest.json, clients/*.tfrecord and eval.tfrecord; "
      "replaced atomically if it holds earlier shards.",
      required=True, flag_values=flag_values)
  flags.DEFINE_enum(
      "split", None, list(SPLITS),
      "u1: train u1.base, eval u1.test (100K only, its default); "
      "per_user: each user's latest --eval_fraction of ratings to eval "
      "(default for 1M).", flag_values=flag_values)
  flags.DEFINE_float(
      "eval_fraction", DEFAULT_EVAL_FRACTION,
      "Share of each user's latest ratings held out by --split=per_user.",
      flag_values=flag_values)


def make_main(flag_values: flags.FlagValues = flags.FLAGS):
  """Returns an absl main() that prepares MovieLens shards from the flags."""
  return cli.prepare_main(
      lambda fv: prepare(fv.data_dir, fv.output_dir, fv.split,
                         fv.eval_fraction),
      summary, flag_values)


def summary(manifest: shards.Manifest, seconds: float) -> str:
  """One-line description of a finished build."""
  sizes = [info.num_examples for info in manifest.clients]
  source = manifest.source
  eval_ratings = manifest.eval.num_examples if manifest.eval else 0
  return (f"{TASK} {source['dataset']} (split {manifest.partition['split']})"
          f": {len(sizes)} clients, {sum(sizes)} train ratings (per client "
          f"min {min(sizes)} / median {statistics.median(sizes):g} / max "
          f"{max(sizes)}), {eval_ratings} eval ratings, "
          f"{source['num_items']} items; dropped "
          f"{source['dropped_eval_ratings']} eval ratings of "
          f"{source['dropped_eval_users']} users without train ratings -> "
          f"{manifest.shard_dir} in {seconds:.1f} s")


if __name__ == "__main__":
  define_flags()
  entry_point.run(make_main())
