"""Tests for data_prep.partition."""

from absl.testing import absltest
import numpy as np

from data_prep import errors
from data_prep import partition


def _rng(seed=0):
  return np.random.default_rng(seed)


def _mean_label_entropy(labels, parts, num_classes):
  """Mean over clients of the entropy (bits) of the client's labels."""
  entropies = []
  for part in parts:
    p = np.bincount(labels[part], minlength=num_classes) / len(part)
    p = p[p > 0]
    entropies.append(-(p * np.log2(p)).sum())
  return float(np.mean(entropies))


class IidTest(absltest.TestCase):

  def test_every_index_once_and_near_equal(self):
    parts = partition.iid(1003, 10, _rng())
    self.assertLen(parts, 10)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)),
                                  np.arange(1003))
    sizes = [len(p) for p in parts]
    self.assertLessEqual(max(sizes) - min(sizes), 1)
    self.assertEqual(parts[0].dtype, np.int64)

  def test_shuffled(self):
    parts = partition.iid(1000, 2, _rng())
    self.assertFalse(np.array_equal(parts[0], np.arange(500)))

  def test_deterministic_per_seed(self):
    a = partition.iid(500, 7, _rng(3))
    b = partition.iid(500, 7, _rng(3))
    c = partition.iid(500, 7, _rng(4))
    for x, y in zip(a, b):
      np.testing.assert_array_equal(x, y)
    self.assertFalse(all(np.array_equal(x, y) for x, y in zip(a, c)))

  def test_invalid_counts(self):
    with self.assertRaisesRegex(ValueError, "num_clients must be >= 1"):
      partition.iid(10, 0, _rng())
    with self.assertRaisesRegex(ValueError, r"\(11\) exceeds .* \(10\)"):
      partition.iid(10, 11, _rng())


class DirichletTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.labels = _rng(42).integers(0, 10, size=6000)

  def test_every_index_once(self):
    parts = partition.dirichlet(self.labels, 20, 0.5, _rng())
    self.assertLen(parts, 20)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)),
                                  np.arange(len(self.labels)))

  def test_min_examples_respected(self):
    for min_examples in (10, 100):
      with self.subTest(min_examples=min_examples):
        parts = partition.dirichlet(self.labels, 30, 0.3, _rng(),
                                    min_examples=min_examples)
        self.assertGreaterEqual(min(len(p) for p in parts),
                                min_examples)

  def test_deterministic_per_seed(self):
    a = partition.dirichlet(self.labels, 10, 0.5, _rng(7))
    b = partition.dirichlet(self.labels, 10, 0.5, _rng(7))
    c = partition.dirichlet(self.labels, 10, 0.5, _rng(8))
    for x, y in zip(a, b):
      np.testing.assert_array_equal(x, y)
    self.assertFalse(all(np.array_equal(x, y) for x, y in zip(a, c)))

  def test_small_alpha_is_more_skewed(self):
    entropy = {
        alpha: _mean_label_entropy(
            self.labels,
            partition.dirichlet(self.labels, 20, alpha, _rng()), 10)
        for alpha in (0.1, 1.0, 100.0)
    }
    self.assertLess(entropy[0.1], entropy[1.0])
    self.assertLess(entropy[1.0], entropy[100.0])
    # Near-uniform shares with large alpha: close to log2(10) bits.
    self.assertGreater(entropy[100.0], 3.2)

  def test_no_client_far_above_average(self):
    # Clients stop receiving shares once they hold N / num_clients, so
    # the only overshoot is from the class that crossed the cap.
    labels = np.repeat(np.arange(10), 600)
    parts = partition.dirichlet(labels, 20, 0.1, _rng())
    self.assertLessEqual(max(len(p) for p in parts), 300 + 600)

  def test_too_many_clients_for_min_examples(self):
    with self.assertRaises(errors.DataPrepError) as cm:
      partition.dirichlet(self.labels, 700, 0.5, _rng())
    self.assertIn("700 clients", str(cm.exception))
    self.assertIn("at most 600", str(cm.exception))

  def test_gives_up_after_max_tries(self):
    # Two classes, tiny alpha: most clients end up with nothing.
    labels = np.repeat([0, 1], 50)
    with self.assertRaisesRegex(errors.DataPrepError, "in all 5 tries"):
      partition.dirichlet(labels, 10, 0.001, _rng(), min_examples=10,
                          max_tries=5)

  def test_invalid_arguments(self):
    with self.assertRaisesRegex(ValueError, "alpha"):
      partition.dirichlet(self.labels, 10, 0.0, _rng())
    with self.assertRaisesRegex(ValueError, "alpha"):
      partition.dirichlet(self.labels, 10, float("nan"), _rng())
    with self.assertRaisesRegex(ValueError, "num_clients"):
      partition.dirichlet(self.labels, 0, 0.5, _rng())
    with self.assertRaisesRegex(ValueError, "exceeds"):
      partition.dirichlet(self.labels[:5], 6, 0.5, _rng())
    with self.assertRaisesRegex(ValueError, "1-D integer"):
      partition.dirichlet(self.labels.astype(float), 10, 0.5, _rng())


