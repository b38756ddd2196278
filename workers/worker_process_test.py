import os
import signal
import subprocess
import sys
import textwrap
import time

from absl.testing import absltest

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


if __name__ == '__main__':
  absltest.main()
