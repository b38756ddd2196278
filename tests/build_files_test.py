"""Checks that Bazel BUILD files cover every test and every tested package.

Rules enforced for the source tree (see docs/bazel.md):
  * each `<stem>_test.py` has `py_test(name = "<stem>_test",
    srcs = [..., "<stem>_test.py", ...])` in the BUILD file of its own
    directory;
  * each test file ends with `if __name__ == "__main__": absltest.main()`
    (Bazel runs it as a script);
  * each directory holding a repo-local module that a test imports (directly
    or transitively) has a BUILD file, and that BUILD file names the module's
    file (or uses glob), so `bazel test` sees the same code as pytest.

Runs under pytest (`python -m pytest tests/build_files_test.py`) and under
Bazel (`//tests:build_files_test`).
"""

import ast
import os
import pathlib
import tempfile
from typing import Iterator

from absl.testing import absltest

# Directory names never scanned (besides hidden ones and bazel-*).
_EXCLUDED_DIRS = frozenset({".venv", "third_party", "__pycache__", "node_modules"})
_BUILD_NAMES = ("BUILD", "BUILD.bazel")


def find_repo_root() -> pathlib.Path:
  """Returns the source-tree root (the directory holding WORKSPACE).

  Under Bazel the test runs from a runfiles tree that holds only declared
  files, so it follows symlinks back into the source tree: runfiles entries
  are symlinks to the real files. `TEST_SRCDIR/TEST_WORKSPACE/WORKSPACE` is
  a declared `data` file; `__file__` is the fallback (and the only way under
  pytest). TFF_EDGE_REPO_ROOT overrides both.
  """
  override = os.environ.get("TFF_EDGE_REPO_ROOT")
  if override:
    return pathlib.Path(override).resolve()
  candidates = []
  srcdir = os.environ.get("TEST_SRCDIR")
  if srcdir:
    workspace = os.environ.get("TEST_WORKSPACE", "tff_edge")
    candidates.append(pathlib.Path(srcdir, workspace, "WORKSPACE").resolve().parent)
  candidates.extend(pathlib.Path(__file__).resolve().parents)
  for candidate in candidates:
    if (candidate / "WORKSPACE").is_file() and (candidate / "tests").is_dir():
      return candidate
  raise FileNotFoundError(f"no WORKSPACE found from {candidates}")


def _walk_dirs(root: pathlib.Path) -> Iterator[pathlib.Path]:
  """Yields root and its subdirectories, skipping excluded and hidden ones."""
  for dirpath, dirnames, _ in os.walk(root):
    dirnames[:] = sorted(
        d for d in dirnames
        if d not in _EXCLUDED_DIRS and not d.startswith((".", "bazel-"))
    )
    yield pathlib.Path(dirpath)


def _build_file(directory: pathlib.Path) -> pathlib.Path | None:
  for name in _BUILD_NAMES:
    if (directory / name).is_file():
      return directory / name
  return None


def _string_list(node: ast.expr) -> list[str] | None:
  """Returns the strings of a literal list, or None if it is not one."""
  if isinstance(node, (ast.List, ast.Tuple)) and all(
      isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts
  ):
    return [e.value for e in node.elts]
  return None


def parse_py_tests(build_file: pathlib.Path) -> dict[str, list[str] | None]:
  """Maps py_test names in a BUILD file to their literal srcs.

  BUILD files are Starlark, whose syntax is a subset of Python's, so `ast`
  parses them. srcs that are not a literal list (e.g. glob) map to None.
  `tff_py_test(name = "x_test")` (build_defs.bzl) is a py_test of x_test.py.

  Raises:
    SyntaxError: the BUILD file is not parseable.
  """
  tree = ast.parse(build_file.read_text(), filename=str(build_file))
  tests: dict[str, list[str] | None] = {}
  for node in ast.walk(tree):
    if not (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("py_test", "tff_py_test")
    ):
      continue
    kwargs = {kw.arg: kw.value for kw in node.keywords}
    name = kwargs.get("name")
    if isinstance(name, ast.Constant) and isinstance(name.value, str):
      if node.func.id == "tff_py_test":
        tests[name.value] = [name.value + ".py"]
        continue
      srcs = kwargs.get("srcs")
      tests[name.value] = _string_list(srcs) if srcs is not None else []
  return tests


