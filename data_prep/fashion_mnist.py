"""Writes federated Fashion-MNIST shards: client TFRecords + manifest.json.

Usage:
  python -m data_prep.fashion_mnist --output_dir=DIR
      [--data_dir=/usr/share/datasets/fashion-mnist] [--num_clients=100]
      [--partition=dirichlet] [--partition_alpha=0.5] [--seed=0]
"""

from data_prep import cli
from data_prep import entry_point

if __name__ == "__main__":
  cli.define_flags("fashion_mnist")
  entry_point.run(cli.make_main("fashion_mnist"))
