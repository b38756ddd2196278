"""Exceptions raised by data_prep.

Every message is a single line that names the offending file or object, says
what is wrong with it and says how to fix it, so a CLI can print it verbatim
and a log line stays greppable.
"""


class DataPrepError(Exception):
  """Base class for all data_prep failures a user can act on."""

  def __init__(self, message: str):
    # Collapse newlines so callers cannot accidentally break the one-line
    # contract (e.g. when embedding another exception's text).
    super().__init__(" ".join(str(message).split()))


class DataFormatError(DataPrepError):
  """An input file is malformed, truncated or inconsistent with its partner."""


class ShardError(DataPrepError):
  """A shard directory, shard file or manifest is missing or corrupt."""


def rebuild_hint(shard_dir: str, task: str | None = None) -> str:
  """Returns the advice to rebuild `shard_dir`, for error messages."""
  module = task if task in ("mnist", "fashion_mnist", "emnist", "shakespeare",
                            "movielens", "stackoverflow") else "<task>"
  return (f"re-run `python -m data_prep.{module} --output_dir={shard_dir}` "
          "to rebuild it")