def _repo_imports(py_file: pathlib.Path, root: pathlib.Path) -> Iterator[pathlib.Path]:
  """Yields repo-local module files that py_file imports (absolute or relative)."""
  try:
    tree = ast.parse(py_file.read_text(), filename=str(py_file))
  except SyntaxError:
    return  # Broken code is the test runner's problem, not this check's.
  package = py_file.parent.relative_to(root).parts
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [alias.name.split(".") for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module.split(".") if node.module else []
      if node.level:
        keep = len(package) - (node.level - 1)
        if keep < 0:
          continue
        base = list(package[:keep]) + base
      # `from a import b` may import module a.b or attribute b of a.
      names = [base + [alias.name] for alias in node.names if alias.name != "*"]
      names.append(base)
    else:
      continue
    for parts in names:
      # The longest prefix that is a repo file is the imported module; its
      # parent packages' __init__.py files are imported too.
      for i in range(len(parts), 0, -1):
        path = root.joinpath(*parts[:i])
        module = path.with_suffix(".py") if not path.is_dir() else path / "__init__.py"
        if module.is_file():
          yield module
          for j in range(1, i):
            init = root.joinpath(*parts[:j], "__init__.py")
            if init.is_file():
              yield init
          break


def _has_main_guard(py_file: pathlib.Path) -> bool:
  """Whether py_file has a top-level `if __name__ == "__main__":` block.

  Bazel runs a py_test as a script: without the guard calling
  absltest.main() nothing runs and the test "passes" vacuously.
  """
  try:
    tree = ast.parse(py_file.read_text(), filename=str(py_file))
  except SyntaxError:
    return True  # The test run itself reports the syntax error.
  for node in tree.body:
    if (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name)
        and node.test.left.id == "__name__"
    ):
      return True
  return False


def _mentions(build_text: str, filename: str) -> bool:
  return f'"{filename}"' in build_text or f"'{filename}'" in build_text


def check_build_files(root: pathlib.Path) -> list[str]:
  """Returns human-readable problems with the BUILD files under root."""
  problems: list[str] = []
  test_files: list[pathlib.Path] = []
  missing_build: set[str] = set()  # Reported once per directory.
  for directory in _walk_dirs(root):
    tests_here = sorted(directory.glob("*_test.py"))
    if not tests_here:
      continue
    test_files.extend(tests_here)
    for test_file in tests_here:
      if not _has_main_guard(test_file):
        problems.append(
            f"{test_file.relative_to(root).as_posix()}: no "
            '`if __name__ == "__main__": absltest.main()`, so Bazel would run nothing'
        )
    rel_dir = directory.relative_to(root).as_posix() or "."
    build = _build_file(directory)
    if build is None:
      missing_build.add(rel_dir)
      problems.append(f"{rel_dir}: has *_test.py files but no BUILD file")
      continue
    try:
      py_tests = parse_py_tests(build)
    except SyntaxError as e:
      problems.append(f"{build.relative_to(root)}: cannot parse: {e}")
      continue
    for test_file in tests_here:
      rel = test_file.relative_to(root).as_posix()
      if test_file.stem not in py_tests:
        problems.append(
            f'{rel}: no py_test(name = "{test_file.stem}") in {build.relative_to(root)}'
        )
        continue
      srcs = py_tests[test_file.stem]
      if srcs is None:
        problems.append(f"{rel}: py_test {test_file.stem} srcs is not a literal list")
      elif test_file.name not in srcs:
        problems.append(
            f'{rel}: py_test {test_file.stem} srcs lacks "{test_file.name}" (has {srcs})'
        )

  # Modules reachable from tests must be visible to Bazel too.
  seen: set[pathlib.Path] = set()
  queue = list(test_files)
  while queue:
    for module in _repo_imports(queue.pop(), root):
      if module in seen:
        continue
      seen.add(module)
      queue.append(module)
  for module in sorted(seen):
    rel_dir = module.parent.relative_to(root).as_posix() or "."
    if any(
        part in _EXCLUDED_DIRS or part.startswith((".", "bazel-"))
        for part in module.relative_to(root).parts
    ):
      continue
    build = _build_file(module.parent)
    if build is None:
      if rel_dir not in missing_build:
        missing_build.add(rel_dir)
        problems.append(f"{rel_dir}: imported by tests but has no BUILD file")
      continue
    text = build.read_text()
    # Empty __init__.py files are created by Bazel when not listed.
    if module.name == "__init__.py" or "glob(" in text:
      continue
    if not _mentions(text, module.name):
      problems.append(
          f"{module.relative_to(root).as_posix()}: imported by tests but not "
          f"listed in any srcs of {build.relative_to(root).as_posix()}"
      )
  return problems


