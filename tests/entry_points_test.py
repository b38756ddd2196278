"""Every `python -m` entry point keeps the error contract for absl's errors.

An unknown flag (or one of the wrong type) is one `error:` line naming it and
exit status 2 (not absl's `FATAL Flags parsing error` and exit 1), for every
program of data_prep, workers and tff_pipeline: each starts through
data_prep.entry_point.run, which the first test checks in the source and the
others check by running the programs as a user does.
"""

from __future__ import annotations

from concurrent import futures
import os
import re

from absl.testing import absltest

from tests import testutil

_PACKAGES = ('data_prep', 'workers', 'tff_pipeline')
# The programs a user runs; each must be found below (a new one is found too).
_EXPECTED = (
    'data_prep.emnist', 'data_prep.fashion_mnist', 'data_prep.mnist',
    'data_prep.movielens', 'data_prep.shakespeare', 'data_prep.stackoverflow',
    'tff_pipeline.prepare', 'tff_pipeline.report', 'tff_pipeline.train',
    'workers.certs', 'workers.edge_pod', 'workers.edge_server',
    'workers.local_cluster', 'workers.pod_data', 'workers.topology_gen')
# Programs that pass flags they do not define on to a child
# (tff_pipeline.prepare): what makes them start that child.
_CHILD_ARGS = {'workers.pod_data': ('--eval_out={tmp}/eval',)}
_MAIN = re.compile(r'^if __name__ == [\'"]__main__[\'"]:', re.MULTILINE)


def entry_points(root: str) -> dict[str, str]:
  """{module: source} of every non-test module with a __main__ block."""
  found = {}
  for package in _PACKAGES:
    for directory, _, names in os.walk(os.path.join(root, package)):
      for name in names:
        if not name.endswith('.py') or name.endswith('_test.py'):
          continue
        path = os.path.join(directory, name)
        with open(path, encoding='utf-8') as f:
          source = f.read()
        if _MAIN.search(source):
          module = os.path.relpath(path, root)[:-3].replace(os.sep, '.')
          found[module] = source
  return found


class EntryPointsTest(absltest.TestCase):

  def test_every_entry_point_starts_through_entry_point_run(self):
    found = entry_points(testutil.REPO_ROOT)
    self.assertContainsSubset(_EXPECTED, found)
    for module, source in found.items():
      main_block = source[_MAIN.search(source).start():]
      with self.subTest(module):
        self.assertIn('entry_point.run(', main_block)
        self.assertNotIn('app.run(', main_block)

  def test_unknown_flag_is_one_error_line_and_exit_2(self):
    tmp = self.create_tempdir().full_path
    with futures.ThreadPoolExecutor(max_workers=2) as pool:
      results = {m: pool.submit(
          testutil.run_module, m, '--no_such_flag=1',
          *(a.format(tmp=tmp) for a in _CHILD_ARGS.get(m, ())), timeout=300)
                 for m in _EXPECTED}
      for module, future in results.items():
        with self.subTest(module):
          self._assert_user_error(future.result(), '--no_such_flag')

  def test_trainer_flag_typo_and_wrong_type(self):
    cases = {('--round=5',): ('unknown flag --round',
                              '(did you mean --rounds?)'),
             ('--rounds=five',): ('--rounds=five',),
             ('--rounds=2', 'stray'): ('unexpected arguments: stray',)}
    with futures.ThreadPoolExecutor(max_workers=2) as pool:
      results = {args: pool.submit(testutil.run_module, 'tff_pipeline.train',
                                   *args, timeout=300) for args in cases}
      for args, future in results.items():
        with self.subTest(args):
          self._assert_user_error(future.result(), *cases[args])

  def _assert_user_error(self, result, *mentions: str) -> None:
    context = f'{result.args}:\n{result.stderr[-3000:]}'
    self.assertEqual(result.returncode, 2, context)
    self.assertNotIn('Traceback', result.stderr, context)
    self.assertNotIn('FATAL', result.stderr, context)
    errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
    self.assertLen(errors, 1, context)
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    self.assertEqual(lines[-1], errors[0], context)
    for mention in mentions:
      self.assertIn(mention, errors[0], context)


if __name__ == '__main__':
  absltest.main()
