#!/bin/sh
# Stand-in for Bazel's coverage tools, which cannot be downloaded offline.
echo "remote_coverage_tools is an offline stub: bazel coverage is unsupported" >&2
exit 1
