"""Writes the deps of tff_pipeline's Bazel targets from the modules' imports.

    .venv/bin/python tools/sync_build_deps.py           # rewrite BUILD files
    .venv/bin/python tools/sync_build_deps.py --check   # exit 1 if stale

Each tff_pipeline package has one py_library (its modules) and one
tff_py_test per test; their deps follow from the imports. A test that
imports a higher layer (build_defs.bzl) gets //tff_pipeline:testing.
"""

from __future__ import annotations

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# pylint: disable=g-import-not-at-top,wrong-import-position
from tests import build_files_test
from tests import layers_test

_LAYER = {p: i for i, layer in enumerate(layers_test.read_layers(ROOT))
          for p in layer}


def _target(module: pathlib.Path, package: str) -> str | None:
  if module.name == '__init__.py' and not module.read_text().strip():
    return None
  rel = module.relative_to(ROOT)
  directory = '/'.join(rel.parts[:-1])
  if rel.parts[0] == 'tff_pipeline':
    if directory == package:
      name = package.split('/')[-1]
      return ':dashboard_lib' if name == 'dashboard' else ':' + name
    if directory == 'tff_pipeline' or _LAYER[directory] > _LAYER[package]:
      return ':tff_pipeline' if package == 'tff_pipeline' else (
          '//tff_pipeline:testing')
    return '//' + directory
  if rel.parts[0] in ('workers', 'data_prep', 'tests'):
    if module.name == '__init__.py':  # A package's docstring: its library.
      return f'//{directory}:{rel.parts[-2]}'
    return f'//{directory}:{rel.stem}'
  return None


def _deps_text(deps: set[str]) -> str:
  ordered = (sorted(d for d in deps if d.startswith(':')) +
             sorted(d for d in deps if not d.startswith(':')))
  if len(ordered) == 1:
    return f'deps = ["{ordered[0]}"],'
  return 'deps = [\n' + ''.join(f'        "{d}",\n' for d in ordered) + '    ],'


def _imports(path: pathlib.Path, package: str) -> set[str]:
  found = set()
  for module in build_files_test._repo_imports(path, ROOT):  # pylint: disable=protected-access
    target = _target(module, package)
    if target:
      found.add(target)
  return found


def synced(build: pathlib.Path) -> str:
  """The BUILD file's text with every tff_pipeline target's deps rewritten."""
  package = build.parent.relative_to(ROOT).as_posix()
  text = build.read_text()

  def test(match: re.Match) -> str:
    deps = _imports(build.parent / f'{match.group(1)}.py', package)
    body = re.sub(r'deps = (\[[^\]]*\]|"[^"]*"),', _deps_text(deps),
                  match.group(0), flags=re.S)
    if 'deps =' not in body:
      body = body.replace(f'name = "{match.group(1)}",',
                          f'name = "{match.group(1)}",\n    {_deps_text(deps)}')
    return body

  text = re.sub(r'tff_py_test\(\n\s*name = "([a-z_0-9]+)",.*?\n\)', test, text,
                flags=re.S)
  library = package.split('/')[-1]
  if library == 'dashboard':
    library = 'dashboard_lib'  # The package's binary is called dashboard.
  deps = set()
  for module in sorted(build.parent.glob('*.py')):
    if not module.name.endswith('_test.py'):
      deps |= {d for d in _imports(module, package)
               if not d.startswith(':') and d != '//tff_pipeline:testing'}
  pattern = re.compile(r'(py_library\(\n\s*name = "%s",\n(?:.*?\n)*?)'
                       r'(\s*deps = (?:\[[^\]]*\]|"[^"]*"),\n)?\)' % library)
  return pattern.sub(lambda m: m.group(1) + '    ' + _deps_text(deps) + '\n)',
                     text, count=1)


def main(argv: list[str]) -> int:
  stale = []
  for build in sorted(ROOT.glob('tff_pipeline/**/BUILD')):
    text = synced(build)
    if text != build.read_text():
      stale.append(str(build.relative_to(ROOT)))
      if '--check' not in argv:
        build.write_text(text)
  if stale and '--check' in argv:
    print('stale deps (run tools/sync_build_deps.py): ' + ', '.join(stale))
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
