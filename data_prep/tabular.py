"""Builds per-client shards of a tabular classification dataset (CSV files).

Usage:
  python -m data_prep.tabular --data_dir=FILE_OR_DIR --label_column=NAME
      --output_dir=DIR [--client_column=NAME] [--num_clients=10]
      [--partition=dirichlet] [--partition_alpha=0.5] [--seed=0]
      [--eval_fraction=0.1] [--eval_data=FILE]

--data_dir is a CSV file or a folder of them (every *.csv, in name order,
all with the same header). The first line of a file is its header; each
other line is one example. --label_column names the class (any values:
numbers or names); every other column whose first value is a number is a
feature and must hold a number on every line; other columns (text) are
ignored. Empty lines are skipped.

Clients: with --client_column, one client per distinct value of that column
(its owner: the natural partition; --num_clients=N keeps the N largest,
0 all). Without it, the rows are split into --num_clients clients, iid or
Dirichlet label-skewed (FedML's hetero), as for the image datasets.
Client ids are the column's values where they are safe file names; other
values are spelled safely and suffixed with a hash of the original.

Held out: --eval_data=FILE (same header) is the eval shard; without it a
seeded --eval_fraction of each client's rows (at least one row stays with
the client) goes to the eval shard instead.

Features:
  features  float [num_features]  the feature columns, as written
  label     int64 []              index into manifest.source['classes']
manifest.source records the feature names, the classes (sorted; numerically
when every label is an integer), the training rows' per-feature mean and
standard deviation (the task standardizes with them) and the input files'
sha256, so unchanged inputs reuse the shards.

A line that cannot be read is an error naming the file and the line.
"""

import csv
import dataclasses
import hashlib
import math
import os

from absl import flags
import numpy as np

# cli must stay the first data_prep import: it quiets TF's import-time
# logging before shards imports TensorFlow.
from data_prep import cli
from data_prep import entry_point
from data_prep import errors
from data_prep import partition as partition_lib
from data_prep import shards

TASK = "csv"
PARTITIONS = ("iid", "dirichlet", "natural")
DEFAULT_EVAL_FRACTION = 0.1
DIRICHLET_MIN_EXAMPLES = 10
_HASH_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Table:
  """Rows read from CSV files."""
  features: np.ndarray  # float32 [N, F].
  labels: list[str]  # Raw label values.
  owners: list[str] | None  # Raw --client_column values.
  feature_names: list[str]
  files: list[str]


def features_spec(num_features: int) -> dict:
  return {"features": {"kind": "float", "shape": [num_features]},
          "label": {"kind": "int64", "shape": []}}


def csv_files(data_dir: str) -> list[str]:
  """The CSV file `data_dir`, or the *.csv files in the folder `data_dir`.

  Raises:
    DataPrepError: nothing there.
  """
  path = os.path.abspath(data_dir)
  if os.path.isfile(path):
    return [path]
  if not os.path.isdir(path):
    raise errors.DataPrepError(
        f"--data_dir={data_dir} does not exist; give a CSV file or a folder "
        "of .csv files")
  found = sorted(os.path.join(path, name) for name in os.listdir(path)
                 if name.lower().endswith(".csv") and
                 os.path.isfile(os.path.join(path, name)))
  if not found:
    raise errors.DataPrepError(
        f"{path} holds no .csv files; give a CSV file or a folder of them")
  return found


def _number(value: str) -> float | None:
  try:
    number = float(value)
  except ValueError:
    return None
  return number if math.isfinite(number) else None


