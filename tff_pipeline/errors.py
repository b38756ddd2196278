"""Errors a user can fix without reading a traceback."""


class UserError(Exception):
  """A bad flag, config, input file or environment.

  The message is one line: what is wrong, where, and what to do about it.
  Entry points print it as `error: <message>` and exit with status 2.
  """