class CheckSplitTest(absltest.TestCase):

  def test_good_requests_pass(self):
    partition.check_split("iid", 10, float("nan"), "no owners")
    partition.check_split("dirichlet", 1, 0.1, "no owners")

  def test_bad_requests_name_the_flag_and_the_fix(self):
    for args, message in (
        (("natural", 10, 0.5), "no owners here; use --partition=iid or "
                               "dirichlet"),
        (("random", 10, 0.5), "unknown --partition=random"),
        (("iid", 0, 0.5), "--num_clients=0 must be at least 1"),
        (("dirichlet", 10, 0.0), "--partition_alpha=0.0 must be a positive"),
        (("dirichlet", 10, float("inf")), "--partition_alpha=inf"),
    ):
      with self.subTest(args=args):
        with self.assertRaises(errors.DataPrepError) as raised:
          partition.check_split(*args, "no owners here")
        self.assertIn(message, str(raised.exception))


class NaturalTest(absltest.TestCase):

  def test_groups_by_owner_sorted(self):
    owners = ["bob", "alice", "bob", "carol", "alice", "bob"]
    got = partition.natural(owners)
    self.assertEqual(list(got), ["alice", "bob", "carol"])
    np.testing.assert_array_equal(got["alice"], [1, 4])
    np.testing.assert_array_equal(got["bob"], [0, 2, 5])
    np.testing.assert_array_equal(got["carol"], [3])

  def test_every_index_once_random(self):
    owners = [f"w{i}" for i in _rng().integers(0, 50, size=1000)]
    got = partition.natural(owners)
    np.testing.assert_array_equal(
        np.sort(np.concatenate(list(got.values()))), np.arange(1000))
    for owner, indices in got.items():
      self.assertTrue(all(owners[i] == owner for i in indices))

  def test_empty(self):
    self.assertEqual(partition.natural([]), {})


class OwnerHelpersTest(absltest.TestCase):

  def test_unsafe_owner_names_get_safe_distinct_ids(self):
    self.assertEqual(partition.safe_client_id("site_1"), "site_1")
    a = partition.safe_client_id("New York")
    b = partition.safe_client_id("New/York")
    self.assertNotEqual(a, b)
    self.assertRegex(a, r"^New_York-[0-9a-f]{8}$")
    self.assertNotIn(partition.safe_client_id(".."), ("..", "."))

  def test_hold_out_rounds_half_up_and_keeps_one(self):
    # n -> held out at 10%: 20 -> 2, 15 -> 2 (1.5 up), 5 -> 1 (0.5 up),
    # 1 -> 0 (one must stay).
    for n, held in ((20, 2), (15, 2), (5, 1), (1, 0), (0, 0)):
      kept, out = partition.hold_out(np.arange(100, 100 + n), 0.1, _rng())
      self.assertLen(out, held, n)
      np.testing.assert_array_equal(np.sort(np.concatenate([kept, out])),
                                    np.arange(100, 100 + n))


if __name__ == "__main__":
  absltest.main()
