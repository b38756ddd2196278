import os
import tempfile

from absl.testing import absltest
import numpy as np

from data_prep import shards
from workers import placement


def _manifest(root: str) -> shards.Manifest:
  rng = np.random.default_rng(0)
  per_client = {f'c{i}': {'x': rng.integers(0, 9, (4 + i, 2)).astype(np.int64),
                          'y': np.arange(4 + i, dtype=np.int64) % 3}
                for i in range(5)}
  features = {'x': {'kind': 'int64', 'shape': [2]},
              'y': {'kind': 'int64', 'shape': []}}
  return shards.write_shards(
      os.path.join(root, 'all'), 'toy', features, per_client.items(),
      eval_examples={'x': np.zeros((3, 2), np.int64),
                     'y': np.zeros(3, np.int64)},
      num_classes=3, partition={'method': 'natural'}, source={},
      label_key='y')


class PlacementTest(absltest.TestCase):

  def test_assign_puts_every_client_on_exactly_one_pod(self):
    placed = placement.assign([f'c{i}' for i in range(7)], ['a', 'b', 'c'])
    self.assertEqual(placed, {'a': ['c0', 'c3', 'c6'], 'b': ['c1', 'c4'],
                              'c': ['c2', 'c5']})

  def test_pod_dir_holds_only_its_clients_and_verifies(self):
    root = tempfile.mkdtemp()
    manifest = _manifest(root)
    pod = placement.write_pod_dir(manifest, ['c1', 'c3'],
                                  os.path.join(root, 'pod'))
    reloaded = shards.load_manifest(pod.shard_dir)
    shards.verify_shards(reloaded)
    self.assertEqual(reloaded.client_ids(), ['c1', 'c3'])
    self.assertIsNone(reloaded.eval)
    self.assertEqual(sorted(os.listdir(os.path.join(pod.shard_dir, 'clients'))),
                     ['c1.tfrecord', 'c3.tfrecord'])
    np.testing.assert_array_equal(
        shards.read_numpy(reloaded, reloaded.client('c3'))['x'],
        shards.read_numpy(manifest, manifest.client('c3'))['x'])

  def test_eval_dir_holds_only_the_held_out_split(self):
    root = tempfile.mkdtemp()
    manifest = _manifest(root)
    evaluation = placement.write_eval_dir(manifest, os.path.join(root, 'ev'))
    reloaded = shards.load_manifest(evaluation.shard_dir)
    shards.verify_shards(reloaded)
    self.assertEqual(reloaded.client_ids(), [])
    self.assertEqual(reloaded.eval.num_examples, 3)
    self.assertFalse(os.path.exists(os.path.join(reloaded.shard_dir, 'clients')))


  def test_per_client_held_out_data_goes_with_its_clients(self):
    root = tempfile.mkdtemp()
    manifest = _manifest(root)
    features = manifest.features
    held = {c: {'x': np.full((2, 2), i, np.int64), 'y': np.zeros(2, np.int64)}
            for i, c in enumerate(['c1', 'c2', 'c4'])}
    shards.write_shards(
        os.path.join(manifest.shard_dir, shards.HELD_OUT_DIR), 'toy',
        features, held.items(), eval_examples=None, num_classes=None,
        partition={}, source={}, label_key=None)
    pod = placement.write_pod_dir(manifest, ['c1', 'c3', 'c4'],
                                  os.path.join(root, 'pod'))
    pod_held_out = shards.load_held_out(pod)
    shards.verify_shards(pod_held_out)
    self.assertEqual(pod_held_out.client_ids(), ['c1', 'c4'])
    np.testing.assert_array_equal(
        shards.read_numpy(pod_held_out, pod_held_out.client('c4'))['x'],
        held['c4']['x'])
    # The coordinator then gets no held-out examples: they stay with users.
    evaluation = placement.write_eval_dir(manifest, os.path.join(root, 'ev'))
    self.assertIsNone(shards.load_manifest(evaluation.shard_dir).eval)
    self.assertEqual(os.listdir(evaluation.shard_dir), [shards.MANIFEST_FILE])

  def test_pod_dir_without_held_out_data_has_none(self):
    root = tempfile.mkdtemp()
    pod = placement.write_pod_dir(_manifest(root), ['c0'],
                                  os.path.join(root, 'pod'))
    self.assertIsNone(shards.load_held_out(pod))


if __name__ == '__main__':
  absltest.main()
