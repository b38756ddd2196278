"""Command line shared by the mnist, fashion_mnist and emnist entry points.

Each entry module calls define_flags(task) and app.run(make_main(task)), so
the flags, error handling and summary are defined once.
"""

import os

# TF 2.14 logs spurious CUDA plugin "errors" when imported; keep stderr for
# our one-line messages. Setting the variable yourself overrides this.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# pylint: disable=g-import-not-at-top,wrong-import-position
import statistics
import sys
import time
from typing import Any, Callable

from absl import app
from absl import flags

from data_prep import errors
from data_prep import image_datasets
from data_prep import images
from data_prep import shards

EXIT_DATA_ERROR = 2


def define_flags(task: str,
                 flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the flags of `python -m data_prep.<task>`."""
  flags.DEFINE_string(
      "output_dir", None,
      "Directory for manifest.json, clients/*.tfrecord and eval.tfrecord; "
      "replaced atomically if it holds earlier shards.",
      required=True, flag_values=flag_values)
  flags.DEFINE_string(
      "data_dir", image_datasets.DEFAULT_DATA_DIRS.get(task),
      f"Directory holding the {task} idx files (.gz optional).",
      flag_values=flag_values)
  flags.DEFINE_integer("num_clients", 100,
                       "Number of clients to split the train split into.",
                       flag_values=flag_values)
  flags.DEFINE_enum(
      "partition", "dirichlet", list(images.PARTITIONS),
      "iid: shuffled equal split; dirichlet: label-skewed split (FedML "
      "hetero); natural: needs owner ids, which idx files lack.",
      flag_values=flag_values)
  flags.DEFINE_float(
      "partition_alpha", 0.5,
      "Dirichlet concentration for --partition=dirichlet; smaller is more "
      "skewed.", flag_values=flag_values)
  flags.DEFINE_integer("seed", 0, "Seed of the partition's random draws.",
                       flag_values=flag_values)
  if task == "emnist":
    flags.DEFINE_enum(
        "emnist_subset", "auto",
        ["auto", *image_datasets.EMNIST_NUM_CLASSES],
        "EMNIST subset; auto picks the only one present in --data_dir "
        "(or MNIST-named files).", flag_values=flag_values)


def prepare_main(prepare: Callable[[flags.FlagValues], Any],
                 summarize: Callable[[Any, float], str],
                 flag_values: flags.FlagValues = flags.FLAGS
                 ) -> Callable[[list[str]], None]:
  """An absl main() shared by the data_prep CLIs.

  Runs `prepare(flag_values)`, then prints `summarize(result, seconds)`.
  Expected, user-fixable failures print one `error:` line and exit 2,
  without a traceback.
  """

  def main(argv: list[str]) -> None:
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    start = time.monotonic()
    try:
      result = prepare(flag_values)
    except (errors.DataPrepError, OSError) as e:
      print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
      sys.exit(EXIT_DATA_ERROR)
    print(summarize(result, time.monotonic() - start))

  return main


def make_main(task: str, flag_values: flags.FlagValues = flags.FLAGS
              ) -> Callable[[list[str]], None]:
  """Returns an absl main() that prepares `task` shards from the flags."""
  return prepare_main(
      lambda fv: images.prepare(
          task, fv.data_dir, fv.output_dir, fv.num_clients, fv.partition,
          fv.partition_alpha, fv.seed,
          emnist_subset=fv.emnist_subset if task == "emnist" else "auto"),
      summary, flag_values)


def summary(manifest: shards.Manifest, seconds: float) -> str:
  """One-line description of a finished build."""
  sizes = [info.num_examples for info in manifest.clients]
  eval_examples = manifest.eval.num_examples if manifest.eval else 0
  return (f"{manifest.task}: {len(sizes)} clients, {sum(sizes)} examples "
          f"(per client min {min(sizes)} / median "
          f"{statistics.median(sizes):g} / max {max(sizes)}), "
          f"{eval_examples} eval examples -> {manifest.shard_dir} "
          f"in {seconds:.1f} s")
