import tempfile
import threading
import time

from absl.testing import absltest

from workers import cpu_slots


class CpuSlotsTest(absltest.TestCase):

  def test_never_more_holders_than_slots(self):
    slots = cpu_slots.CpuSlots(tempfile.mkdtemp(), 2)
    lock = threading.Lock()
    active, peak = [0], [0]

    def work():
      with slots.hold():
        with lock:
          active[0] += 1
          peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
          active[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
    self.assertEqual(peak[0], 2)

  def test_slots_are_shared_through_the_directory(self):
    directory = tempfile.mkdtemp()
    first, second = (cpu_slots.CpuSlots(directory, 1),
                     cpu_slots.CpuSlots(directory, 1))
    got = []
    with first.hold():
      thread = threading.Thread(target=lambda: got.append(
          second.hold().__enter__()))
      thread.start()
      time.sleep(0.1)
      self.assertEqual(got, [])  # Blocked while the other holds it.
    thread.join(5)
    self.assertEqual(got, [0])


if __name__ == '__main__':
  absltest.main()
