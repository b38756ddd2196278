#!/usr/bin/env bash
# Renders every overlay and validates it against the Kubernetes API schemas.
#
#   k8s/validate.sh [KUBERNETES_VERSION]      (default 1.32.0)
#
# For each k8s/overlays/<name>: `kubectl kustomize` to a temp file, then
# `kubernetes-validate --strict` (unknown fields are errors) against the
# given version's schemas, which kubernetes-validate bundles (no network).
# Also validates k8s/tools/*.yaml, checks that overlays/local is what
# k8s/render.py generates now, and validates the Secrets k8s/make_secrets.sh
# writes (with a throwaway CA, for 3 pods). Exits non-zero, naming what
# failed, on the first failure.
set -euo pipefail

K8S=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$K8S")
VERSION=${1:-1.32.0}
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
[[ -x $PYTHON ]] || PYTHON=python3
# kubernetes-validate (requirements.txt) through the repo's Python.
VALIDATE=("$PYTHON" -m kubernetes_validate)

fail() { printf 'validate.sh: FAILED: %s\n' "$*" >&2; exit 1; }
command -v kubectl >/dev/null || fail "kubectl is not installed (kubectl kustomize renders the overlays)"
"${VALIDATE[@]}" --version > /dev/null 2>&1 ||
  fail "kubernetes-validate is not installed for $PYTHON: pip install -r requirements.txt"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

for overlay in "$K8S"/overlays/*/; do
  name=$(basename "$overlay")
  out=$tmp/$name.yaml
  kubectl kustomize "$overlay" > "$out" 2> "$tmp/err" ||
    fail "kubectl kustomize overlays/$name: $(cat "$tmp/err")"
  count=$(grep -c '^kind:' "$out" || true)
  if ! "${VALIDATE[@]}" --kubernetes-version "$VERSION" --strict --quiet "$out" \
       > "$tmp/report" 2>&1; then
    cat "$tmp/report" >&2
    fail "overlays/$name does not validate against Kubernetes $VERSION"
  fi
  echo "overlays/$name: $count objects valid against Kubernetes $VERSION (strict)"
done

for extra in "$K8S"/tools/*.yaml; do
  if ! "${VALIDATE[@]}" --kubernetes-version "$VERSION" --strict --quiet \
       "$extra" > "$tmp/report" 2>&1; then
    cat "$tmp/report" >&2
    fail "${extra#$K8S/} does not validate against Kubernetes $VERSION"
  fi
  echo "${extra#$K8S/}: valid against Kubernetes $VERSION (strict)"
done

"$PYTHON" "$K8S/render.py" --check ||
  fail "overlays/local is stale: run python3 k8s/render.py"

PYTHON=$PYTHON "$K8S/make_secrets.sh" --dir="$tmp/secrets" \
  --edge-servers=1 > /dev/null
if ! "${VALIDATE[@]}" --kubernetes-version "$VERSION" --strict --quiet \
     "$tmp/secrets/secrets.yaml" > "$tmp/report" 2>&1; then
  cat "$tmp/report" >&2
  fail "the Secrets of make_secrets.sh do not validate"
fi
echo "make_secrets.sh: 2 Secrets and the CA ConfigMap valid against Kubernetes $VERSION (strict)"

# An edge pod's CertificateSigningRequest, as k8s/sign_csrs.sh creates it.
(cd "$K8S/.." && "$PYTHON" -m workers.certs csr --dir="$tmp/pod" \
   --name=edge-0 --role=edge-pod > /dev/null)
"$PYTHON" "$K8S/csr_object.py" request --csr="$tmp/pod/edge-0.csr" \
  --node=edge-0 > "$tmp/csr.json"
if ! "${VALIDATE[@]}" --kubernetes-version "$VERSION" --strict --quiet \
     "$tmp/csr.json" > "$tmp/report" 2>&1; then
  cat "$tmp/report" >&2
  fail "the CertificateSigningRequest of csr_object.py does not validate"
fi
echo "csr_object.py: CertificateSigningRequest valid against Kubernetes $VERSION (strict)"
echo "validate.sh: all overlays valid"
