import os
import subprocess
import sys

from absl.testing import absltest
import numpy as np

from data_prep import errors
from data_prep import shards
from data_prep import tabular

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(path: str, text: str) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    f.write(text)
  return path


def _sites_csv() -> str:
  """Three sites with 20, 5 and 1 rows; label = x > y (names), a text column."""
  lines = ['site,x,y,note,label']
  rng = np.random.default_rng(0)
  for site, count in (('north', 20), ('south', 5), ('tiny', 1)):
    for _ in range(count):
      x, y = rng.integers(0, 100, 2)
      lines.append(f'{site},{x},{y},free text,{"high" if x > y else "low"}')
  return '\n'.join(lines) + '\n'


def _rows(manifest, info):
  return shards.read_numpy(manifest, info)


class ReadTableTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path

  def test_numeric_columns_are_features_text_columns_are_ignored(self):
    path = _write(os.path.join(self.dir, 'a.csv'),
                  'id,name,h,w,label\n1,ann,1.5,2,cat\n2,bob,-3,4e1,dog\n')
    table = tabular.read_table([path], 'label')
    self.assertEqual(table.feature_names, ['id', 'h', 'w'])
    np.testing.assert_array_equal(table.features,
                                  [[1, 1.5, 2], [2, -3, 40]])
    self.assertEqual(table.labels, ['cat', 'dog'])
    self.assertIsNone(table.owners)

  def test_classes_sort_by_value_when_they_are_integers(self):
    self.assertEqual(tabular.class_names(['10', '2', '1', '2']),
                     ['1', '2', '10'])
    self.assertEqual(tabular.class_names(['b', 'a', '10']), ['10', 'a', 'b'])

  def test_bad_lines_name_the_file_and_line(self):
    cases = {
        'x,label\n1,a\n2,b,extra\n': r'line 3: 3 fields, but the header has 2',
        'x,label\n1,a\n\n2,b\noops,c\n': r"line 5: feature column 'x' holds "
                                         r"'oops', not a number",
        'x,label\n1,a\n2,\n': r"line 3: the label column 'label' is empty",
        'x,label\n1,a\n"2,b\n': r'line 3|line 4',
        'x,lab\n1,a\n': r"has no column 'label' \(did you mean 'lab'\?\)",
        'x,x,label\n1,2,a\n': r"columns \['x'\] appear twice",
    }
    for i, (text, message) in enumerate(cases.items()):
      with self.subTest(message):
        path = _write(os.path.join(self.dir, f'bad{i}.csv'), text)
        with self.assertRaisesRegex(errors.DataFormatError,
                                    f'{path}.*({message})'):
          tabular.read_table([path], 'label')

  def test_a_folder_of_files_must_share_one_header(self):
    _write(os.path.join(self.dir, 'f', '1.csv'), 'x,label\n1,a\n')
    other = _write(os.path.join(self.dir, 'f', '2.csv'), 'y,label\n1,a\n')
    files = tabular.csv_files(os.path.join(self.dir, 'f'))
    self.assertLen(files, 2)
    with self.assertRaisesRegex(errors.DataFormatError,
                                f'{other} line 1: its header'):
      tabular.read_table(files, 'label')


class PrepareTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path
    self.csv = _write(os.path.join(self.dir, 'sites.csv'), _sites_csv())

  def test_client_column_gives_one_client_per_value_and_holds_out_rows(self):
    manifest = tabular.prepare(self.csv, os.path.join(self.dir, 's'),
                               'label', client_column='site',
                               partition='natural', num_clients=0)
    # round(0.1 * n) half up, at least one row left: 20 -> 2, 5 -> 1, 1 -> 0.
    self.assertEqual({c.client_id: c.num_examples for c in manifest.clients},
                     {'north': 18, 'south': 4, 'tiny': 1})
    self.assertEqual(manifest.eval.num_examples, 3)
    self.assertEqual(manifest.source['feature_names'], ['x', 'y'])
    self.assertEqual(manifest.source['classes'], ['high', 'low'])
    self.assertEqual(manifest.num_classes, 2)
    # Every row is in exactly one shard, with its label.
    rows = [_rows(manifest, info) for info in (*manifest.clients,
                                               manifest.eval)]
    features = np.concatenate([r['features'] for r in rows])
    labels = np.concatenate([r['label'] for r in rows])
    self.assertLen(features, 26)
    expected = np.where(features[:, 0] > features[:, 1], 0, 1)
    np.testing.assert_array_equal(labels, expected)
    table = tabular.read_table([self.csv], 'label', 'site')
    self.assertCountEqual(map(tuple, features), map(tuple, table.features))
    # Standardization statistics of the training rows only.
    train = np.concatenate([r['features'] for r in rows[:-1]]).astype(
        np.float64)
    np.testing.assert_allclose(manifest.source['feature_mean'],
                               train.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(manifest.source['feature_std'],
                               train.std(axis=0), rtol=1e-9)

  def test_num_clients_keeps_the_largest_owners(self):
    manifest = tabular.prepare(self.csv, os.path.join(self.dir, 's'),
                               'label', client_column='site',
                               partition='natural', num_clients=2)
    self.assertEqual(manifest.client_ids(), ['north', 'south'])

  def test_without_client_column_rows_are_partitioned(self):
    manifest = tabular.prepare(self.csv, os.path.join(self.dir, 's'),
                               'label', num_clients=2, partition='iid',
                               eval_fraction=0.25)
    # 26 rows iid: 13 and 13; round(0.25 * 13) = 3 held out of each.
    self.assertEqual([c.num_examples for c in manifest.clients], [10, 10])
    self.assertEqual(manifest.eval.num_examples, 6)
    self.assertEqual(manifest.client_ids(), ['client_0000', 'client_0001'])

  def test_eval_data_file_is_the_eval_shard(self):
    held = _write(os.path.join(self.dir, 'test.csv'),
                  'label,y,x\nlow,5,1\nhigh,1,5\n')  # Other column order.
    manifest = tabular.prepare(self.csv, os.path.join(self.dir, 's'),
                               'label', client_column='site',
                               partition='natural', num_clients=0,
                               eval_data=held)
    self.assertEqual(sum(c.num_examples for c in manifest.clients), 26)
    rows = _rows(manifest, manifest.eval)
    np.testing.assert_array_equal(rows['features'], [[1, 5], [5, 1]])
    np.testing.assert_array_equal(rows['label'], [1, 0])
    bad = _write(os.path.join(self.dir, 'bad.csv'), 'x,y,label\n1,2,medium\n')
    with self.assertRaisesRegex(errors.DataFormatError,
                                r"bad.csv: labels \['medium'\] do not occur"):
      tabular.prepare(self.csv, os.path.join(self.dir, 's2'), 'label',
                      client_column='site', partition='natural',
                      num_clients=0, eval_data=bad)

  def test_request_errors(self):
    with self.assertRaisesRegex(errors.DataPrepError, 'drop --partition=iid'):
      tabular.prepare(self.csv, os.path.join(self.dir, 's'), 'label',
                      client_column='site', partition='iid')
    with self.assertRaisesRegex(errors.DataPrepError,
                                'natural needs --client_column'):
      tabular.prepare(self.csv, os.path.join(self.dir, 's'), 'label',
                      partition='natural')
    with self.assertRaisesRegex(errors.DataPrepError, 'needs --label_column'):
      tabular.prepare(self.csv, os.path.join(self.dir, 's'), '')

  def test_unchanged_inputs_reuse_the_shards_and_changed_ones_rebuild(self):
    shard_dir = os.path.join(self.dir, 's')
    first = tabular.find_or_prepare(self.csv, shard_dir, 'label',
                                    client_column='site', partition='natural',
                                    num_clients=0)
    manifest_file = os.path.join(shard_dir, 'manifest.json')
    mtime = os.stat(manifest_file).st_mtime_ns
    again = tabular.find_or_prepare(self.csv, shard_dir, 'label',
                                    client_column='site', partition='natural',
                                    num_clients=0)
    self.assertEqual(os.stat(manifest_file).st_mtime_ns, mtime)
    self.assertEqual(again, first)
    with open(self.csv, 'a', encoding='utf-8') as f:
      f.write('east,1,2,x,low\n')
    changed = tabular.find_or_prepare(self.csv, shard_dir, 'label',
                                      client_column='site',
                                      partition='natural', num_clients=0)
    self.assertIn('east', changed.client_ids())

  def test_cli_prints_one_error_line_naming_file_and_line(self):
    bad = _write(os.path.join(self.dir, 'bad.csv'), 'x,label\n1,a\nz,b\n')
    env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
    result = subprocess.run(
        [sys.executable, '-m', 'data_prep.tabular', f'--data_dir={bad}',
         f'--output_dir={os.path.join(self.dir, "out")}',
         '--label_column=label'], cwd=_REPO, capture_output=True, text=True,
        env=dict(env, PYTHONPATH=_REPO), timeout=300, check=False)
    self.assertEqual(result.returncode, 2, result.stderr)
    lines = result.stderr.strip().splitlines()
    self.assertLen(lines, 1, result.stderr)
    self.assertRegex(lines[0], f"^error: {bad} line 3: feature column 'x'")


if __name__ == '__main__':
  absltest.main()
