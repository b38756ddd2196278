"""Tests for the dashboard's command line (`python -m tff_pipeline.dashboard`)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from absl.testing import absltest
import portpicker

from tests import testutil
from tff_pipeline.dashboard import main
from data_prep.errors import UserError
from workers import certs


def _start(*args: str) -> tuple[subprocess.Popen, str]:
  """Starts the dashboard; returns it and the URL it printed."""
  env = dict(os.environ, PYTHONPATH=testutil.REPO_ROOT)
  env.pop(main.TOKEN_ENV, None)
  process = subprocess.Popen(
      [sys.executable, '-m', 'tff_pipeline.dashboard', *args],
      cwd=testutil.REPO_ROOT, env=env, stderr=subprocess.PIPE, text=True)
  line = process.stderr.readline()
  match = re.search(r'dashboard on (\S+)', line)
  if not match:
    process.kill()
    raise AssertionError(f'no URL printed: {line!r} {process.stderr.read()}')
  return process, match.group(1)


class TokenTest(absltest.TestCase):

  def test_loopback_needs_no_token_anything_else_gets_one(self):
    self.assertEqual(main.resolve_token('127.0.0.1', '', {}, False),
                     (None, False))
    self.assertEqual(main.resolve_token('::1', '', {}, False), (None, False))
    self.assertEqual(main.resolve_token('localhost', '', {}, False),
                     (None, False))
    token, made_up = main.resolve_token('0.0.0.0', '', {}, False)
    self.assertTrue(made_up)
    self.assertGreaterEqual(len(token), 24)
    self.assertEqual(main.resolve_token('10.1.2.3', '', {}, True),
                     (None, False))  # Client certificates instead.
    self.assertEqual(main.resolve_token('0.0.0.0', '',
                                        {main.TOKEN_ENV: 'e' * 20}, False),
                     ('e' * 20, False))

  def test_token_file(self):
    path = self.create_tempfile(content='  s3cret-s3cret-s3cret \n').full_path
    self.assertEqual(main.resolve_token('0.0.0.0', path, {}, False),
                     ('s3cret-s3cret-s3cret', False))
    short = self.create_tempfile(content='abc').full_path
    with self.assertRaisesRegex(UserError, 'at least 16'):
      main.resolve_token('0.0.0.0', short, {}, False)
    with self.assertRaisesRegex(UserError, 'token_file=/nonexistent'):
      main.resolve_token('0.0.0.0', '/nonexistent', {}, False)

  def test_https_context_needs_both_files(self):
    self.assertIsNone(main.https_context('', '', ''))
    with self.assertRaisesRegex(UserError, 'both --https_cert and'):
      main.https_context('a.crt', '', '')
    with self.assertRaisesRegex(UserError, 'readable PEM'):
      main.https_context('/nonexistent.crt', '/nonexistent.key', '')


class CommandLineTest(absltest.TestCase):

  def test_serves_and_stops_on_sigterm(self):
    port = portpicker.pick_unused_port()
    process, url = _start('--runs=/nonexistent/runs', f'--port={port}')
    self.assertEqual(url, f'http://127.0.0.1:{port}/')
    with urllib.request.urlopen(url + 'api/runs', timeout=20) as response:
      self.assertIn(b'does not exist', response.read())
    process.send_signal(signal.SIGTERM)
    self.assertEqual(process.wait(timeout=30), 0)

  def test_https_with_client_certificates(self):
    cert_dir = self.create_tempdir().full_path
    certs.write_bundle(cert_dir, ['dashboard', 'browser'])
    port = portpicker.pick_unused_port()
    process, url = _start(
        '--runs=/nonexistent', f'--port={port}',
        f'--https_cert={cert_dir}/dashboard.crt',
        f'--https_key={cert_dir}/dashboard.key',
        f'--https_client_ca={cert_dir}/ca.crt')
    self.addCleanup(process.kill)
    self.assertTrue(url.startswith('https://'))
    import ssl  # pylint: disable=g-import-not-at-top
    context = ssl.create_default_context(cafile=f'{cert_dir}/ca.crt')
    with self.assertRaises((urllib.error.URLError, ssl.SSLError,
                            ConnectionError)):
      urllib.request.urlopen(url + 'healthz', timeout=20, context=context)
    context.load_cert_chain(f'{cert_dir}/browser.crt',
                            f'{cert_dir}/browser.key')
    with urllib.request.urlopen(url + 'healthz', timeout=20,
                                context=context) as response:
      self.assertEqual(response.status, 200)

  def test_busy_port_is_one_line_and_exit_2(self):
    with socket.socket() as busy:
      busy.bind(('127.0.0.1', 0))
      busy.listen()
      port = busy.getsockname()[1]
      result = testutil.run_module('tff_pipeline.dashboard', '--runs=.',
                                   f'--port={port}', timeout=60)
    self.assertEqual(result.returncode, 2, result.stderr)
    self.assertRegex(result.stderr.strip(),
                     rf'^error: cannot listen on 127.0.0.1:{port}: .*--port')


if __name__ == '__main__':
  absltest.main()
