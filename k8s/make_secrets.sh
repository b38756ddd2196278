#!/usr/bin/env bash
# Makes the server side's Secrets and the CA's public ConfigMap: the CA
# (python -m workers.certs), the edge servers' and the coordinator's
# certificates, for the replica counts of overlays/cluster. It makes NO edge
# pod key and no SecAgg secret: each edge pod makes its own on its own volume
# (k8s/base/edge.yaml `identity`, workers.identity) and gets its certificate
# through a CertificateSigningRequest (k8s/sign_csrs.sh).
#
#   k8s/make_secrets.sh [--edge-servers=M] [--dir=k8s/.secrets]
#                       [--apply] [--namespace=NS]
#
# --edge-servers defaults to the count in the rendered k8s/overlays/cluster
# (kubectl needed then), so after scaling run it again: it keeps the CA and
# the existing certificates and issues only the new nodes (--reuse_ca).
#
# Writes, under --dir (default k8s/.secrets, git-ignored; 0700):
#   certs/              workers.certs output: ca.crt, ca.crl (once something
#                       is revoked), <node>.crt/.key of the server side, and
#                       ca.key, which no Secret contains: move it offline and
#                       bring it back only to sign (sign_csrs.sh) or revoke
#   files/<secret>/     exactly the files each Secret holds (e2e_podman.sh
#                       copies these into podman volumes)
#   secrets.yaml        0600:
#     tff-edge-server-tls   Secret: ca.crt, edge-server-<j>.crt/.key
#     tff-coordinator-tls   Secret: ca.crt, coordinator.crt, coordinator.key
#     tff-edge-ca           ConfigMap: ca.crt, ca.crl (public; mounted by
#                           edge pods and edge servers, refreshed on change)
# A StatefulSet cannot mount a different Secret per replica, so the edge
# servers' Secret holds one entry per server and each server's `identity`
# initContainer copies out only its own (k8s/base/edge-server.yaml).
#
# --apply: `kubectl apply --server-side -f secrets.yaml` (server-side, so no
# last-applied annotation repeats the keys). Re-run it after
# `python -m workers.certs revoke` or `crl` to publish the new ca.crl.
# --pods is accepted and ignored (pods make their own keys).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
[[ -x $PYTHON ]] || PYTHON=python3
DIR=$REPO/k8s/.secrets
SERVERS=""
APPLY=0
NAMESPACE=""

for arg in "$@"; do
  case $arg in
    --pods=*) ;;  # Pods make their own keys (sign_csrs.sh signs them).
    --edge-servers=*) SERVERS=${arg#*=} ;;
    --dir=*) DIR=${arg#*=} ;;
    --apply) APPLY=1 ;;
    --namespace=*) NAMESPACE=${arg#*=} ;;
    -h|--help) sed -n '2,/^set /{/^#/p}' "$0"; exit 0 ;;
    *) echo "make_secrets.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done

die() { printf 'make_secrets.sh: error: %s\n' "$*" >&2; exit 1; }

if [[ -z $SERVERS ]]; then
  command -v kubectl >/dev/null ||
    die "kubectl not found: give --edge-servers=M"
  SERVERS=$(kubectl kustomize "$REPO/k8s/overlays/cluster" | "$PYTHON" -c '
import sys, yaml
print(next(d["spec"]["replicas"] for d in yaml.safe_load_all(sys.stdin)
           if d and d["kind"] == "StatefulSet"
           and d["metadata"]["name"] == "edge-server"))')
fi
[[ $SERVERS =~ ^[1-9][0-9]*$ ]] || die "--edge-servers must be a positive integer"

mkdir -p "$DIR"
chmod 700 "$DIR"
umask 077
certs=$DIR/certs
mkdir -p "$certs"
# A run of an older version left pod keys and SecAgg secrets here: gone.
if [[ -d $DIR/secagg ]] || compgen -G "$certs/edge-[0-9]*.key" > /dev/null; then
  echo "make_secrets.sh: removing edge pod keys and SecAgg secrets of an older version from $DIR (pods now make their own)" >&2
  rm -rf "$DIR/secagg"; rm -f "$certs"/edge-[0-9]*.key "$certs"/edge-[0-9]*.crt
fi

servers=(); for ((j = 0; j < SERVERS; j++)); do servers+=("edge-server-$j"); done
nodes=(coordinator "${servers[@]}")

# Certificates: a new CA the first time, then only nodes that lack one.
cd "$REPO"
if [[ -f $certs/ca.crt ]]; then
  missing=()
  for node in "${nodes[@]}"; do
    [[ -f $certs/$node.crt && -f $certs/$node.key ]] || missing+=("$node")
  done
  if ((${#missing[@]})); then
    [[ -f $certs/ca.key ]] ||
      die "$certs/ca.key is not there (kept offline?); put it back to issue ${missing[*]}"
    "$PYTHON" -m workers.certs --out_dir="$certs" --reuse_ca \
      --nodes="$(IFS=,; echo "${missing[*]}")"
  fi
else
  "$PYTHON" -m workers.certs --out_dir="$certs" --nodes="$(IFS=,; echo "${nodes[*]}")"
fi

# What each Secret (and the CA ConfigMap) holds, as files.
rm -rf "$DIR/files"
server=$DIR/files/tff-edge-server-tls coordinator=$DIR/files/tff-coordinator-tls
ca=$DIR/files/tff-edge-ca
mkdir -p "$server" "$coordinator" "$ca"
cp "$certs/ca.crt" "$server/"; cp "$certs/ca.crt" "$coordinator/"; cp "$certs/ca.crt" "$ca/"
[[ -f $certs/ca.crl ]] && cp "$certs/ca.crl" "$ca/"
for s in "${servers[@]}"; do cp "$certs/$s.crt" "$certs/$s.key" "$server/"; done
cp "$certs/coordinator.crt" "$certs/coordinator.key" "$coordinator/"

# The manifests (JSON documents are YAML).
"$PYTHON" - "$DIR/files" "$NAMESPACE" > "$DIR/secrets.yaml" <<'PY'
import base64, json, os, sys
root, namespace = sys.argv[1], sys.argv[2]
PUBLIC = {'tff-edge-ca'}  # A ConfigMap: certificates and CRLs are public.
for name in sorted(os.listdir(root)):
  data = {}
  for key in sorted(os.listdir(os.path.join(root, name))):
    with open(os.path.join(root, name, key), 'rb') as f:
      raw = f.read()
    data[key] = raw.decode() if name in PUBLIC else base64.b64encode(
        raw).decode()
  metadata = {'name': name, 'labels': {'app.kubernetes.io/name': 'tff-edge'}}
  if namespace:
    metadata['namespace'] = namespace
  print('---')
  if name in PUBLIC:
    print(json.dumps({'apiVersion': 'v1', 'kind': 'ConfigMap',
                      'metadata': metadata, 'data': data}, indent=2))
  else:
    print(json.dumps({'apiVersion': 'v1', 'kind': 'Secret', 'type': 'Opaque',
                      'metadata': metadata, 'data': data}, indent=2))
PY
chmod 600 "$DIR/secrets.yaml"
echo "make_secrets.sh: Secrets for $SERVERS edge servers and the coordinator, and the CA ConfigMap, in $DIR/secrets.yaml (no edge pod key: pods make their own; sign their CSRs with k8s/sign_csrs.sh) (CA key: $certs/ca.key; keep it offline)"

if [[ $APPLY == 1 ]]; then
  kubectl apply --server-side ${NAMESPACE:+--namespace="$NAMESPACE"} \
    -f "$DIR/secrets.yaml"
fi
