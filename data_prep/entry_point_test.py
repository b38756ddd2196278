"""Tests for data_prep.entry_point: absl's errors become `error:` and exit 2."""

import contextlib
import io
import os
import subprocess
import sys
import textwrap

from absl import app
from absl import flags
from absl.testing import absltest

from data_prep import entry_point
from data_prep.errors import UserError


def _flag_values() -> flags.FlagValues:
  values = flags.FlagValues()
  flags.DEFINE_integer('rounds', 30, 'Rounds.', flag_values=values)
  flags.DEFINE_string('output_dir', None, 'Where.', flag_values=values)
  return values


class EntryPointTest(absltest.TestCase):

  def _exit(self, call) -> tuple[int, str]:
    """Exit status and stderr of `call`, which must exit."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), self.assertRaises(
        SystemExit) as caught:
      call()
    return caught.exception.code, stderr.getvalue()

  def _assert_one_error_line(self, code: int, stderr: str, *mentions: str):
    self.assertEqual(code, 2, stderr)
    lines = stderr.splitlines()
    self.assertLen(lines, 1, stderr)
    self.assertStartsWith(lines[0], 'error: ')
    for mention in mentions:
      self.assertIn(mention, lines[0])

  def test_unknown_flag_names_the_flag_meant(self):
    code, stderr = self._exit(lambda: entry_point.parse_flags(
        ['prog', '--round=5'], flag_values=_flag_values()))
    self._assert_one_error_line(code, stderr, '--round',
                                '(did you mean --rounds?)', '--helpfull')

  def test_bad_type_names_the_flag_and_value(self):
    code, stderr = self._exit(lambda: entry_point.parse_flags(
        ['prog', '--rounds=many'], flag_values=_flag_values()))
    self._assert_one_error_line(code, stderr, '--rounds=many')

  def test_known_only_leaves_other_flags(self):
    rest = entry_point.parse_flags(['prog', '--rounds=3', '--other=1'],
                                   known_only=True, flag_values=_flag_values())
    self.assertEqual(rest, ['prog', '--other=1'])

  def test_good_flags_parse(self):
    values = _flag_values()
    self.assertEqual(entry_point.parse_flags(['prog', '--rounds=3'],
                                             flag_values=values), ['prog'])
    self.assertEqual(values.rounds, 3)

  def test_usage_and_user_errors_from_main(self):
    def usage(argv):
      raise app.UsageError(f'unexpected arguments: {argv[1:]}')

    def user(argv):
      del argv
      raise UserError('the file /x is bad\nfix it')

    code, stderr = self._exit(lambda: entry_point.guard(usage)(['p', 'x']))
    self._assert_one_error_line(code, stderr, "unexpected arguments: ['x']")
    code, stderr = self._exit(lambda: entry_point.guard(user)(['p']))
    self._assert_one_error_line(code, stderr, 'the file /x is bad fix it')

  def test_other_errors_keep_their_traceback(self):
    def broken(argv):
      raise ValueError(argv)

    with self.assertRaises(ValueError):
      entry_point.guard(broken)(['p'])

  def test_a_program_through_run(self):
    # A whole absl program in a child: unknown flag, bad value, usage error,
    # success.
    program = textwrap.dedent("""\
        import sys
        from absl import app, flags
        from data_prep import entry_point
        flags.DEFINE_integer('rounds', 30, 'Rounds.')
        def main(argv):
          if len(argv) > 1:
            raise app.UsageError('unexpected arguments: ' + ' '.join(argv[1:]))
          print('rounds', flags.FLAGS.rounds)
          return 0
        entry_point.run(main)
        """)
    cases = {
        ('--round=5',): (2, 'error: unknown flag --round (did you mean '
                            '--rounds?)'),
        ('--rounds=x',): (2, 'error: flag --rounds=x'),
        ('stray',): (2, 'error: unexpected arguments: stray'),
        ('--rounds=4',): (0, 'rounds 4'),
    }
    root = os.path.dirname(os.path.dirname(os.path.abspath(
        entry_point.__file__)))
    env = {**os.environ,
           'PYTHONPATH': root + os.pathsep + os.environ.get('PYTHONPATH', '')}
    for args, (status, text) in cases.items():
      with self.subTest(args):
        result = subprocess.run([sys.executable, '-c', program, *args],
                                capture_output=True, text=True, check=False,
                                timeout=60, env=env)
        self.assertEqual(result.returncode, status, result.stderr)
        output = (result.stdout + result.stderr).strip()
        self.assertLen(output.splitlines(), 1, output)
        self.assertStartsWith(output, text)


if __name__ == '__main__':
  absltest.main()
