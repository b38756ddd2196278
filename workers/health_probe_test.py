"""Tests for workers.health_probe: the exec probe as Kubernetes runs it."""

from absl.testing import absltest

from tests import testutil
from workers import health


class HealthProbeTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.server = health.HealthServer(
        0, {'/healthz': lambda: (200, {'ok': True}),
            '/readyz': lambda: (503, {'ready': False})},
        host='127.0.0.1').start()
    self.addCleanup(self.server.stop)
    self.port = self.server.port

  def _probe(self, *args):
    return testutil.run_module('workers.health_probe', *args)

  def test_200_is_exit_0(self):
    result = self._probe(f'--probe=127.0.0.1:{self.port}/healthz')
    self.assertEqual(result.returncode, 0, result.stderr)

  def test_other_status_or_no_answer_is_exit_1(self):
    not_ready = self._probe(f'--probe=127.0.0.1:{self.port}/readyz')
    self.assertEqual(not_ready.returncode, 1)
    self.assertIn('HTTP 503', not_ready.stderr)
    missing = self._probe(f'--probe=127.0.0.1:{self.port}/nothing')
    self.assertEqual(missing.returncode, 1)
    self.assertIn('HTTP 404', missing.stderr)
    self.server.stop()
    closed = self._probe(f'--probe=127.0.0.1:{self.port}/healthz')
    self.assertEqual(closed.returncode, 1)

  def test_bad_input_is_one_error_line_and_exit_2(self):
    for args in (('--bogus',), ('--probe=127.0.0.1',), ('--probe=x/y',),
                 (), ('--probe=127.0.0.1:1/healthz', 'extra')):
      with self.subTest(args=args):
        result = self._probe(*args)
        self.assertEqual(result.returncode, 2, result.stderr)
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertTrue(lines[0].startswith('error: '), lines[0])


if __name__ == '__main__':
  absltest.main()
