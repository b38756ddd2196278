import hashlib
import hmac
import math

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


class SecretSamplerTest(absltest.TestCase):

  def test_same_key_same_samples_other_key_others(self):
    key = sampling.new_secret_key()
    self.assertLen(key, 32)
    a, b = sampling.SecretSampler(key), sampling.SecretSampler(key)
    other = sampling.SecretSampler(sampling.new_secret_key())
    for kind in ('poisson', 'uniform'):
      with self.subTest(kind):
        draws = [a.sample(kind, IDS, 10, r) for r in range(1, 21)]
        self.assertEqual(draws, [b.sample(kind, IDS, 10, r)
                                 for r in range(1, 21)])
        # 20 rounds of 100 clients: equal by chance with probability
        # far below 1e-30.
        self.assertNotEqual(draws, [other.sample(kind, IDS, 10, r)
                                    for r in range(1, 21)])

  def test_fresh_keys_differ(self):
    self.assertNotEqual(sampling.new_secret_key(), sampling.new_secret_key())

  def test_poisson_is_hmac_sha256_below_the_probability(self):
    # The definition, recomputed with the standard library.
    key = bytes(range(32))
    picked = sampling.SecretSampler(key).poisson(IDS, 10, 7)
    expected = [c for c in sorted(IDS) if int.from_bytes(hmac.new(
        key, f'poisson\n7\n{c}'.encode(), hashlib.sha256).digest()[:8],
        'big') < 0.1 * 2**64]
    self.assertEqual(picked, expected)

  def test_poisson_inclusion_rate(self):
    # 100 clients x 2,000 rounds at q = 0.1: the total is Binomial(200000,
    # 0.1), mean 20,000, sd 134.2; 6 sd fails by chance with p ~ 2e-9.
    sampler = sampling.SecretSampler(sampling.new_secret_key())
    total = sum(len(sampler.poisson(IDS, 10, r)) for r in range(1, 2001))
    self.assertLess(abs(total - 20000), 6 * math.sqrt(200000 * 0.1 * 0.9))

  def test_uniform_is_a_subset_of_the_size_and_covers_everyone(self):
    sampler = sampling.SecretSampler(sampling.new_secret_key())
    counts = dict.fromkeys(IDS, 0)
    for r in range(1, 1001):
      picks = sampler.uniform(IDS, 10, r)
      self.assertLen(set(picks), 10)
      for c in picks:
        counts[c] += 1
    # Each client: Binomial(1000, 0.1), mean 100, sd 9.5; 6 sd per client
    # over 100 clients fails by chance with p ~ 2e-7.
    self.assertLess(max(counts.values()), 100 + 6 * 9.5)
    self.assertGreater(min(counts.values()), 100 - 6 * 9.5)

  def test_order_of_the_population_does_not_matter(self):
    sampler = sampling.SecretSampler(sampling.new_secret_key())
    self.assertEqual(sampler.poisson(IDS, 10, 3),
                     sampler.poisson(IDS[::-1], 10, 3))
    self.assertEqual(sampler.uniform(IDS, 10, 3),
                     sampler.uniform(IDS[::-1], 10, 3))

  def test_rejects_short_keys_and_impossible_requests(self):
    with self.assertRaises(ValueError):
      sampling.SecretSampler(b'short')
    sampler = sampling.SecretSampler(sampling.new_secret_key())
    with self.assertRaises(ValueError):
      sampler.poisson(IDS[:3], 4, 1)
    with self.assertRaises(ValueError):
      sampler.uniform(IDS[:3], 4, 1)


if __name__ == '__main__':
  absltest.main()
