#!/usr/bin/env bash
# Builds the tff-edge image with podman, on this machine, with no registry but
# Debian's and PyPI (and none at all once its caches are filled).
#
#   k8s/build_image.sh [--image=localhost/tff-edge:latest] [--wheelhouse=DIR]
#                      [--fill-wheelhouse] [--rebuild-base] [--base-only]
#
# 1. Prerequisites (k8s/podman_prereqs.sh): podman, an OCI runtime (crun or
#    runc, whichever is installed; crun is installed if neither is) and, for
#    the base image, debootstrap: detected, or installed with apt-get as
#    root (APT_INSTALL=0: only detected). /etc/containers/containers.conf
#    (CONTAINERS_CONF): written if missing, with the runtime found and
#    default_ulimits nofile/nproc 1024 (podman 4.3 fails with the inherited
#    ones); a containers.conf you wrote is never overwritten: the script
#    says if it names a runtime that is not installed.
# 2. The base image BASE (localhost/tff-edge-base:bookworm): debootstrap
#    --variant=minbase of Debian bookworm with python3.11, python3.11-venv,
#    nginx, ca-certificates and dataset-fashion-mnist (the demo data), then
#    `podman import`. The rootfs tarball is cached in $CACHE_DIR, so a rebuild
#    needs no Debian mirror. --rebuild-base redoes it.
# 3. `podman build -f k8s/Containerfile` on a staged context (the Python
#    packages, configs and requirements.txt; never .venv, certs or runs).
#    The loopback bind shim is compiled here with the host's gcc.
#    Python packages (hash-checked: requirements.txt pins every sha256) come
#    from a wheelhouse if one is given (or
#    --fill-wheelhouse fills $CACHE_DIR/wheelhouse with `pip wheel` first:
#    then the build itself runs with --network=none), else from PyPI during
#    the build, trusting the host's CA bundle (mounted, not copied).
# No secret goes into the image: certificates and SecAgg keys are mounted at
# run time (k8s/make_secrets.sh).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=k8s/podman_prereqs.sh
source "$REPO/k8s/podman_prereqs.sh"
CONTAINERS_CONF=${CONTAINERS_CONF:-/etc/containers/containers.conf}
IMAGE=${IMAGE:-localhost/tff-edge:latest}
BASE=${BASE:-localhost/tff-edge-base:bookworm}
CACHE_DIR=${CACHE_DIR:-/var/tmp/tff-edge-build}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
WHEELHOUSE=${WHEELHOUSE:-}
FILL_WHEELHOUSE=0
REBUILD_BASE=0
BASE_ONLY=0
# python3-distutils: python3.11-venv needs the virtual python3.11-distutils,
# which debootstrap's resolver does not pick on its own.
DEBIAN_PACKAGES=python3.11,python3.11-venv,python3-distutils,nginx,ca-certificates,dataset-fashion-mnist

for arg in "$@"; do
  case $arg in
    --image=*) IMAGE=${arg#*=} ;;
    --wheelhouse=*) WHEELHOUSE=${arg#*=} ;;
    --fill-wheelhouse) FILL_WHEELHOUSE=1 ;;
    --rebuild-base) REBUILD_BASE=1 ;;
    --base-only) BASE_ONLY=1 ;;
    -h|--help) sed -n '2,/^set /{/^#/p}' "$0"; exit 0 ;;
    *) echo "build_image.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done

