"""Runs README's examples exactly as written (extracted between markers).

The Python API example (`<!-- api-example:start -->`) runs as a script; the
custom task family (`<!-- custom-task-example:start -->`) is saved as
my_task.py and trained with `python -m tff_pipeline.train
--task=my_task:BLOBS`, as README says.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys

from absl.testing import absltest

from tests import testutil


def readme_block(marker: str) -> str:
  """The fenced code between <!-- marker:start --> and <!-- marker:end -->."""
  with open(os.path.join(testutil.REPO_ROOT, 'README.md'),
            encoding='utf-8') as f:
    text = f.read()
  found = re.search(rf'<!-- {marker}:start -->\n```python\n(.*?)```\n'
                    rf'<!-- {marker}:end -->', text, re.S)
  if found is None:
    raise AssertionError(f'README.md has no {marker} block')
  return found.group(1)


class ReadmeExamplesTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path
    self.env = dict(os.environ, TFF_PIPELINE_CACHE=os.path.join(
        self.dir, 'cache'), TF_CPP_MIN_LOG_LEVEL='3')

  def test_api_example(self):
    script = os.path.join(self.dir, 'example.py')
    with open(script, 'w', encoding='utf-8') as f:
      f.write(readme_block('api-example'))
    result = subprocess.run(
        [sys.executable, script], cwd=self.dir, capture_output=True,
        text=True, timeout=900, check=False,
        env=dict(self.env, PYTHONPATH=testutil.REPO_ROOT))
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    final, prediction, saved_model = result.stdout.strip().splitlines()[-3:]
    # The class is sign(x0 + x1): a line through the origin, which
    # logistic regression can draw exactly.
    self.assertGreaterEqual(ast.literal_eval(final)['accuracy'], 0.9)
    probabilities = [float(v) for v in re.findall(r'[\d.e+-]+', prediction)]
    self.assertLen(probabilities, 2)
    self.assertGreater(probabilities[1], 0.5)  # 1 + 1 > 0: class 1.
    self.assertEqual(saved_model, os.path.join(
        self.dir, 'runs', 'two_sites', 'model', 'saved_model'))
    self.assertTrue(os.path.isfile(os.path.join(saved_model,
                                                'saved_model.pb')))

  def test_custom_task_example(self):
    with open(os.path.join(self.dir, 'my_task.py'), 'w',
              encoding='utf-8') as f:
      f.write(readme_block('custom-task-example'))
    output_dir = os.path.join(self.dir, 'run')
    result = testutil.run_module(
        'tff_pipeline.train', '--task=my_task:BLOBS', '--rounds=5',
        f'--output_dir={output_dir}', '--progress=false', timeout=900,
        env=dict(self.env, PYTHONPATH=os.pathsep.join(
            [self.dir, testutil.REPO_ROOT])))
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    with open(os.path.join(output_dir, 'summary.json'), encoding='utf-8') as f:
      summary = json.load(f)
    # Blobs 2 sd apart along each axis: the best line is right for
    # Phi(sqrt(2)) = 0.92 of the examples.
    self.assertGreaterEqual(summary['final_eval']['accuracy'], 0.8)
    self.assertEqual(summary['config']['num_clients'], 0)
    self.assertTrue(os.path.isfile(os.path.join(output_dir, 'model',
                                                'model.tflite')))


if __name__ == '__main__':
  absltest.main()
