import os
import signal
import subprocess
import sys
import textwrap
import time

from absl.testing import absltest

from tests import probe
from workers import listeners
from workers import worker_process


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  # A zombie still answers kill(0); it is dead for our purposes.
  with open(f'/proc/{pid}/stat') as f:
    return f.read().split()[2] != 'Z'


class WorkerProcessTest(absltest.TestCase):

  def test_starts_answers_and_stops(self):
    worker = worker_process.WorkerProcess().start()
    try:
      self.assertTrue(worker.alive())
      self.assertTrue(worker.ready())
    finally:
      worker.stop()
    self.assertFalse(worker.alive())

  def test_worker_dies_with_a_killed_parent(self):
    # The parent starts a worker, prints its pid, and is then SIGKILLed.
    script = textwrap.dedent("""
        import sys, time
        from workers import worker_process
        w = worker_process.WorkerProcess().start()
        print(w.pid, flush=True)
        time.sleep(600)
        """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parent = subprocess.Popen([sys.executable, '-c', script], cwd=root,
                              stdout=subprocess.PIPE, text=True)
    worker_pid = int(parent.stdout.readline())
    self.assertTrue(_pid_alive(worker_pid))
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while _pid_alive(worker_pid) and time.monotonic() < deadline:
      time.sleep(0.1)
    self.assertFalse(_pid_alive(worker_pid), 'worker outlived its parent')

  def test_listens_on_loopback_only_and_is_unreachable_from_the_network(self):
    worker = worker_process.WorkerProcess().start()
    self.addCleanup(worker.stop)
    found = listeners.listening(worker.pid)
    self.assertNotEmpty(found)
    self.assertEqual(listeners.beyond_loopback(found), [], found)
    self.assertEqual(probe.connect('127.0.0.1', worker.port), 'open')
    addresses = probe.host_addresses()
    if not addresses:
      self.skipTest('this host has no non-loopback address to probe from')
    for address in addresses:
      # Without the shim this connects: TFF binds [::]:port.
      self.assertEqual(probe.connect(address, worker.port),
                       'ConnectionRefusedError', address)

  def test_missing_shim_refuses_to_start(self):
    worker = worker_process.WorkerProcess()
    os.environ[worker_process.BIND_SHIM_ENV] = '/nonexistent.so'
    self.addCleanup(os.environ.pop, worker_process.BIND_SHIM_ENV)
    with self.assertRaisesRegex(worker_process.WorkerStartError,
                                'shim .*missing.*setup.sh'):
      worker.start()
    self.assertIsNone(worker.pid)

  def test_worker_on_a_wildcard_address_is_stopped_fail_closed(self):
    # A library that is not the shim: the real binary binds [::]:port, the
    # check after start sees it and kills the worker.
    os.environ[worker_process.BIND_SHIM_ENV] = _libc_path()
    self.addCleanup(os.environ.pop, worker_process.BIND_SHIM_ENV)
    worker = worker_process.WorkerProcess()
    with self.assertRaisesRegex(worker_process.WorkerStartError,
                                r'listened on tcp6 \[::\]:\d+.*beyond loopback'):
      worker.start()
    self.assertFalse(worker.alive())

  def test_non_loopback_host_is_refused(self):
    with self.assertRaisesRegex(ValueError, 'loopback only'):
      worker_process.WorkerProcess(host='0.0.0.0')


def _libc_path() -> str:
  with open('/proc/self/maps', encoding='ascii') as f:
    for line in f:
      if 'libc.so' in line or 'libc-' in line:
        return line.split()[-1]
  raise AssertionError('libc not mapped')


if __name__ == '__main__':
  absltest.main()
