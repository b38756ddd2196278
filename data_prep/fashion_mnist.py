"""Writes federated Fashion-MNIST shards: client TFRecords + manifest.json.

Usage:
  python -m data_prep.fashion_mnist --output_dir=DIR
      [--data_dir=/usr/share/datasets/fashion-mnist] [--num_clients=100]
      [--partition=dirichlet] [--partition_alpha=0.5] [--seed=0]
"""

from absl import app

from data_prep import cli

if __name__ == "__main__":
  cli.define_flags("fashion_mnist")
  app.run(cli.make_main("fashion_mnist"))
