"""Tests for tff_pipeline.dashboard.runs: run folders read from files alone."""

from __future__ import annotations

import json
import os
import time

from absl.testing import absltest

from tff_pipeline.dashboard import runs


def _write_run(folder: str, rows, config=None, summary=None,
               raw_tail: str = '') -> str:
  os.makedirs(folder, exist_ok=True)
  if config is not None:
    with open(os.path.join(folder, 'config.json'), 'w', encoding='utf-8') as f:
      json.dump(config, f)
  with open(os.path.join(folder, 'metrics.jsonl'), 'w', encoding='utf-8') as f:
    f.writelines(json.dumps(r) + '\n' for r in rows)
    f.write(raw_tail)
  if summary is not None:
    with open(os.path.join(folder, 'summary.json'), 'w', encoding='utf-8') as f:
      json.dump(summary, f)
  return folder


def _row(round_num: int, **extra):
  return {'round': round_num, 'round_seconds': 1.0,
          'clients': [f'c{round_num}', f'c{round_num + 10}'],
          'train': {'loss': 1.0 / round_num}, **extra}


class ReadRowsTest(absltest.TestCase):

  def test_bad_lines_are_named_and_skipped_a_torn_last_line_is_not(self):
    folder = self.create_tempdir().full_path
    path = os.path.join(folder, 'metrics.jsonl')
    with open(path, 'w', encoding='utf-8') as f:
      f.write(json.dumps(_row(1)) + '\n')
      f.write('{"round": 2, "round_sec\n')  # Line 2: not JSON.
      f.write('\n')
      f.write('[1, 2]\n')  # Line 4: JSON, but not a row.
      f.write(json.dumps(_row(3)) + '\n')
      f.write('{"round": 4, "tr')  # Being written: no newline yet.
    rows, problems = runs.read_rows(path)
    self.assertEqual([r['round'] for r in rows], [1, 3])
    self.assertLen(problems, 2)
    self.assertIn('line 2 is not JSON', problems[0])
    self.assertIn('line 4 has no "round"', problems[1])

  def test_missing_file_is_no_rows(self):
    self.assertEqual(runs.read_rows('/nonexistent/metrics.jsonl'), ([], []))


class RunsFolderTest(absltest.TestCase):

  def test_missing_folder_is_a_problem_not_an_error(self):
    folder = runs.RunsFolder('/nonexistent/runs')
    self.assertIn('does not exist', folder.problem())
    self.assertEqual(folder.names(), [])
    self.assertEqual(folder.all(), [])
    self.assertIsNone(folder.read('x'))

  def test_finds_runs_two_levels_deep_and_only_those(self):
    root = self.create_tempdir().full_path
    _write_run(os.path.join(root, 'a'), [_row(1)])
    _write_run(os.path.join(root, 'group', 'b'), [_row(1)])
    os.makedirs(os.path.join(root, 'empty'))
    os.makedirs(os.path.join(root, 'x', 'y', 'too-deep'))
    _write_run(os.path.join(root, 'x', 'y', 'too-deep'), [_row(1)])
    folder = runs.RunsFolder(root)
    self.assertEqual(folder.names(), ['a', 'group/b'])
    self.assertIsNone(folder.read('../a'))
    self.assertIsNone(folder.read('empty'))
    self.assertEqual(folder.read('group/b').rows[0]['round'], 1)

  def test_a_run_folder_itself(self):
    root = _write_run(self.create_tempdir().full_path, [_row(1)])
    self.assertEqual(runs.RunsFolder(root).names(), ['.'])

  def test_states_live_finished_stopped(self):
    root = self.create_tempdir().full_path
    _write_run(os.path.join(root, 'done'), [_row(1)], {'rounds': 1},
               {'final_round': 1})
    _write_run(os.path.join(root, 'going'), [_row(1)], {'rounds': 5})
    dead = _write_run(os.path.join(root, 'dead'), [_row(1)], {'rounds': 5})
    hour_ago = time.time() - 3600
    for name in os.listdir(dead):
      os.utime(os.path.join(dead, name), (hour_ago, hour_ago))
    folder = runs.RunsFolder(root)
    self.assertEqual(folder.read('done').state, 'finished')
    self.assertEqual(folder.read('going').state, 'live')
    self.assertEqual(folder.read('dead').state, 'stopped')
    # Slow rounds (eval included) stretch the window: 3 x 1900 s > 1 hour.
    _write_run(dead, [_row(1, round_seconds=900.0, eval_seconds=1000.0)],
               {'rounds': 5})
    for name in os.listdir(dead):
      os.utime(os.path.join(dead, name), (hour_ago, hour_ago))
    self.assertEqual(folder.read('dead').state, 'live')
    # Newest first.
    self.assertEqual(folder.all()[-1].name, 'dead')

  def test_rereads_a_changed_file(self):
    root = self.create_tempdir().full_path
    path = _write_run(os.path.join(root, 'r'), [_row(1)], {'rounds': 3})
    folder = runs.RunsFolder(root)
    first = folder.read('r')
    _write_run(path, [_row(1), _row(2)], {'rounds': 3})
    second = folder.read('r')
    self.assertEqual([r['round'] for r in second.rows], [1, 2])
    self.assertNotEqual(first.version, second.version)

  def test_unreadable_json_files_are_problems(self):
    root = self.create_tempdir().full_path
    path = _write_run(os.path.join(root, 'r'), [_row(1)])
    with open(os.path.join(path, 'config.json'), 'w', encoding='utf-8') as f:
      f.write('{not json')
    run = runs.RunsFolder(root).read('r')
    self.assertIsNone(run.config)
    self.assertLen(run.problems, 1)
    self.assertIn('config.json cannot be read', run.problems[0])
    self.assertLen(run.rows, 1)


class PublicRowsTest(absltest.TestCase):

  def _rows(self):
    return [_row(1, participants=['c1'],
                 failures=[{'pod': 'edge-1', 'kind': 'unavailable',
                            'clients': ['c11'], 'error': 'gone'}])]

  def test_dp_runs_carry_counts_not_ids(self):
    rows = runs.public_rows(self._rows(), private=True)
    text = json.dumps(rows)
    for client in ('c1', 'c11'):
      self.assertNotIn(f'"{client}"', text)
    self.assertEqual(rows[0]['clients_count'], 2)
    self.assertEqual(rows[0]['participants_count'], 1)
    self.assertEqual(rows[0]['failures'][0]['clients_count'], 1)
    self.assertEqual(rows[0]['failures'][0]['pod'], 'edge-1')

  def test_other_runs_keep_ids_and_get_counts(self):
    original = self._rows()
    rows = runs.public_rows(original, private=False)
    self.assertEqual(rows[0]['clients'], ['c1', 'c11'])
    self.assertEqual(rows[0]['clients_count'], 2)
    self.assertNotIn('clients_count', original[0])  # Input untouched.

  def test_privacy_is_from_the_ledger_in_the_rows(self):
    root = self.create_tempdir().full_path
    _write_run(os.path.join(root, 'eps'), [_row(1, privacy={'epsilon': 1.0})],
               {'aggregator': 'dp_fixed'})
    _write_run(os.path.join(root, 'plain'), [_row(1)], {'aggregator': 'secagg'})
    folder = runs.RunsFolder(root)
    self.assertTrue(folder.read('eps').private)
    self.assertFalse(folder.read('plain').private)


if __name__ == '__main__':
  absltest.main()
