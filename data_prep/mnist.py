"""Writes federated MNIST shards: client TFRecords + manifest.json.

Usage:
  python -m data_prep.mnist --output_dir=DIR --data_dir=DIR
      [--num_clients=100] [--partition=dirichlet] [--partition_alpha=0.5]
      [--seed=0]
"""

from data_prep import cli
from data_prep import entry_point

if __name__ == "__main__":
  cli.define_flags("mnist")
  entry_point.run(cli.make_main("mnist"))
