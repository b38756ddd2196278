#!/usr/bin/env bash
# Runs the Bazel test suite offline with the project's .venv interpreter.
#
#   tools/bazel_test.sh                      # bazel test //...
#   tools/bazel_test.sh --test_filter=Foo    # extra flags are passed through
#   tools/bazel_test.sh //data_prep/...      # explicit targets replace //...
#
# Works from any cwd. Exits with Bazel's status: 0 all passed, 3 a test
# failed, 1 build error, 4 no tests found, ... (non-zero on any failure).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [[ ! -x "$REPO/.venv/bin/python3" ]]; then
  echo "bazel_test: $REPO/.venv/bin/python3 missing; run ./setup.sh first" >&2
  exit 2
fi
if ! command -v bazel >/dev/null; then
  echo "bazel_test: bazel not found; run ./setup.sh (installs bazel-bootstrap)" >&2
  exit 2
fi

# Bazel's autodetecting Python toolchain runs the first python3 on PATH;
# .bazelrc forwards PATH to actions and tests (--action_env/--test_env).
export PATH="$REPO/.venv/bin:$PATH"

# Data outside the workspace cannot be a Bazel `data` dep; tests find it via
# this variable (.bazelrc passes it through). Default: shared/ beside the repo.
if [[ -z "${TFF_PIPELINE_SHARED_DATA:-}" && -d "$REPO/../shared/data" ]]; then
  TFF_PIPELINE_SHARED_DATA="$(cd "$REPO/../shared/data" && pwd)"
  export TFF_PIPELINE_SHARED_DATA
fi

flags=()
[[ "${CI:-}" == "true" ]] && flags+=(--config=ci)

# Default to every target unless the caller named some.
targets=("//...")
for arg in "$@"; do
  if [[ "$arg" == //* || "$arg" == :* ]]; then
    targets=()
    break
  fi
done

cd "$REPO"
exec bazel test "${flags[@]}" "$@" "${targets[@]}"
