# The deploy path's prerequisites, detected or installed: podman, an OCI
# runtime it can use (crun or runc), debootstrap, and a containers.conf that
# names a runtime that exists. Sourced by k8s/build_image.sh (and its test,
# tests/podman_prereqs_test.py); defines functions only.
#
# A fresh Debian 12 `apt-get install podman` brings crun, not runc; older
# setups have runc only. We take whichever is installed (crun first, as
# podman does), install crun if neither is, and never overwrite a
# containers.conf we did not write: we say what is wrong with it instead.

PREREQS_MARK='# Written by k8s/build_image.sh'
# Set APT_INSTALL=0 to refuse installing anything (then a missing tool is an
# error naming the package).
APT_INSTALL=${APT_INSTALL:-1}

prereq_log() { printf '[build_image] %s\n' "$*" >&2; }
prereq_die() { printf '[build_image] error: %s\n' "$*" >&2; exit 1; }

# apt_install PACKAGE...: installs with apt-get, or dies saying how.
apt_install() {
  if [[ $APT_INSTALL == 1 && $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    prereq_log "installing $* (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2 ||
      prereq_die "apt-get install -y $* failed; install it yourself"
  else
    prereq_die "$* is not installed: apt-get install -y $*"
  fi
}

# ensure_command COMMAND PACKAGE: COMMAND on PATH, or PACKAGE installed.
ensure_command() {
  command -v "$1" >/dev/null && return 0
  apt_install "$2"
  command -v "$1" >/dev/null || prereq_die "$2 installed but $1 is not on PATH"
}

# detect_oci_runtime: prints crun or runc (the first on PATH), or fails.
detect_oci_runtime() {
  local runtime
  for runtime in crun runc; do
    if command -v "$runtime" >/dev/null; then
      echo "$runtime"
      return 0
    fi
  done
  return 1
}

# ensure_oci_runtime: prints the runtime to use, installing crun if none is.
ensure_oci_runtime() {
  detect_oci_runtime && return 0
  apt_install crun
  detect_oci_runtime || prereq_die "crun installed but not on PATH"
}

# configured_runtime FILE: the `runtime = "..."` of FILE's [engine] table.
configured_runtime() {
  awk '/^[[:space:]]*\[/ { engine = ($0 ~ /^[[:space:]]*\[engine\]/) }
       engine && /^[[:space:]]*runtime[[:space:]]*=/ {
         sub(/^[^=]*=[[:space:]]*"/, ""); sub(/".*/, ""); print; exit }' "$1"
}

# write_containers_conf FILE RUNTIME: podman's settings for the build.
# Writes FILE if it is missing or ours; a user's own FILE is left as it is,
# with a warning if it names a runtime that is not installed.
write_containers_conf() {
  local conf=$1 runtime=$2 current
  if [[ -f $conf ]] && ! grep -qF "$PREREQS_MARK" "$conf"; then
    current=$(configured_runtime "$conf")
    if [[ -n $current ]] && ! command -v "$current" >/dev/null; then
      prereq_log "warning: $conf (not written by this script, left as it" \
        "is) sets runtime = \"$current\", which is not installed; podman" \
        "will fail: set runtime = \"$runtime\" in it or install $current"
    else
      prereq_log "leaving $conf as it is (not written by this script)"
    fi
    return 0
  fi
  if [[ -f $conf ]]; then
    current=$(configured_runtime "$conf")
    [[ $current == "$runtime" ]] && return 0
    prereq_log "rewriting $conf (ours): runtime ${current:-unset} -> $runtime"
  else
    prereq_log "writing $conf (runtime=$runtime, ulimits 1024)"
  fi
  mkdir -p "$(dirname "$conf")"
  cat > "$conf" <<EOF
$PREREQS_MARK: podman 4.3 needs explicit ulimits here (the
# inherited ones are too large for it); runtime is the OCI runtime found
# installed. Delete this file to have it written again.
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "$runtime"
EOF
}
