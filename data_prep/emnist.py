"""Writes federated EMNIST shards: client TFRecords + manifest.json.

Usage:
  python -m data_prep.emnist --output_dir=DIR --data_dir=DIR
      [--emnist_subset=auto] [--num_clients=100] [--partition=dirichlet]
      [--partition_alpha=0.5] [--seed=0]

--data_dir may also hold plain MNIST-named idx files (loaded as 10 classes).
"""

from data_prep import cli
from data_prep import entry_point

if __name__ == "__main__":
  cli.define_flags("emnist")
  entry_point.run(cli.make_main("emnist"))
