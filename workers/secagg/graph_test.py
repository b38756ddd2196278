import math
import os
import random

from absl.testing import absltest
from scipy import stats

from workers.secagg import graph


def _circulant(n: int, k: int) -> set[tuple[int, int]]:
  """H(k, n) on positions, from Harary's definition (independent of graph)."""
  edges = set()
  for i in range(n):
    for j in range(n):
      d = min((i - j) % n, (j - i) % n)
      if i < j and (d <= k // 2 or (k % 2 == 1 and 2 * d == n)):
        edges.add((i, j))
  return edges


def _connected_after_removing(n, adjacency, removed) -> bool:
  alive = [v for v in range(n) if v not in removed]
  seen, stack = {alive[0]}, [alive[0]]
  while stack:
    for w in adjacency[stack.pop()]:
      if w not in removed and w not in seen:
        seen.add(w)
        stack.append(w)
  return len(seen) == len(alive)


class GraphTest(absltest.TestCase):

  def test_degree_bounds(self):
    for n in (2, 3, 10, 100, 300, 1000, 10_000):
      k = graph.default_degree(n)
      self.assertLessEqual(k, 2 * math.ceil(math.log2(n)) + 1)
      self.assertLessEqual(k, graph.max_degree(n))
      self.assertEqual(graph.check_degree(k, n), k)
    self.assertEqual(graph.default_degree(1000), 20)
    self.assertEqual(graph.default_degree(5), 4)  # Complete.
    with self.assertRaises(ValueError):
      graph.default_degree(1)
    with self.assertRaises(ValueError):
      graph.check_degree(3, 9)  # Odd degree, odd count.
    with self.assertRaises(ValueError):
      graph.check_degree(9, 9)

  def test_relabelled_harary_graph(self):
    for n, k in [(10, 4), (11, 6), (12, 5), (50, 12), (7, 6), (8, 7), (2, 1)]:
      seed = os.urandom(32)
      g = graph.Graph(n, k, seed)
      where = graph.positions(seed, n)
      self.assertEqual(sorted(where), list(range(n)))
      on_positions = {(min(where[i], where[j]), max(where[i], where[j]))
                      for i, j in g.edges()}
      self.assertEqual(on_positions, _circulant(n, k))
      for i in range(n):
        self.assertLen(g.neighbors(i), k)
        self.assertNotIn(i, g.neighbors(i))
        for j in g.neighbors(i):
          self.assertIn(i, g.neighbors(j))

  def test_complete_graph_at_n_minus_1(self):
    g = graph.Graph(9, 8, os.urandom(32))
    self.assertLen(g.edges(), 9 * 8 // 2)

  def test_k_connected(self):
    # Harary graphs are k-connected: removing any k - 1 nodes (tried at
    # random) never disconnects.
    n, k = 40, 6
    g = graph.Graph(n, k, os.urandom(32))
    adjacency = [g.neighbors(i) for i in range(n)]
    rng = random.Random(0)
    for _ in range(300):
      removed = set(rng.sample(range(n), k - 1))
      self.assertTrue(_connected_after_removing(n, adjacency, removed))
    # And some k-set (a node's neighbourhood) does disconnect it.
    self.assertFalse(_connected_after_removing(n, adjacency,
                                               set(adjacency[0])))

  def test_seed_determines_labels(self):
    a, b = os.urandom(32), os.urandom(32)
    self.assertEqual(graph.Graph(100, 14, a).edges(),
                     graph.Graph(100, 14, a).edges())
    self.assertNotEqual(graph.Graph(100, 14, a).edges(),
                        graph.Graph(100, 14, b).edges())
    with self.assertRaises(ValueError):
      graph.positions(b'short', 5)

  def test_labels_look_uniform(self):
    # Position of party 0 over many seeds: uniform on 10 positions
    # (chi-square; false failure 1e-6).
    counts = [0] * 10
    for _ in range(5000):
      counts[graph.positions(os.urandom(32), 10)[0]] += 1
    self.assertGreater(stats.chisquare(counts).pvalue, 1e-6)


if __name__ == '__main__':
  absltest.main()