def read_table(paths: list[str], label_column: str, client_column: str = "",
               feature_names: list[str] | None = None) -> Table:
  """Reads the rows of CSV files that share one header.

  Args:
    paths: The files, in order.
    label_column: The class column.
    client_column: The owner column ('' for none).
    feature_names: The feature columns to read (e.g. the training data's,
      for an eval file); None picks every column but the label and client
      whose first value is a number.

  Raises:
    DataFormatError: a bad header or line, naming the file and line.
  """
  features: list[list[float]] = []
  labels: list[str] = []
  owners: list[str] = []
  header_of_first: list[str] | None = None
  for path in paths:
    try:
      f = open(path, encoding="utf-8-sig", newline="")
    except OSError as e:
      raise errors.DataPrepError(
          f"cannot read {path} ({e.strerror}); check that it exists and is "
          "readable") from e
    with f:
      reader = csv.reader(f)
      try:
        header = next(reader, None)
        if header is None:
          raise errors.DataFormatError(
              f"{path} is empty; it needs a header line naming the columns")
        header = [name.strip() for name in header]
        if header_of_first is None:
          header_of_first = header
        elif header != header_of_first:
          raise errors.DataFormatError(
              f"{path} line 1: its header {header} differs from {paths[0]}'s "
              f"{header_of_first}; give files with one header")
        index = _column_index(path, header, label_column, client_column)
        columns = None
        if feature_names is not None:
          columns = _feature_columns(path, header, feature_names)
        for row in reader:
          if not row or (len(row) == 1 and not row[0].strip()):
            continue  # An empty line.
          where = f"{path} line {reader.line_num}"
          if len(row) != len(header):
            raise errors.DataFormatError(
                f"{where}: {len(row)} fields, but the header has "
                f"{len(header)}; fix or remove the line")
          if columns is None:
            # The first row decides which columns are numbers (features).
            columns = [i for i, name in enumerate(header)
                       if i not in index.values() and
                       _number(row[i]) is not None]
            if not columns:
              raise errors.DataFormatError(
                  f"{where}: no column but the label and client holds a "
                  "number, so there are no features; add numeric columns")
            feature_names = [header[i] for i in columns]
          values = []
          for i in columns:
            number = _number(row[i])
            if number is None:
              raise errors.DataFormatError(
                  f"{where}: feature column {header[i]!r} holds "
                  f"{row[i]!r}, not a number; fix the value or remove the "
                  "line")
            values.append(number)
          label = row[index["label"]].strip()
          if not label:
            raise errors.DataFormatError(
                f"{where}: the label column {label_column!r} is empty; fix "
                "or remove the line")
          if "client" in index:
            owner = row[index["client"]].strip()
            if not owner:
              raise errors.DataFormatError(
                  f"{where}: the client column {client_column!r} is empty; "
                  "fix or remove the line")
            owners.append(owner)
          features.append(values)
          labels.append(label)
      except csv.Error as e:
        raise errors.DataFormatError(
            f"{path} line {reader.line_num}: not valid CSV ({e}); fix the "
            "line") from None
      except UnicodeDecodeError as e:
        raise errors.DataFormatError(
            f"{path}: not UTF-8 text near byte {e.start}; save it as UTF-8 "
            "CSV") from None
  if not labels:
    raise errors.DataFormatError(
        f"{', '.join(paths)}: no data lines under the header; add rows")
  return Table(features=np.asarray(features, np.float32).reshape(
      len(labels), len(feature_names)),
               labels=labels, owners=owners if client_column else None,
               feature_names=list(feature_names), files=list(paths))


def _column_index(path: str, header: list[str], label_column: str,
                  client_column: str) -> dict[str, int]:
  duplicates = sorted({n for n in header if header.count(n) > 1})
  if duplicates:
    raise errors.DataFormatError(
        f"{path} line 1: columns {duplicates} appear twice; name every "
        "column once")
  index = {}
  for key, name, flag in (("label", label_column, "--label_column"),
                          ("client", client_column, "--client_column")):
    if not name:
      continue
    if name not in header:
      hint = errors.did_you_mean(name, header)
      raise errors.DataFormatError(
          f"{path} has no column {name!r}{hint}; its columns are "
          f"{', '.join(header)}; fix {flag}")
    index[key] = header.index(name)
  if label_column and label_column == client_column:
    raise errors.DataPrepError(
        f"--label_column and --client_column are both {label_column!r}; "
        "they must differ")
  return index


