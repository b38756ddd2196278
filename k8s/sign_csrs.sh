#!/usr/bin/env bash
# The signer of the edge pods' certificates, with kubectl only (no
# controller): each pod made its key on its own volume and waits in its
# `identity` initContainer with a CSR (k8s/base/edge.yaml, workers.identity).
#
#   k8s/sign_csrs.sh --ca-dir=k8s/.secrets/certs [--approve] [--renew]
#                    [--namespace=NS] [--days=365]
#
# For every edge pod without a certificate (or, with --renew, every edge
# pod), it:
#   1. reads the pod's CSR (kubectl exec ... cat /data/identity/<pod>.csr:
#      public key, name and role only; the key stays on the pod);
#   2. creates a CertificateSigningRequest (certificates.k8s.io/v1, signer
#      tff-edge.io/node, k8s/csr_object.py) for the record and the approval;
#   3. stops there unless the CSR object is approved: approve each with
#      `kubectl certificate approve <name>` after checking it (or pass
#      --approve to approve what this run creates), then run this again;
#   4. signs approved ones with the offline CA (python -m workers.certs sign:
#      the name is the pod's and the role edge-pod, whatever the CSR asks),
#      writes the certificate into the object's status (as a signer does) and
#      delivers it to the pod (kubectl exec: /data/identity/<pod>.crt), where
#      the waiting initContainer checks it and lets the pod start; a running
#      pod picks a renewed certificate up without a restart (nginx reload).
# Revocation: python -m workers.certs revoke --ca_dir=... --cert=<pod>.crt,
# then k8s/make_secrets.sh --apply publishes ca.crl in the tff-edge-ca
# ConfigMap; pods and edge servers refuse the certificate from then on.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
[[ -x $PYTHON ]] || PYTHON=python3
CA_DIR=""
APPROVE=0
RENEW=0
NAMESPACE=""
DAYS=365

for arg in "$@"; do
  case $arg in
    --ca-dir=*) CA_DIR=${arg#*=} ;;
    --approve) APPROVE=1 ;;
    --renew) RENEW=1 ;;
    --namespace=*) NAMESPACE=${arg#*=} ;;
    --days=*) DAYS=${arg#*=} ;;
    -h|--help) sed -n '2,/^set /{/^#/p}' "$0"; exit 0 ;;
    *) echo "sign_csrs.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done

die() { printf 'sign_csrs.sh: error: %s\n' "$*" >&2; exit 1; }
log() { printf '[sign_csrs] %s\n' "$*" >&2; }

[[ -n $CA_DIR && -f $CA_DIR/ca.crt && -f $CA_DIR/ca.key ]] ||
  die "--ca-dir must hold ca.crt and ca.key (bring the offline CA key back for this)"
command -v kubectl > /dev/null || die "kubectl not found (./setup.sh installs one into .venv/bin)"
k() { kubectl ${NAMESPACE:+--namespace="$NAMESPACE"} "$@"; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

pods=$(k get pods -l app.kubernetes.io/component=edge \
         -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}')
[[ -n $pods ]] || die "no edge pods found"

for pod in $pods; do
  # The initContainer while the pod waits; the serving container later.
  container=edge-pod
  state=$(k get pod "$pod" -o jsonpath='{.status.initContainerStatuses[?(@.name=="identity")].state.running}')
  [[ -n $state ]] && container=identity
  if [[ $container == edge-pod && $RENEW == 0 ]]; then
    continue  # Started, so its certificate was accepted.
  fi
  k exec "$pod" -c "$container" -- cat "/data/identity/$pod.csr" > "$work/$pod.csr" ||
    { log "$pod: no CSR readable yet; skipped"; continue; }
  "$PYTHON" "$REPO/k8s/csr_object.py" request --csr="$work/$pod.csr" \
    --node="$pod" --role=edge-pod --days="$DAYS" > "$work/$pod.json"
  name=$("$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))["metadata"]["name"])' "$work/$pod.json")
  if ! kubectl get csr "$name" > /dev/null 2>&1; then
    kubectl create -f "$work/$pod.json" > /dev/null
    log "$pod: created CertificateSigningRequest $name"
    [[ $APPROVE == 1 ]] && kubectl certificate approve "$name" > /dev/null
  fi
  approved=$(kubectl get csr "$name" -o jsonpath='{.status.conditions[?(@.type=="Approved")].status}')
  if [[ $approved != True ]]; then
    log "$pod: $name waits for approval: kubectl certificate approve $name"
    continue
  fi
  cert=$(kubectl get csr "$name" -o jsonpath='{.status.certificate}')
  if [[ -z $cert ]]; then
    (cd "$REPO" && "$PYTHON" -m workers.certs sign --ca_dir="$CA_DIR" \
       --csr="$work/$pod.csr" --name="$pod" --role=edge-pod \
       --days="$DAYS" --out="$work/$pod.crt" > /dev/null)
    kubectl get csr "$name" -o json |
      "$PYTHON" "$REPO/k8s/csr_object.py" status --cert="$work/$pod.crt" |
      kubectl replace --raw \
        "/apis/certificates.k8s.io/v1/certificatesigningrequests/$name/status" -f - > /dev/null
    log "$pod: signed $name"
  else
    printf '%s' "$cert" | base64 -d > "$work/$pod.crt"
  fi
  k exec -i "$pod" -c "$container" -- sh -c \
    "cat > /data/identity/$pod.crt.new && mv /data/identity/$pod.crt.new /data/identity/$pod.crt" \
    < "$work/$pod.crt"
  log "$pod: certificate delivered"
done
