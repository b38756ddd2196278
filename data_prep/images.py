"""Builds per-client shards for the MNIST family of image tasks.

Glue between image_datasets (loading), partition (client split) and shards
(writing); owns the choices that make a build reproducible: rng seeding,
client id format and what is recorded in the manifest.
"""

import os

import numpy as np

from data_prep import errors
from data_prep import image_datasets
from data_prep import partition as partition_lib
from data_prep import shards

FEATURES_SPEC = {
    "pixels": {"kind": "bytes", "dtype": "uint8",
               "shape": list(image_datasets.IMAGE_SHAPE)},
    "label": {"kind": "int64", "shape": []},
}
PARTITIONS = ("iid", "dirichlet", "natural")
# Smallest client a dirichlet partition may produce (FedML's default).
DIRICHLET_MIN_EXAMPLES = 10


def prepare(task: str, data_dir: str | None, shard_dir: str, num_clients: int,
            partition: str, partition_alpha: float, seed: int,
            emnist_subset: str = "auto") -> shards.Manifest:
  """Loads an image task, partitions its train split and writes shards.

  Args:
    task: "mnist", "fashion_mnist" or "emnist".
    data_dir: directory of idx files; None for the task's default.
    shard_dir: output directory, replaced atomically.
    num_clients: number of clients to split the train split into.
    partition: "iid" or "dirichlet" ("natural" needs owner ids, which
      idx files lack).
    partition_alpha: Dirichlet concentration (dirichlet only).
    seed: seed of np.random.default_rng for the partition.
    emnist_subset: see image_datasets.locate_split.

  Returns:
    The written manifest: client shards client_0000.. and an eval shard
    holding the whole test split.

  Raises:
    DataPrepError: bad request, missing or malformed input files.
  """
  _check_request(task, num_clients, partition, partition_alpha)
  train = image_datasets.load_split(task, data_dir, "train", emnist_subset)
  test = image_datasets.load_split(task, data_dir, "test", emnist_subset)
  if num_clients > len(train.labels):
    raise errors.DataPrepError(
        f"--num_clients={num_clients} exceeds the {len(train.labels)} "
        f"{task} train examples in {os.path.dirname(train.files[0])}; use "
        "fewer clients")
  rng = np.random.default_rng(seed)
  if partition == "iid":
    parts = partition_lib.iid(len(train.labels), num_clients, rng)
  else:
    parts = partition_lib.dirichlet(train.labels, num_clients,
                                    partition_alpha, rng,
                                    min_examples=DIRICHLET_MIN_EXAMPLES)
  # A generator, so only one client's copy of the images is alive at once.
  clients = ((client_id, {"pixels": train.images[indices],
                          "label": train.labels[indices]})
             for client_id, indices in zip(client_ids(num_clients), parts))
  return shards.write_shards(
      shard_dir, task, FEATURES_SPEC, clients,
      eval_examples={"pixels": test.images, "label": test.labels},
      num_classes=train.num_classes,
      partition=_partition_record(num_clients, partition, partition_alpha,
                                  seed),
      source=_source_record(task, data_dir, emnist_subset))


def find_or_prepare(task: str, data_dir: str | None, shard_dir: str,
                    num_clients: int, partition: str, partition_alpha: float,
                    seed: int, emnist_subset: str = "auto") -> shards.Manifest:
  """Returns existing shards if built from the same request, else builds.

  "Same request" means equal task, partition record and source record
  (input files as currently found in data_dir). Shard contents are not
  hashed here; call shards.verify_shards for that.

  Args/Raises: as for `prepare`.
  """
  _check_request(task, num_clients, partition, partition_alpha)
  wanted_partition = _partition_record(num_clients, partition,
                                       partition_alpha, seed)
  wanted_source = _source_record(task, data_dir, emnist_subset)
  manifest = shards.load_if_matching(
      shard_dir, lambda manifest: (manifest.task == task and
                                  manifest.partition == wanted_partition and
                                  manifest.source == wanted_source))
  if manifest is not None:
    return manifest
  return prepare(task, data_dir, shard_dir, num_clients, partition,
                 partition_alpha, seed, emnist_subset)


def client_ids(num_clients: int) -> list[str]:
  """Returns client_0000, client_0001, ...; padded so ids sort by number."""
  width = max(4, len(str(num_clients - 1)))
  return [f"client_{i:0{width}d}" for i in range(num_clients)]


def _check_request(task: str, num_clients: int, partition: str,
                   partition_alpha: float) -> None:
  partition_lib.check_split(partition, num_clients, partition_alpha,
                            f"{task} idx files carry no owner ids")


def _partition_record(num_clients: int, partition: str,
                      partition_alpha: float, seed: int) -> dict:
  alpha = float(partition_alpha) if partition == "dirichlet" else None
  return {"method": partition, "alpha": alpha, "num_clients": num_clients,
          "seed": seed}


def _source_record(task: str, data_dir: str | None,
                   emnist_subset: str) -> dict:
  """Describes the input files; cheap (locates files without reading)."""
  train, test = (image_datasets.locate_split(task, data_dir, split,
                                             emnist_subset)
                 for split in image_datasets.SPLITS)
  return {
      "data_dir": os.path.dirname(train.images_file),
      "files": [train.images_file, train.labels_file, test.images_file,
                test.labels_file],
      "emnist_subset": train.emnist_subset,
  }