def _feature_columns(path: str, header: list[str],
                     feature_names: list[str]) -> list[int]:
  missing = [n for n in feature_names if n not in header]
  if missing:
    raise errors.DataFormatError(
        f"{path} lacks the feature columns {missing} of the training data; "
        "give it the training files' columns")
  return [header.index(n) for n in feature_names]


def class_names(labels: list[str]) -> list[str]:
  """Sorted distinct labels; by value when every label is an integer."""
  distinct = set(labels)
  try:
    return [str(v) for v in sorted(int(v) for v in distinct)] if all(
        str(int(v)) == v for v in distinct) else sorted(distinct)
  except ValueError:
    return sorted(distinct)


def prepare(data_dir: str, shard_dir: str, label_column: str,
            client_column: str = "", num_clients: int = 10,
            partition: str = "dirichlet", partition_alpha: float = 0.5,
            seed: int = 0, eval_fraction: float = DEFAULT_EVAL_FRACTION,
            eval_data: str = "") -> shards.Manifest:
  """Reads CSV files and writes per-client shards (see the module docstring).

  Raises:
    DataPrepError: a bad request or missing files.
    DataFormatError: a bad line, naming the file and line.
  """
  files = _check_request(data_dir, label_column, client_column, num_clients,
                         partition, partition_alpha, eval_fraction, eval_data)
  table = read_table(files, label_column, client_column)
  classes = class_names(table.labels)
  label_index = {name: i for i, name in enumerate(classes)}
  labels = np.array([label_index[v] for v in table.labels], np.int64)
  rng = np.random.default_rng(seed)
  groups = _clients(table, labels, num_clients, partition, partition_alpha,
                    rng)
  train_parts, eval_parts = [], []
  for name, indices in groups:
    if eval_data:
      train_parts.append((name, indices))
      continue
    kept, held = partition_lib.hold_out(indices, eval_fraction, rng)
    train_parts.append((name, kept))
    eval_parts.append(held)
  if eval_data:
    held_out = read_table([os.path.abspath(eval_data)], label_column, "",
                          table.feature_names)
    eval_features = held_out.features
    eval_labels = _eval_labels(held_out, label_index, eval_data)
  else:
    held = np.sort(np.concatenate(eval_parts)) if eval_parts else np.zeros(
        0, np.int64)
    eval_features, eval_labels = table.features[held], labels[held]
  if not len(eval_labels):
    raise errors.DataPrepError(
        f"no held-out rows: the clients of {data_dir} are too small for "
        f"--eval_fraction={eval_fraction}; raise it or give --eval_data")
  train_rows = np.concatenate([indices for _, indices in train_parts])
  mean = table.features[train_rows].astype(np.float64).mean(axis=0)
  std = table.features[train_rows].astype(np.float64).std(axis=0)
  std[std == 0] = 1.0  # A constant column stays 0 after centring.
  source = _source_record(files, eval_data, label_column, client_column)
  source.update({
      "feature_names": table.feature_names,
      "classes": classes,
      "feature_mean": mean.tolist(),
      "feature_std": std.tolist(),
      "num_rows": len(labels),
  })
  clients = ((name, {"features": table.features[indices],
                     "label": labels[indices]})
             for name, indices in train_parts)
  return shards.write_shards(
      shard_dir, TASK, features_spec(len(table.feature_names)), clients,
      eval_examples={"features": eval_features, "label": eval_labels},
      num_classes=len(classes),
      partition=_partition_record(client_column, num_clients, partition,
                                  partition_alpha, seed, eval_fraction,
                                  eval_data),
      source=source)