log() { printf '[build_image] %s\n' "$*" >&2; }
die() { printf '[build_image] error: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root (debootstrap and rootful podman)"

# 1. Prerequisites and podman's runtime settings.
ensure_command podman podman
runtime=$(ensure_oci_runtime)
log "podman $(podman --version | awk '{print $NF}'), OCI runtime $runtime"
write_containers_conf "$CONTAINERS_CONF" "$runtime"

mkdir -p "$CACHE_DIR"

# 2. The base image.
if [[ $REBUILD_BASE == 1 ]] || ! podman image exists "$BASE"; then
  tarball=$CACHE_DIR/bookworm-base.tar
  if [[ $REBUILD_BASE == 1 || ! -s $tarball ]]; then
    ensure_command debootstrap debootstrap
    root=$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")
    trap 'rm -rf "$root"' EXIT
    log "debootstrap bookworm ($DEBIAN_PACKAGES) into $root"
    # --foreign, then the second stage with a policy-rc.d that forbids
    # starting services: installing nginx must not start it on this host.
    mkdir -p "$CACHE_DIR/debs"  # Downloaded .debs, kept for rebuilds.
    debootstrap --foreign --variant=minbase --include="$DEBIAN_PACKAGES" \
      --cache-dir="$CACHE_DIR/debs" \
      bookworm "$root" "$MIRROR"
    printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
    chmod 755 "$root/usr/sbin/policy-rc.d"
    chroot "$root" /debootstrap/debootstrap --second-stage
    rm -f "$root/usr/sbin/policy-rc.d"
    # Slim: no package caches, lists, docs or man pages (keeps copyright).
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
      "$root"/usr/share/man/* "$root"/usr/share/info/* \
      "$root"/var/log/*.log "$root"/var/cache/debconf/*-old
    find "$root/usr/share/doc" -type f ! -name copyright -delete
    rm -f "$root/etc/resolv.conf" "$root/etc/hostname"
    tar -C "$root" --numeric-owner -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$root"; trap - EXIT
  fi
  log "podman import $tarball as $BASE"
  podman import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' "$tarball" "$BASE" >/dev/null
fi

[[ $BASE_ONLY == 0 ]] || { log "base image $BASE is ready"; exit 0; }

# 3. Wheelhouse (optional) and the build context.
if [[ $FILL_WHEELHOUSE == 1 ]]; then
  WHEELHOUSE=${WHEELHOUSE:-$CACHE_DIR/wheelhouse}
  mkdir -p "$WHEELHOUSE"
  log "pip wheel --no-deps -r requirements.txt -w $WHEELHOUSE"
  python3.11 -m pip wheel -q --no-deps -r "$REPO/requirements.txt" \
    -w "$WHEELHOUSE"
fi

context=$(mktemp -d "$CACHE_DIR/context.XXXXXX")
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/app"
cp "$REPO/requirements.txt" "$context/"
# The loopback bind shim (workers/native/loopback_bind.c), built here: it
# needs only GLIBC_2.2.5 symbols, so the host's gcc serves the image (which
# has no compiler). Without it every executor refuses to start.
command -v gcc > /dev/null || die "gcc is not installed: apt-get install -y gcc libc6-dev"
gcc -shared -fPIC -O2 -Wall -o "$context/loopback_bind.so" \
  "$REPO/workers/native/loopback_bind.c"
for package in data_prep tff_pipeline workers configs; do
  # Only code and configs: no tests, caches or local outputs.
  (cd "$REPO" && find "$package" -type f \( -name '*.py' -o -name '*.yaml' \) \
     ! -name '*_test.py' ! -path '*/__pycache__/*' -print0 |
   xargs -0 cp --parents -t "$context/app")
done

build_args=(--build-arg "BASE_IMAGE=$BASE" -f "$REPO/k8s/Containerfile"
            -t "$IMAGE" --layers=true)
if [[ -n $WHEELHOUSE ]]; then
  [[ -d $WHEELHOUSE ]] || die "--wheelhouse=$WHEELHOUSE is not a directory"
  log "offline build: wheels from $WHEELHOUSE, --network=none"
  build_args+=(--network=none -v "$(realpath "$WHEELHOUSE"):/wheelhouse:ro")
else
  # PyPI during the build: the host's resolver and CA bundle (mounted for
  # the build only; the image keeps Debian's own).
  build_args+=(--network=host)
  ca=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
  if [[ -f $ca ]]; then
    build_args+=(-v "$ca:/run/host-ca.crt:ro"
                 --build-arg "PIP_CERT_FILE=/run/host-ca.crt")
  fi
fi

log "podman build -t $IMAGE"
start=$(date +%s)
podman build "${build_args[@]}" "$context"
log "built $IMAGE in $(( $(date +%s) - start ))s: $(podman image inspect \
  --format '{{.Size}}' "$IMAGE" | numfmt --to=iec) "
