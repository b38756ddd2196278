import os
import tempfile

from absl.testing import absltest
import numpy as np

from data_prep import shards
from data_prep import testing
from data_prep.errors import UserError
from workers import placement
from workers import pod_data


def _data_args(data_dir: str, **values) -> list[str]:
  """Training data flags, as workers.pod_data passes them on."""
  flags = {'task': 'fashion_mnist', 'data_dir': data_dir, 'num_clients': 7,
           'clients_per_round': 2, 'partition': 'iid', **values}
  return [f'--{k}={v}' for k, v in flags.items()]


class PodDataTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.root = tempfile.mkdtemp()
    self.data_dir = os.path.join(self.root, 'raw')
    testing.write_dataset(self.data_dir, np.random.default_rng(0),
                          num_train=140, num_test=20)
    self.scratch = os.path.join(self.root, 'scratch')
    os.makedirs(self.scratch)

  def _prepared(self, **values):
    prepared = pod_data.Prepared(_data_args(self.data_dir, **values),
                                 self.scratch)
    self.addCleanup(prepared.close)
    return prepared

  def test_each_pod_holds_exactly_its_local_cluster_clients(self):
    prepared = self._prepared()
    everyone = sorted(prepared.manifest.client_ids())
    expected = placement.assign(everyone, [f'edge-{i}' for i in range(3)])
    seen = []
    for i in range(3):
      out = os.path.join(self.root, f'pod{i}', 'shards')
      ids, reused = pod_data.place_pod(prepared, f'edge-{i}', 3, out)
      self.assertFalse(reused)
      self.assertEqual(ids, expected[f'edge-{i}'])
      manifest = shards.load_manifest(out)
      shards.verify_shards(manifest)
      self.assertEqual(manifest.client_ids(), ids)
      self.assertIsNone(manifest.eval)
      self.assertEqual(sorted(os.listdir(os.path.join(out, 'clients'))),
                       sorted(f'{c}.tfrecord' for c in ids))
      seen += ids
    self.assertEqual(sorted(seen), everyone)

  def test_scratch_is_removed_so_no_other_pod_data_stays_behind(self):
    prepared = self._prepared()
    pod_data.place_pod(prepared, 'edge-1', 3,
                       os.path.join(self.root, 'pod', 'shards'))
    self.assertNotEmpty(os.listdir(self.scratch))
    prepared.close()
    self.assertEmpty(os.listdir(self.scratch))

  def test_restart_reuses_and_a_new_pod_count_replaces(self):
    out = os.path.join(self.root, 'pod', 'shards')
    _, reused = pod_data.place_pod(self._prepared(), 'edge-0', 2, out)
    self.assertFalse(reused)
    # A restart with the same settings: no data_prep at all.
    prepared = self._prepared()
    ids, reused = pod_data.place_pod(prepared, 'edge-0', 2, out)
    self.assertTrue(reused)
    self.assertIsNone(prepared._manifest)
    self.assertLen(ids, 4)
    # The edge tier was scaled: the assignment changes.
    ids, reused = pod_data.place_pod(self._prepared(), 'edge-0', 3, out)
    self.assertFalse(reused)
    self.assertLen(ids, 3)
    self.assertEqual(shards.load_manifest(out).client_ids(), ids)
    # A different partition: re-placed too.
    _, reused = pod_data.place_pod(self._prepared(seed=1), 'edge-0', 3, out)
    self.assertFalse(reused)

  def test_a_dir_placed_in_an_older_layout_is_placed_again(self):
    out = os.path.join(self.root, 'pod', 'shards')
    pod_data.place_pod(self._prepared(), 'edge-0', 2, out)
    stamp = pod_data._read_stamp(out)
    stamp['layout'] = pod_data.LAYOUT - 1
    pod_data._write_stamp(out, stamp)
    _, reused = pod_data.place_pod(self._prepared(), 'edge-0', 2, out)
    self.assertFalse(reused)
    self.assertEqual(pod_data._read_stamp(out)['layout'], pod_data.LAYOUT)

  def test_damaged_shards_are_placed_again(self):
    out = os.path.join(self.root, 'pod', 'shards')
    ids, _ = pod_data.place_pod(self._prepared(), 'edge-0', 2, out)
    with open(os.path.join(out, 'clients', f'{ids[0]}.tfrecord'), 'ab') as f:
      f.write(b'x')
    _, reused = pod_data.place_pod(self._prepared(), 'edge-0', 2, out)
    self.assertFalse(reused)
    shards.verify_shards(shards.load_manifest(out))

  def test_eval_dir_holds_only_the_held_out_split(self):
    out = os.path.join(self.root, 'eval')
    examples, reused = pod_data.place_eval(self._prepared(), out)
    self.assertEqual((examples, reused), (20, False))
    manifest = shards.load_manifest(out)
    self.assertEqual(manifest.client_ids(), [])
    self.assertEqual(pod_data.place_eval(self._prepared(), out), (20, True))

  def test_errors_name_the_fix(self):
    prepared = self._prepared()
    with self.assertRaisesRegex(UserError, 'edge-5.*edge-0..edge-2'):
      pod_data.place_pod(prepared, 'edge-5', 3, os.path.join(self.root, 'p'))
    with self.assertRaisesRegex(UserError, 'cannot fill 9 pods'):
      pod_data.place_pod(prepared, 'edge-0', 9, os.path.join(self.root, 'p'))
    with self.assertRaisesRegex(UserError, 'at least 1'):
      pod_data.place_pod(prepared, 'edge-0', 0, os.path.join(self.root, 'p'))

  def test_cli_places_one_pod_and_the_eval_split(self):
    config = os.path.join(self.root, 'train.yaml')
    with open(config, 'w', encoding='utf-8') as f:
      f.write('data_args:\n  dataset: fashion_mnist\n'
              f'  data_cache_dir: {self.data_dir}\n'
              '  partition_method: homo\n'
              'train_args:\n  client_num_in_total: 7\n'
              '  client_num_per_round: 2\n')
    out = os.path.join(self.root, 'cli', 'shards')
    evaluation = os.path.join(self.root, 'cli', 'eval')
    result = testing.run_module(
        'workers.pod_data', '--pod_name=edge-1', '--pods=2', f'--out_dir={out}',
        f'--eval_out={evaluation}', f'--config={config}',
        f'--scratch_dir={self.scratch}')
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertIn('edge-1: 3 clients', result.stdout)
    self.assertIn('held-out split (20 examples)', result.stdout)
    self.assertLen(shards.load_manifest(out).client_ids(), 3)
    self.assertEmpty(os.listdir(self.scratch))
    result = testing.run_module('workers.pod_data', f'--config={config}',
                                f'--out_dir={out}', '--pods=2')
    self.assertEqual(result.returncode, 2)
    self.assertIn('--pod_name', result.stderr)


if __name__ == '__main__':
  absltest.main()
