"""`app.run` for every entry point: bad input is one `error:` line, exit 2.

absl's own `app.run` prints `FATAL Flags parsing error: ...` and exits 1
for an unknown flag or a value of the wrong type, and prints the module's
usage text for an `app.UsageError`. Every `python -m ...` of the project
(data_prep, workers, tff_pipeline) starts through `run` instead, so all of
them keep one contract: a bad flag, config, file or environment prints one
line, `error: <what and how to fix it>`, and exits with status 2, without a
traceback. It lives in data_prep, the lowest layer that has entry points,
so that workers need not import the training package for it.
"""

from __future__ import annotations

import difflib
import sys
from typing import Callable, NoReturn, Optional

from absl import app
from absl import flags

from data_prep.errors import UserError

EXIT_USER_ERROR = 2
_HELP = 'see --helpfull for every flag'


def fail(message: str) -> NoReturn:
  """Prints `error: <message>` on one line and exits with status 2."""
  print(f'error: {" ".join(str(message).split())}', file=sys.stderr,
        flush=True)
  sys.exit(EXIT_USER_ERROR)


def flag_error_message(error: flags.Error,
                       flag_values: flags.FlagValues = flags.FLAGS) -> str:
  """One line for an absl flag error, with the flag meant where we can tell."""
  if isinstance(error, flags.UnrecognizedFlagError):
    name = error.flagname
    match = difflib.get_close_matches(name, list(flag_values), n=1)
    hint = f' (did you mean --{match[0]}?)' if match else ''
    return f'unknown flag --{name}{hint}; {_HELP}'
  return f'{" ".join(str(error).split()).rstrip(".")}; {_HELP}'


def parse_flags(argv: list[str], known_only: bool = False,
                flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """Parses the flags; a bad one is `error: ...` and exit 2.

  Args:
    argv: The command line, program name first.
    known_only: Leave flags this program does not define in the returned
      arguments (for programs that pass them on to a child).
    flag_values: The flags to parse into.

  Returns:
    The remaining arguments, program name first.
  """
  try:
    return flag_values(argv, known_only=known_only)
  except flags.Error as e:
    fail(flag_error_message(e, flag_values))


def guard(main: Callable[[list[str]], Optional[int]]
          ) -> Callable[[list[str]], Optional[int]]:
  """`main` with usage and user errors turned into `error:` and exit 2."""

  def guarded(argv: list[str]) -> Optional[int]:
    try:
      return main(argv)
    except (app.UsageError, UserError) as e:
      fail(str(e))

  return guarded


def run(main: Callable[[list[str]], Optional[int]],
        known_only: bool = False) -> NoReturn:
  """`absl.app.run(main)` with the project's error contract.

  Args:
    main: The program; its return value is the exit status.
    known_only: Leave undefined flags in `argv` for `main` (see parse_flags).
  """
  app.run(guard(main),
          flags_parser=lambda argv: parse_flags(argv, known_only=known_only))
