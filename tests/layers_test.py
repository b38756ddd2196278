"""Checks the package layers of build_defs.bzl against every module's imports.

build_defs.bzl's LAYERS lists the Python packages bottom-up (data_prep <
workers < tff_pipeline/core < ... < tff_pipeline). A module may import
modules of its own package, of packages in lower layers and of other
packages of its own layer; never of a higher layer. Imports anywhere in a
module count (also those inside functions). Test files, tests/ and bench/
are outside the layers. The same list gives Bazel visibility, so the layers
are declared once.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import pathlib
import tempfile
from typing import Iterator

from absl.testing import absltest

from tests import build_files_test

_TOP_LEVEL = ('data_prep', 'workers', 'tff_pipeline')


def read_layers(root: pathlib.Path) -> list[list[str]]:
  """LAYERS of build_defs.bzl, as lists of package paths ('tff_pipeline/core')."""
  tree = ast.parse((root / 'build_defs.bzl').read_text())
  for node in tree.body:
    if (isinstance(node, ast.Assign) and len(node.targets) == 1 and
        isinstance(node.targets[0], ast.Name) and node.targets[0].id == 'LAYERS'):
      layers = ast.literal_eval(node.value)
      return [[label.removeprefix('//') for label in layer] for layer in layers]
  raise ValueError('build_defs.bzl has no LAYERS = [...]')


def _modules(root: pathlib.Path) -> Iterator[pathlib.Path]:
  for top in _TOP_LEVEL:
    for path in sorted((root / top).rglob('*.py')):
      if not path.name.endswith('_test.py') and path.name != 'testing.py':
        yield path


def _imports(path: pathlib.Path, root: pathlib.Path) -> Iterator[str]:
  """Repo-local package paths that `path` imports.

  Empty `__init__.py` files of parent packages, which importing a submodule
  runs, import nothing and are skipped.
  """
  for module in build_files_test._repo_imports(path, root):  # pylint: disable=protected-access
    if module.name == '__init__.py' and not module.read_text().strip():
      continue
    yield module.parent.relative_to(root).as_posix()


def violations(root: pathlib.Path) -> list[str]:
  """Every import that breaks the layers, and packages missing from them."""
  layers = read_layers(root)
  layer_of = {p: i for i, layer in enumerate(layers) for p in layer}
  problems = []
  edges: dict[str, set[str]] = {}
  for path in _modules(root):
    package = path.parent.relative_to(root).as_posix()
    if package not in layer_of:
      problems.append(f'{package} (of {path.relative_to(root)}) is in no '
                      'layer of build_defs.bzl')
      continue
    for imported in _imports(path, root):
      if imported == package or imported not in layer_of:
        continue
      edges.setdefault(package, set()).add(imported)
      if layer_of[imported] > layer_of[package]:
        problems.append(f'{path.relative_to(root)} imports {imported}, a '
                        f'higher layer than {package}')
  # Packages of one layer must not import each other in a cycle.
  for start in edges:
    stack, seen = [start], set()
    while stack:
      for nxt in edges.get(stack.pop(), ()):
        if nxt == start:
          problems.append(f'import cycle: {start} imports itself through '
                          f'{sorted(seen)}')
        elif nxt not in seen:
          seen.add(nxt)
          stack.append(nxt)
  return sorted(set(problems))


def top_level_edges(root: pathlib.Path) -> set[tuple[str, str]]:
  """(importer, imported) among data_prep, workers and tff_pipeline."""
  edges = set()
  for path in _modules(root):
    top = path.relative_to(root).parts[0]
    for imported in _imports(path, root):
      other = imported.split('/')[0]
      if other != top and other in _TOP_LEVEL:
        edges.add((top, other))
  return edges


class LayersTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.root = build_files_test.find_repo_root()

  def test_repo_respects_its_layers(self):
    self.assertEqual(violations(self.root), [])

  def test_top_level_packages_import_one_way(self):
    edges = top_level_edges(self.root)
    print(f'top-level imports: {sorted(edges)}')
    self.assertLessEqual(edges, {('workers', 'data_prep'),
                                 ('tff_pipeline', 'data_prep'),
                                 ('tff_pipeline', 'workers')})

  def test_bazel_deps_follow_the_imports(self):
    # tools/sync_build_deps.py writes them; a stale BUILD file fails here.
    spec = importlib.util.spec_from_file_location(
        'sync_build_deps', self.root / 'tools' / 'sync_build_deps.py')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    stale = [str(b.relative_to(self.root))
             for b in sorted(self.root.glob('tff_pipeline/**/BUILD'))
             if tool.synced(b) != b.read_text()]
    self.assertEqual(stale, [], 'run tools/sync_build_deps.py')

  def _tree(self, files: dict[str, str], layers: str) -> pathlib.Path:
    root = pathlib.Path(tempfile.mkdtemp())
    (root / 'build_defs.bzl').write_text(f'LAYERS = {layers}\n')
    for name, text in files.items():
      path = root / name
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_text(text)
    for top in _TOP_LEVEL:
      (root / top).mkdir(exist_ok=True)
      (root / top / '__init__.py').touch()
    return root

  def test_an_upward_import_is_reported(self):
    root = self._tree({'workers/w.py': 'from tff_pipeline import t\n',
                       'tff_pipeline/t.py': 'from workers import w\n'},
                      '[["//data_prep"], ["//workers"], ["//tff_pipeline"]]')
    self.assertIn(
        'workers/w.py imports tff_pipeline, a higher layer than workers',
        violations(root))
    self.assertIn(('workers', 'tff_pipeline'), top_level_edges(root))

  def test_an_import_inside_a_function_counts(self):
    root = self._tree(
        {'data_prep/d.py': 'def f():\n  from workers import w\n',
         'workers/w.py': ''},
        '[["//data_prep"], ["//workers"], ["//tff_pipeline"]]')
    self.assertEqual(violations(root), [
        'data_prep/d.py imports workers, a higher layer than data_prep'])

  def test_a_package_outside_the_layers_is_reported(self):
    root = self._tree({'tff_pipeline/new/x.py': ''},
                      '[["//data_prep"], ["//workers"], ["//tff_pipeline"]]')
    self.assertEqual(violations(root), [
        'tff_pipeline/new (of tff_pipeline/new/x.py) is in no layer of '
        'build_defs.bzl'])

  def test_a_cycle_within_a_layer_is_reported(self):
    root = self._tree(
        {'tff_pipeline/a/x.py': 'from tff_pipeline.b import y\n',
         'tff_pipeline/b/y.py': 'from tff_pipeline.a import x\n',
         'tff_pipeline/a/__init__.py': '', 'tff_pipeline/b/__init__.py': ''},
        '[["//data_prep"], ["//workers"], ["//tff_pipeline/a", '
        '"//tff_pipeline/b"], ["//tff_pipeline"]]')
    self.assertTrue(any('import cycle' in p for p in violations(root)))


if __name__ == '__main__':
  absltest.main()
