"""Errors a user can fix without reading a traceback.

`UserError` is the project's one error type for bad flags, configs, input
files and environments: data_prep sits at the bottom of the package layers
(data_prep < workers < tff_pipeline), so every package raises it from here.
Every message is a single line that names the offending file or object, says
what is wrong with it and says how to fix it; entry points print it as
`error: <message>` and exit with status 2.
"""


class UserError(Exception):
  """A bad flag, config, input file or environment; one-line message."""

  def __init__(self, message: str):
    # Collapse newlines so callers cannot accidentally break the one-line
    # contract (e.g. when embedding another exception's text).
    super().__init__(" ".join(str(message).split()))


class DataPrepError(UserError):
  """Base class for all data_prep failures a user can act on."""


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


def did_you_mean(word: str, candidates) -> str:
  """' (did you mean 'x'?)' for the closest candidate, or ''."""
  import difflib  # pylint: disable=g-import-not-at-top
  match = difflib.get_close_matches(word, list(candidates), n=1)
  return f" (did you mean {match[0]!r}?)" if match else ""
