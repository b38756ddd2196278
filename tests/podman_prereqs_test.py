"""k8s/podman_prereqs.sh: the OCI runtime podman will find, containers.conf.

The functions run in bash with a PATH that holds only what each case has
installed (stand-in executables named crun / runc, which the functions look
up by name and never run), a temporary containers.conf, and APT_INSTALL=0
so nothing is ever installed.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess

from absl.testing import absltest

from tests import testutil

_LIB = os.path.join(testutil.REPO_ROOT, 'k8s', 'podman_prereqs.sh')


class PodmanPrereqsTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.tmp = self.create_tempdir().full_path
    self.bin = os.path.join(self.tmp, 'bin')
    os.makedirs(self.bin)
    # The tools the functions themselves use, and nothing else.
    for tool in ('awk', 'grep', 'mkdir', 'dirname', 'cat', 'id'):
      os.symlink(shutil.which(tool), os.path.join(self.bin, tool))
    self.conf = os.path.join(self.tmp, 'etc', 'containers.conf')

  def _install(self, *names: str) -> None:
    for name in names:
      path = os.path.join(self.bin, name)
      with open(path, 'w') as f:
        f.write('#!/bin/sh\nexit 0\n')
      os.chmod(path, stat.S_IRWXU)

  def _bash(self, script: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [shutil.which('bash'), '-c', f'source {_LIB}; {script}'],
        env={'PATH': self.bin, 'APT_INSTALL': '0'}, capture_output=True,
        text=True, timeout=60, check=False)

  def _conf(self) -> str:
    with open(self.conf) as f:
      return f.read()

  def test_detects_crun_runc_or_neither(self):
    result = self._bash('detect_oci_runtime')
    self.assertNotEqual(result.returncode, 0)
    self._install('runc')
    self.assertEqual(self._bash('detect_oci_runtime').stdout, 'runc\n')
    self._install('crun')  # Debian 12's podman brings crun: podman's first.
    self.assertEqual(self._bash('detect_oci_runtime').stdout, 'crun\n')

  def test_nothing_installed_and_no_apt_says_what_to_install(self):
    result = self._bash('ensure_oci_runtime')
    self.assertEqual(result.returncode, 1)
    self.assertIn('crun is not installed: apt-get install -y crun',
                  result.stderr)
    result = self._bash('ensure_command podman podman')
    self.assertIn('podman is not installed: apt-get install -y podman',
                  result.stderr)

  def test_writes_a_missing_conf_with_the_runtime_found(self):
    self._install('crun')
    result = self._bash(f'write_containers_conf {self.conf} '
                        '"$(ensure_oci_runtime)"')
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertIn('runtime = "crun"', self._conf())
    self.assertIn('default_ulimits', self._conf())
    self.assertEqual(self._bash(f'configured_runtime {self.conf}').stdout,
                     'crun\n')

  def test_rewrites_its_own_conf_when_the_runtime_is_gone(self):
    # What the script wrote before on a machine with runc only.
    os.makedirs(os.path.dirname(self.conf))
    with open(self.conf, 'w') as f:
      f.write('# Written by k8s/build_image.sh: podman 4.3 here needs runc\n'
              '[containers]\ndefault_ulimits = ["nofile=1024:1024"]\n\n'
              '[engine]\nruntime = "runc"\n')
    self._install('crun')
    result = self._bash(f'write_containers_conf {self.conf} crun')
    self.assertIn('rewriting', result.stderr)
    self.assertIn('runtime runc -> crun', result.stderr)
    self.assertIn('runtime = "crun"', self._conf())

  def test_never_overwrites_a_users_conf_but_says_what_is_wrong(self):
    os.makedirs(os.path.dirname(self.conf))
    users = ('[containers]\nlog_size_max = 100\n\n'
             '[engine]\nruntime = "runc"\nevents_logger = "file"\n')
    with open(self.conf, 'w') as f:
      f.write(users)
    self._install('crun')
    self.assertEqual(self._bash(f'configured_runtime {self.conf}').stdout,
                     'runc\n')
    result = self._bash(f'write_containers_conf {self.conf} crun')
    self.assertEqual(result.returncode, 0)
    self.assertEqual(self._conf(), users)
    self.assertIn('sets runtime = "runc", which is not installed',
                  result.stderr)
    self.assertIn('set runtime = "crun" in it', result.stderr)
    # With runc installed it is fine, and still left alone.
    self._install('runc')
    result = self._bash(f'write_containers_conf {self.conf} crun')
    self.assertIn('leaving', result.stderr)
    self.assertNotIn('warning', result.stderr)
    self.assertEqual(self._conf(), users)

  def test_runtime_outside_the_engine_table_is_not_taken(self):
    os.makedirs(os.path.dirname(self.conf))
    with open(self.conf, 'w') as f:
      f.write('[engine.runtimes]\nruntime = "x"\n[machine]\ncpus = 2\n')
    self.assertEqual(self._bash(f'configured_runtime {self.conf}').stdout, '')

  def test_build_image_uses_the_prerequisites(self):
    with open(os.path.join(testutil.REPO_ROOT, 'k8s', 'build_image.sh')) as f:
      script = f.read()
    self.assertIn('source "$REPO/k8s/podman_prereqs.sh"', script)
    self.assertIn('write_containers_conf "$CONTAINERS_CONF" "$runtime"', script)
    self.assertNotIn('runtime = "runc"', script)


if __name__ == '__main__':
  absltest.main()