def find_or_prepare(data_dir: str, shard_dir: str, label_column: str,
                    client_column: str = "", num_clients: int = 10,
                    partition: str = "dirichlet", partition_alpha: float = 0.5,
                    seed: int = 0, eval_fraction: float = DEFAULT_EVAL_FRACTION,
                    eval_data: str = "") -> shards.Manifest:
  """Returns existing shards if built from the same request and files.

  "Same" means equal partition record, columns and input files (their
  sha256). Args/Raises: as for `prepare`.
  """
  files = _check_request(data_dir, label_column, client_column, num_clients,
                         partition, partition_alpha, eval_fraction, eval_data)
  wanted_source = _source_record(files, eval_data, label_column,
                                 client_column)
  wanted_partition = _partition_record(client_column, num_clients, partition,
                                       partition_alpha, seed, eval_fraction,
                                       eval_data)
  manifest = shards.load_if_matching(
      shard_dir, lambda m: (
          m.task == TASK and m.partition == wanted_partition and
          {k: m.source.get(k) for k in wanted_source} == wanted_source))
  if manifest is not None:
    return manifest
  return prepare(data_dir, shard_dir, label_column, client_column,
                 num_clients, partition, partition_alpha, seed, eval_fraction,
                 eval_data)


def _clients(table: Table, labels: np.ndarray, num_clients: int,
             partition: str, partition_alpha: float,
             rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
  """(client id, row indices) of every client, in id order."""
  if table.owners is not None:
    groups = partition_lib.natural(table.owners)
    if num_clients:
      largest = sorted(groups, key=lambda o: (-len(groups[o]), o))
      groups = {o: groups[o] for o in largest[:num_clients]}
    named = [(partition_lib.safe_client_id(owner), rows)
             for owner, rows in groups.items()]
    ids = [name for name, _ in named]
    if len(set(ids)) != len(ids):
      raise errors.DataFormatError(
          f"{table.files[0]}: client values differ only in unsafe "
          "characters; rename them")
    return sorted(named)
  if num_clients > len(labels):
    raise errors.DataPrepError(
        f"--num_clients={num_clients} exceeds the {len(labels)} rows of "
        f"{', '.join(table.files)}; use fewer clients")
  if partition == "iid":
    parts = partition_lib.iid(len(labels), num_clients, rng)
  else:
    parts = partition_lib.dirichlet(labels, num_clients, partition_alpha, rng,
                                    min_examples=min(DIRICHLET_MIN_EXAMPLES,
                                                     len(labels) //
                                                     num_clients))
  width = max(4, len(str(num_clients - 1)))
  return [(f"client_{i:0{width}d}", np.sort(part))
          for i, part in enumerate(parts)]


def _eval_labels(held_out: Table, label_index: dict[str, int],
                 eval_data: str) -> np.ndarray:
  unknown = sorted(set(held_out.labels) - set(label_index))
  if unknown:
    raise errors.DataFormatError(
        f"{os.path.abspath(eval_data)}: labels {unknown[:5]} do not occur in "
        "the training data, so the model has no class for them; remove "
        "those lines")
  return np.array([label_index[v] for v in held_out.labels], np.int64)


def _check_request(data_dir: str, label_column: str, client_column: str,
                   num_clients: int, partition: str, partition_alpha: float,
                   eval_fraction: float, eval_data: str) -> list[str]:
  """Validates the request; returns the training CSV files."""
  if not data_dir:
    raise errors.DataPrepError(
        "--task=csv needs --data_dir: a CSV file or a folder of them")
  if not label_column:
    raise errors.DataPrepError(
        "--task=csv needs --label_column: the column holding the class")
  if client_column:
    if partition != "natural":
      raise errors.DataPrepError(
          f"--client_column={client_column} makes each of its values a "
          f"client (the natural partition); drop --partition={partition}")
  elif partition == "natural":
    raise errors.DataPrepError(
        "--partition=natural needs --client_column (the column naming each "
        "row's client); or use iid or dirichlet")
  elif partition not in PARTITIONS:
    raise errors.DataPrepError(
        f"unknown --partition={partition}; use iid or dirichlet")
  elif num_clients < 1:
    raise errors.DataPrepError(
        f"--num_clients={num_clients} must be at least 1 without "
        "--client_column")
  if partition == "dirichlet" and not (
      partition_alpha > 0 and math.isfinite(partition_alpha)):
    raise errors.DataPrepError(
        f"--partition_alpha={partition_alpha} must be a positive number")
  if not eval_data and not 0 < eval_fraction < 1:
    raise errors.DataPrepError(
        f"--eval_fraction={eval_fraction} must be in (0, 1), e.g. 0.1; or "
        "give --eval_data")
  if eval_data and not os.path.isfile(eval_data):
    raise errors.DataPrepError(
        f"--eval_data={eval_data} is not a file; give a CSV file with the "
        "training data's columns")
  return csv_files(data_dir)


def _partition_record(client_column: str, num_clients: int, partition: str,
                      partition_alpha: float, seed: int, eval_fraction: float,
                      eval_data: str) -> dict:
  return {"method": partition,
          "alpha": float(partition_alpha) if partition == "dirichlet" else None,
          "num_clients": num_clients, "seed": seed,
          "client_column": client_column or None,
          "eval_fraction": None if eval_data else float(eval_fraction)}


def _file_record(path: str) -> dict:
  digest = hashlib.sha256()
  try:
    with open(path, "rb") as f:
      while chunk := f.read(_HASH_CHUNK):
        digest.update(chunk)
  except OSError as e:
    raise errors.DataPrepError(
        f"cannot read {path} ({e.strerror}); check that it exists and is "
        "readable") from e
  return {"path": path, "sha256": digest.hexdigest()}


def _source_record(files: list[str], eval_data: str, label_column: str,
                   client_column: str) -> dict:
  """The request's inputs: files (with sha256) and columns."""
  return {"files": [_file_record(p) for p in files],
          "eval_data": (_file_record(os.path.abspath(eval_data))
                        if eval_data else None),
          "label_column": label_column,
          "client_column": client_column or None}


# Command line.


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the flags of `python -m data_prep.tabular`."""
  flags.DEFINE_string("data_dir", None, "A CSV file or a folder of them.",
                      required=True, flag_values=flag_values)
  flags.DEFINE_string(
      "output_dir", None,
      "Directory for manifest.json, clients/*.tfrecord and eval.tfrecord; "
      "replaced atomically if it holds earlier shards.",
      required=True, flag_values=flag_values)
  flags.DEFINE_string("label_column", None, "The column holding the class.",
                      required=True, flag_values=flag_values)
  flags.DEFINE_string(
      "client_column", "",
      "The column naming each row's client (natural partition).",
      flag_values=flag_values)
  flags.DEFINE_integer(
      "num_clients", 10,
      "Clients to split the rows into (without --client_column); with it, "
      "keep the N largest (0: all).", flag_values=flag_values)
  flags.DEFINE_enum(
      "partition", None, list(PARTITIONS),
      "iid or dirichlet without --client_column (default dirichlet); "
      "natural with it.", flag_values=flag_values)
  flags.DEFINE_float("partition_alpha", 0.5, "Dirichlet concentration.",
                     flag_values=flag_values)
  flags.DEFINE_integer("seed", 0, "Seed of the partition and the held-out "
                       "rows.", flag_values=flag_values)
  flags.DEFINE_float(
      "eval_fraction", DEFAULT_EVAL_FRACTION,
      "Share of each client's rows held out (without --eval_data).",
      flag_values=flag_values)
  flags.DEFINE_string("eval_data", "", "A CSV file of held-out rows.",
                      flag_values=flag_values)


def make_main(flag_values: flags.FlagValues = flags.FLAGS):
  """Returns an absl main() that prepares CSV shards from the flags."""

  def prepare_from_flags(fv):
    partition = fv.partition or ("natural" if fv.client_column
                                 else "dirichlet")
    return prepare(fv.data_dir, fv.output_dir, fv.label_column,
                   fv.client_column, fv.num_clients, partition,
                   fv.partition_alpha, fv.seed, fv.eval_fraction, fv.eval_data)

  return cli.prepare_main(prepare_from_flags, summary, flag_values)


def summary(manifest: shards.Manifest, seconds: float) -> str:
  """One-line description of a finished build."""
  source = manifest.source
  return (f"{cli.summary(manifest, seconds)}; "
          f"{len(source['feature_names'])} features, "
          f"{len(source['classes'])} classes")


if __name__ == "__main__":
  define_flags()
  entry_point.run(make_main())
