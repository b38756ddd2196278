from absl.testing import absltest

from tff_pipeline.learning import sampling

IDS = [f'client_{i:04d}' for i in range(100)]


class SamplingTest(absltest.TestCase):

  def test_same_seed_and_round_same_clients(self):
    self.assertEqual(sampling.sample_clients(IDS, 10, 3, 7),
                     sampling.sample_clients(IDS, 10, 3, 7))

  def test_rounds_and_seeds_differ(self):
    self.assertNotEqual(sampling.sample_clients(IDS, 10, 3, 7),
                        sampling.sample_clients(IDS, 10, 3, 8))
    self.assertNotEqual(sampling.sample_clients(IDS, 10, 3, 7),
                        sampling.sample_clients(IDS, 10, 4, 7))

  def test_without_replacement(self):
    picks = sampling.sample_clients(IDS, 100, 0, 1)
    self.assertCountEqual(picks, IDS)

  def test_roughly_uniform(self):
    counts = dict.fromkeys(IDS, 0)
    for r in range(1, 1001):
      for c in sampling.sample_clients(IDS, 10, 0, r):
        counts[c] += 1
    # Each client expects 100 picks; binomial sd is about 9.5.
    self.assertLess(max(counts.values()), 150)

  def test_poisson_sizes_vary_around_expected(self):
    sizes = [len(sampling.sample_poisson(IDS, 10, 0, r)) for r in range(1, 501)]
    self.assertGreater(len(set(sizes)), 5)  # Not a fixed size.
    self.assertAlmostEqual(sum(sizes) / len(sizes), 10, delta=0.6)
    self.assertEqual(sampling.sample_poisson(IDS, 10, 0, 3),
                     sampling.sample_poisson(IDS, 10, 0, 3))

  def test_poisson_each_client_with_its_probability(self):
    counts = dict.fromkeys(IDS, 0)
    for r in range(1, 1001):
      for c in sampling.sample('poisson', IDS, 10, 0, r):
        counts[c] += 1
    self.assertLess(max(counts.values()), 150)
    self.assertGreater(min(counts.values()), 50)
    self.assertGreater(min(counts.values()), 50)

  def test_rejects_impossible_requests(self):
    with self.assertRaises(ValueError):
      sampling.sample_clients(IDS[:3], 4, 0, 1)


if __name__ == '__main__':
  absltest.main()
