#!/usr/bin/env bash
# Runs the whole test suite: `bazel test //...` (one py_test per *_test.py),
# offline, with the .venv interpreter. Extra arguments go to Bazel.
#   ./test.sh                       every test
#   RUN_SLOW=1 ./test.sh            also the slow end-to-end tests
# The same tests run under pytest: .venv/bin/python -m pytest
set -uo pipefail
cd "$(dirname "$0")"

log=$(mktemp)
trap 'rm -f "$log"' EXIT
tools/bazel_test.sh "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

# One closing line in the usual "N passed, N failed" form.
passed=$(grep -cE '^//\S+\s+(\(cached\) )?PASSED' "$log")
failed=$(grep -cE '^//\S+\s+(FAILED|TIMEOUT|NO STATUS|INCOMPLETE|FLAKY|FAILED TO BUILD)' "$log")
skipped=$(grep -cE '^//\S+\s+SKIPPED' "$log")
echo "bazel: ${passed} passed, ${failed} failed, ${skipped} skipped"
if [[ $status -eq 0 && $passed -eq 0 ]]; then
  echo "error: bazel ran no test" >&2
  exit 1
fi
exit "$status"
