"""`pip wheel .` builds offline, and the wheel holds the three packages.

Builds from a copy of the packaged files (pyproject.toml, README.md,
LICENSE, data_prep/, workers/, tff_pipeline/) with `pip wheel . --no-deps
--no-build-isolation` against this interpreter's setuptools, then installs
the wheel into a folder and runs console-script functions from there.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import zipfile

from absl.testing import absltest

from tests import testutil

_PACKAGES = ('data_prep', 'workers', 'tff_pipeline')


def _pip() -> list[str] | None:
  """A pip that builds with this interpreter (the venv may have none)."""
  probe = subprocess.run([sys.executable, '-m', 'pip', '--version'],
                         capture_output=True, check=False)
  if probe.returncode == 0:
    return [sys.executable, '-m', 'pip']
  for python in ('python3.11', 'python3'):
    found = shutil.which(python)
    if found and subprocess.run(
        [found, '-m', 'pip', '--python', sys.executable, '--version'],
        capture_output=True, check=False).returncode == 0:
      return [found, '-m', 'pip', '--python', sys.executable]
  return None


class WheelTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.pip = _pip()
    if cls.pip is None:
      raise absltest.SkipTest('no pip here (neither in this interpreter nor '
                              'a python3 with pip --python)')
    root = absltest.get_default_test_tmpdir()
    cls.source = os.path.join(root, 'source')
    shutil.rmtree(cls.source, ignore_errors=True)
    os.makedirs(cls.source)
    for name in ('pyproject.toml', 'README.md', 'LICENSE'):
      shutil.copy(os.path.join(testutil.REPO_ROOT, name), cls.source)
    for package in _PACKAGES:
      shutil.copytree(os.path.join(testutil.REPO_ROOT, package),
                      os.path.join(cls.source, package),
                      ignore=shutil.ignore_patterns('__pycache__'))
    cls.out = os.path.join(root, 'wheels')
    cls.build = subprocess.run(
        [*cls.pip, 'wheel', '.', '--no-deps', '--no-build-isolation',
         '--no-index', '-w', cls.out],
        cwd=cls.source, capture_output=True, text=True, timeout=600,
        check=False, env=dict(os.environ, PIP_NO_INDEX='1'))

  def _wheel(self) -> str:
    self.assertEqual(self.build.returncode, 0, self.build.stderr[-3000:])
    wheels = [n for n in os.listdir(self.out) if n.endswith('.whl')]
    self.assertLen(wheels, 1)
    return os.path.join(self.out, wheels[0])

  def test_wheel_holds_the_three_packages_license_and_scripts(self):
    with zipfile.ZipFile(self._wheel()) as wheel:
      names = set(wheel.namelist())
      dist_info = next(n.split('/')[0] for n in names
                       if n.endswith('.dist-info/METADATA'))
      entry_points = configparser.ConfigParser()
      entry_points.read_string(
          wheel.read(f'{dist_info}/entry_points.txt').decode())
      metadata = wheel.read(f'{dist_info}/METADATA').decode()
      license_text = next(wheel.read(n).decode() for n in names
                          if n.startswith(dist_info) and
                          n.endswith('LICENSE'))
    for package in _PACKAGES:
      expected = {os.path.relpath(os.path.join(folder, f),
                                  testutil.REPO_ROOT)
                  for folder, _, files in os.walk(
                      os.path.join(testutil.REPO_ROOT, package))
                  for f in files if f.endswith('.py')}
      self.assertEmpty(expected - names, package)
    self.assertIn('tff_pipeline/tasks/cifar10.py', names)
    self.assertIn('Apache License', license_text)
    self.assertIn('Version 2.0, January 2004', license_text)
    self.assertIn('License :: OSI Approved :: Apache Software License',
                  metadata)
    scripts = dict(entry_points['console_scripts'])
    self.assertEqual(scripts['tff-train'], 'tff_pipeline.console:train')
    self.assertEqual(scripts['tff-local-cluster'],
                     'workers.console:local_cluster')
    self.assertEqual(scripts['tff-data-csv'], 'data_prep.console:tabular')

  def test_installed_wheel_runs_its_scripts(self):
    target = os.path.join(absltest.get_default_test_tmpdir(), 'installed')
    shutil.rmtree(target, ignore_errors=True)
    install = subprocess.run(
        [*self.pip, 'install', '--no-deps', '--no-index', '--target', target,
         self._wheel()], capture_output=True, text=True, timeout=600,
        check=False)
    self.assertEqual(install.returncode, 0, install.stderr[-3000:])
    with zipfile.ZipFile(self._wheel()) as wheel:
      dist_info = next(n.split('/')[0] for n in wheel.namelist()
                       if n.endswith('.dist-info/METADATA'))
      entry_points = configparser.ConfigParser()
      entry_points.read_string(
          wheel.read(f'{dist_info}/entry_points.txt').decode())
    # Every script names a function of the installed packages (not the
    # repository: cwd and PYTHONPATH point only at the install).
    check = ('import importlib, sys\n'
             'for spec in sys.argv[1:]:\n'
             '  module, name = spec.split(":")\n'
             '  loaded = importlib.import_module(module)\n'
             '  assert loaded.__file__.startswith(%r), loaded.__file__\n'
             '  assert callable(getattr(loaded, name)), spec\n' % target)
    env = dict(os.environ, PYTHONPATH=target, TF_CPP_MIN_LOG_LEVEL='3')
    result = subprocess.run(
        [sys.executable, '-c', check,
         *dict(entry_points['console_scripts']).values()],
        cwd=target, env=env, capture_output=True, text=True, timeout=300,
        check=False)
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    # tff-data-csv, run as the console script would: its own usage error.
    result = subprocess.run(
        [sys.executable, '-c',
         'import sys; sys.argv = ["tff-data-csv"]\n'
         'from data_prep.console import tabular; tabular()'],
        cwd=target, env=env, capture_output=True, text=True, timeout=300,
        check=False)
    self.assertNotEqual(result.returncode, 0)
    self.assertIn("Flag --data_dir must have a value other than None",
                  result.stderr)


if __name__ == '__main__':
  absltest.main()
