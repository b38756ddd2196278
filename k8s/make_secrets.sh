#!/usr/bin/env bash
# Makes the deployment's Secrets: TLS certificates (python -m workers.certs)
# and per-pod SecAgg keys, for the replica counts of overlays/cluster.
#
#   k8s/make_secrets.sh [--pods=N] [--edge-servers=M] [--dir=k8s/.secrets]
#                       [--apply] [--namespace=NS]
#
# --pods / --edge-servers default to the counts in the rendered
# k8s/overlays/cluster (kubectl needed then), so after scaling run it again:
# it keeps the CA, the existing certificates and SecAgg keys, and issues only
# the new nodes (workers.certs --reuse_ca).
#
# Writes, under --dir (default k8s/.secrets, git-ignored; 0700):
#   certs/              workers.certs output: ca.crt, <node>.crt, <node>.key,
#                       and ca.key, which no Secret contains: move it offline
#                       and bring it back only to issue more nodes
#   secagg/edge-<i>     32 random bytes: edge pod i's SecAgg secret
#   files/<secret>/     exactly the files each Secret holds (e2e_podman.sh
#                       copies these into podman volumes)
#   secrets.yaml        the four Secrets, 0600:
#     tff-edge-tls          ca.crt, edge-<i>.crt, edge-<i>.key (every pod)
#     tff-edge-secagg       edge-<i> (every pod's SecAgg secret)
#     tff-edge-server-tls   ca.crt, edge-server-<j>.crt/.key
#     tff-coordinator-tls   ca.crt, coordinator.crt, coordinator.key
# A StatefulSet cannot mount a different Secret per replica, so each tier's
# Secret holds one entry per node and each pod's `identity` initContainer
# copies out only its own (k8s/base/edge.yaml); the serving containers never
# mount these Secrets.
#
# --apply: `kubectl apply --server-side -f secrets.yaml` (server-side, so no
# last-applied annotation repeats the keys).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
[[ -x $PYTHON ]] || PYTHON=python3
DIR=$REPO/k8s/.secrets
PODS=""
SERVERS=""
APPLY=0
NAMESPACE=""

for arg in "$@"; do
  case $arg in
    --pods=*) PODS=${arg#*=} ;;
    --edge-servers=*) SERVERS=${arg#*=} ;;
    --dir=*) DIR=${arg#*=} ;;
    --apply) APPLY=1 ;;
    --namespace=*) NAMESPACE=${arg#*=} ;;
    -h|--help) sed -n '2,/^set /{/^#/p}' "$0"; exit 0 ;;
    *) echo "make_secrets.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done

die() { printf 'make_secrets.sh: error: %s\n' "$*" >&2; exit 1; }

if [[ -z $PODS || -z $SERVERS ]]; then
  command -v kubectl >/dev/null ||
    die "kubectl not found: give --pods=N --edge-servers=M"
  read -r rendered_pods rendered_servers < <(
    kubectl kustomize "$REPO/k8s/overlays/cluster" | "$PYTHON" -c '
import sys, yaml
counts = {d["metadata"]["name"]: d["spec"]["replicas"]
          for d in yaml.safe_load_all(sys.stdin)
          if d and d["kind"] == "StatefulSet"}
print(counts["edge"], counts["edge-server"])')
  PODS=${PODS:-$rendered_pods}
  SERVERS=${SERVERS:-$rendered_servers}
fi
[[ $PODS =~ ^[1-9][0-9]*$ && $SERVERS =~ ^[1-9][0-9]*$ ]] ||
  die "--pods and --edge-servers must be positive integers"

mkdir -p "$DIR"
chmod 700 "$DIR"
umask 077
certs=$DIR/certs
mkdir -p "$certs" "$DIR/secagg"

pods=(); for ((i = 0; i < PODS; i++)); do pods+=("edge-$i"); done
servers=(); for ((j = 0; j < SERVERS; j++)); do servers+=("edge-server-$j"); done
nodes=(coordinator "${servers[@]}" "${pods[@]}")

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

# SecAgg secrets: kept once made (a new one changes the pod's public keys).
for pod in "${pods[@]}"; do
  [[ -s $DIR/secagg/$pod ]] || head -c 32 /dev/urandom > "$DIR/secagg/$pod"
done

# What each Secret holds, as files.
rm -rf "$DIR/files"
edge=$DIR/files/tff-edge-tls secagg=$DIR/files/tff-edge-secagg
server=$DIR/files/tff-edge-server-tls coordinator=$DIR/files/tff-coordinator-tls
mkdir -p "$edge" "$secagg" "$server" "$coordinator"
cp "$certs/ca.crt" "$edge/"; cp "$certs/ca.crt" "$server/"; cp "$certs/ca.crt" "$coordinator/"
for pod in "${pods[@]}"; do
  cp "$certs/$pod.crt" "$certs/$pod.key" "$edge/"
  cp "$DIR/secagg/$pod" "$secagg/$pod"
done
for s in "${servers[@]}"; do cp "$certs/$s.crt" "$certs/$s.key" "$server/"; done
cp "$certs/coordinator.crt" "$certs/coordinator.key" "$coordinator/"

# The manifests (JSON documents are YAML).
"$PYTHON" - "$DIR/files" "$NAMESPACE" > "$DIR/secrets.yaml" <<'PY'
import base64, json, os, sys
root, namespace = sys.argv[1], sys.argv[2]
for name in sorted(os.listdir(root)):
  data = {}
  for key in sorted(os.listdir(os.path.join(root, name))):
    with open(os.path.join(root, name, key), 'rb') as f:
      data[key] = base64.b64encode(f.read()).decode()
  metadata = {'name': name, 'labels': {'app.kubernetes.io/name': 'tff-edge'}}
  if namespace:
    metadata['namespace'] = namespace
  print('---')
  print(json.dumps({'apiVersion': 'v1', 'kind': 'Secret', 'type': 'Opaque',
                    'metadata': metadata, 'data': data}, indent=2))
PY
chmod 600 "$DIR/secrets.yaml"
echo "make_secrets.sh: Secrets for $PODS edge pods, $SERVERS edge servers and the coordinator in $DIR/secrets.yaml (CA key: $certs/ca.key; keep it offline)"

if [[ $APPLY == 1 ]]; then
  kubectl apply --server-side ${NAMESPACE:+--namespace="$NAMESPACE"} \
    -f "$DIR/secrets.yaml"
fi
