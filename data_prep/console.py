"""Console scripts of `pip install .` for the data_prep CLIs.

Each script runs its `python -m data_prep.<name>` module as `__main__`, so
the command and the module are one program with one set of flags.
"""

import runpy
import sys
from typing import Callable


def script(module: str) -> Callable[[], None]:
  """A console-script function that runs `python -m <module>`."""

  def run() -> None:
    sys.argv[0] = module
    runpy.run_module(module, run_name="__main__", alter_sys=True)

  run.__name__ = module.rsplit(".", 1)[-1]
  return run


cifar10 = script("data_prep.cifar10")
emnist = script("data_prep.emnist")
fashion_mnist = script("data_prep.fashion_mnist")
image_folder = script("data_prep.image_folder")
mnist = script("data_prep.mnist")
movielens = script("data_prep.movielens")
shakespeare = script("data_prep.shakespeare")
stackoverflow = script("data_prep.stackoverflow")
tabular = script("data_prep.tabular")