def _write(root: pathlib.Path, files: dict[str, str]) -> None:
  for rel, text in files.items():
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


_GOOD_BUILD = """
py_library(name = "lib", srcs = ["__init__.py", "lib.py"])

py_test(
    name = "lib_test",
    srcs = ["lib_test.py"],
    deps = [":lib"],
)
"""


_TEST_MAIN = """{imports}

if __name__ == "__main__":
  absltest.main()
"""


class BuildFilesTest(absltest.TestCase):

  def _tree(self, files: dict[str, str]) -> pathlib.Path:
    # tempfile honours TMPDIR, which Bazel points at TEST_TMPDIR.
    root = pathlib.Path(self.enter_context(tempfile.TemporaryDirectory()))
    _write(root, files)
    return root

  def _good_files(self) -> dict[str, str]:
    return {
        "WORKSPACE": "",
        "pkg/__init__.py": "",
        "pkg/lib.py": "X = 1\n",
        "pkg/lib_test.py": _TEST_MAIN.format(imports="from pkg import lib"),
        "pkg/BUILD": _GOOD_BUILD,
    }

  def test_repo_build_files_are_complete(self):
    root = find_repo_root()
    problems = check_build_files(root)
    self.assertEmpty(problems, "BUILD problems under %s:\n  %s" % (root, "\n  ".join(problems)))

  def test_repo_root_is_source_tree(self):
    root = find_repo_root()
    self.assertTrue((root / "WORKSPACE").is_file())
    self.assertTrue((root / "tests" / "BUILD").is_file())
    # Under Bazel this proves we escaped the runfiles tree, which holds only
    # declared files and no BUILD files.
    self.assertTrue((root / "tests" / "build_files_test.py").is_file())

  def test_complete_package_passes(self):
    self.assertEqual(check_build_files(self._tree(self._good_files())), [])

  def test_missing_py_test_target_is_reported(self):
    files = self._good_files()
    files["pkg/other_test.py"] = _TEST_MAIN.format(imports="import pkg.lib")
    problems = check_build_files(self._tree(files))
    self.assertLen(problems, 1)
    self.assertIn('pkg/other_test.py: no py_test(name = "other_test")', problems[0])

  def test_missing_build_file_is_reported(self):
    files = self._good_files()
    del files["pkg/BUILD"]
    problems = check_build_files(self._tree(files))
    self.assertIn("pkg: has *_test.py files but no BUILD file", problems)

  def test_wrong_srcs_is_reported(self):
    files = self._good_files()
    files["pkg/BUILD"] = _GOOD_BUILD.replace('srcs = ["lib_test.py"]', 'srcs = ["x.py"]')
    problems = check_build_files(self._tree(files))
    self.assertLen(problems, 1)
    self.assertIn('srcs lacks "lib_test.py"', problems[0])

  def test_imported_package_without_build_is_reported(self):
    files = self._good_files()
    files["pkg/lib_test.py"] = _TEST_MAIN.format(
        imports="from other import util\nfrom pkg import lib"
    )
    files["other/__init__.py"] = ""
    files["other/util.py"] = "from . import helper\n"
    problems = check_build_files(self._tree(files))
    self.assertEqual(problems, ["other: imported by tests but has no BUILD file"])

  def test_transitive_module_missing_from_srcs_is_reported(self):
    files = self._good_files()
    files["pkg/lib.py"] = "from pkg import helper\n"
    files["pkg/helper.py"] = "Y = 2\n"
    problems = check_build_files(self._tree(files))
    self.assertEqual(
        problems,
        ["pkg/helper.py: imported by tests but not listed in any srcs of pkg/BUILD"],
    )

  def test_missing_main_guard_is_reported(self):
    files = self._good_files()
    files["pkg/lib_test.py"] = "from pkg import lib\n"
    problems = check_build_files(self._tree(files))
    self.assertLen(problems, 1)
    self.assertIn("pkg/lib_test.py: no `if __name__", problems[0])

  def test_excluded_dirs_are_ignored(self):
    files = self._good_files()
    for excluded in (".venv/x", "bazel-out/x", "third_party/x", ".hidden"):
      files[f"{excluded}/orphan_test.py"] = ""
    self.assertEqual(check_build_files(self._tree(files)), [])

  def test_unparseable_build_is_reported(self):
    files = self._good_files()
    files["pkg/BUILD"] = "py_test(name = \n"
    problems = check_build_files(self._tree(files))
    self.assertIn("pkg/BUILD: cannot parse", problems[0])


if __name__ == "__main__":
  absltest.main()
