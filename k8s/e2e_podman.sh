#!/usr/bin/env bash
# End to end on this machine: the local overlay under `podman kube play`.
#
#   k8s/e2e_podman.sh [--pods=10] [--edge-servers=2] [--train-config=FILE]
#                     [--image=localhost/tff-edge:latest] [--timeout=7200]
#                     [--out=DIR] [--keep]
#
# 1. Renders the podman overlay for --pods / --edge-servers with
#    k8s/render.py (the committed overlays/local is the 10/2 case) and, with
#    --train-config, that training config instead of k8s/base/train.yaml.
# 2. Makes the CA and the server side's certificates with
#    k8s/make_secrets.sh and puts each Secret's files into a podman volume of
#    the Secret's name (what the overlay mounts instead of Secrets); the CA's
#    ConfigMap goes to kube play with the training config. Edge pods make
#    their own keys: while kube play runs, a signer reads each pod's CSR
#    (podman exec), signs it with the CA (workers.certs sign) and puts the
#    certificate on the pod's volume, as k8s/sign_csrs.sh does on a cluster.
# 3. `podman kube play --network tff-edge-e2e --configmap ...`: the edge
#    pods, the edge servers and the coordinator, on one podman network whose
#    DNS resolves each pod by name (edge-3, edge-server-0).
# 4. Waits for the coordinator to finish training, prints the final
#    held-out accuracy from its summary.json, and copies the run
#    (metrics.jsonl, summary.json, TensorBoard events) and every container's
#    log to --out (default: a new folder in the current directory).
# 5. Tears everything down on exit, success or not (trap): pods, volumes,
#    the network. --keep leaves them for inspection.
#
# Needs root, kubectl (kustomize) and the image from k8s/build_image.sh;
# podman and its OCI runtime are detected or installed, and containers.conf
# checked, as k8s/build_image.sh does (k8s/podman_prereqs.sh).
# Example smoke test (2 pods, 1 edge server, 2 rounds of the 2NN):
#   printf 'data_args: {dataset: fashion_mnist, partition_method: homo}\n'\
#   'model_args: {model: 2nn}\ntrain_args: {client_num_in_total: 4,'\
#   ' client_num_per_round: 2, comm_round: 2}\n'\
#   'validation_args: {frequency_of_the_test: 0}\n' > /tmp/tiny.yaml
#   k8s/e2e_podman.sh --pods=2 --edge-servers=1 --train-config=/tmp/tiny.yaml
set -euo pipefail

K8S=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$K8S")
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
[[ -x $PYTHON ]] || PYTHON=python3
PODS=10
SERVERS=2
TRAIN_CONFIG=""
IMAGE=localhost/tff-edge:latest
TIMEOUT=7200
OUT=""
KEEP=0
NETWORK=tff-edge-e2e

for arg in "$@"; do
  case $arg in
    --pods=*) PODS=${arg#*=} ;;
    --edge-servers=*) SERVERS=${arg#*=} ;;
    --train-config=*) TRAIN_CONFIG=$(realpath "${arg#*=}") ;;
    --image=*) IMAGE=${arg#*=} ;;
    --timeout=*) TIMEOUT=${arg#*=} ;;
    --out=*) OUT=${arg#*=} ;;
    --keep) KEEP=1 ;;
    -h|--help) sed -n '2,/^set /{/^#/p}' "$0"; exit 0 ;;
    *) echo "e2e_podman.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done

log() { printf '[e2e_podman %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[e2e_podman] FAILED: %s\n' "$*" >&2; exit 1; }

command -v kubectl >/dev/null || die "kubectl is not installed (renders the overlay)"
[[ $(id -u) -eq 0 ]] || die "run as root (podman networks with DNS between pods)"
# shellcheck source=k8s/podman_prereqs.sh
source "$K8S/podman_prereqs.sh"
ensure_command podman podman
write_containers_conf "${CONTAINERS_CONF:-/etc/containers/containers.conf}" \
  "$(ensure_oci_runtime)"
podman image exists "$IMAGE" || die "no image $IMAGE: run k8s/build_image.sh"
OUT=${OUT:-$PWD/e2e-run-$(date +%Y%m%d-%H%M%S)}

WORK=$(mktemp -d /tmp/tff-edge-e2e.XXXXXX)
PLAY=$WORK/play.yaml
CONFIGMAP=$WORK/configmap.yaml
VOLUMES=()
PLAYED=0

teardown() {
  local status=$?
  set +e
  if [[ $PLAYED == 1 ]]; then
    mkdir -p "$OUT/logs"
    for container in $(podman ps -a --format '{{.Names}}' \
                       --filter label=app.kubernetes.io/name=tff-edge); do
      podman logs "$container" > "$OUT/logs/$container.log" 2>&1
    done
    log "container logs in $OUT/logs"
  fi
  if [[ $KEEP == 1 ]]; then
    log "--keep: left running; remove with: podman kube down $PLAY;" \
        "podman volume rm ${VOLUMES[*]}; podman network rm $NETWORK"
  else
    [[ $PLAYED == 1 ]] && podman kube down "$PLAY" > /dev/null 2>&1
    for volume in "${VOLUMES[@]}"; do
      podman volume rm -f "$volume" > /dev/null 2>&1
    done
    podman network rm -f "$NETWORK" > /dev/null 2>&1
    rm -rf "$WORK"
    log "torn down"
  fi
  exit $status
}
trap teardown EXIT
trap 'exit 130' INT TERM

# 1. The overlay, split into what `kube play` takes and its --configmap.
log "rendering the podman overlay: $PODS edge pods, $SERVERS edge servers"
render_args=(--pods="$PODS" --edge_servers="$SERVERS" --image="$IMAGE"
             --out_dir="$WORK/overlay")
[[ -n $TRAIN_CONFIG ]] && render_args+=(--train_config="$TRAIN_CONFIG")
"$PYTHON" "$K8S/render.py" "${render_args[@]}" > /dev/null
kubectl kustomize "$WORK/overlay" > "$WORK/all.yaml"
# Prints every named volume the pods use (claims and ConfigMap volumes,
# which podman 4.3 keeps after `kube down`), for the teardown.
mapfile -t VOLUMES < <("$PYTHON" - "$WORK/all.yaml" "$PLAY" "$CONFIGMAP" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
yaml.safe_dump_all([d for d in docs if d['kind'] != 'ConfigMap'],
                   open(sys.argv[2], 'w'), sort_keys=False)
yaml.safe_dump_all([d for d in docs if d['kind'] == 'ConfigMap'],
                   open(sys.argv[3], 'w'), sort_keys=False)
names = set()
for d in docs:
  if d['kind'] in ('PersistentVolumeClaim', 'ConfigMap'):
    names.add(d['metadata']['name'])
  if d['kind'] == 'Pod':
    for v in d['spec'].get('volumes', []):
      if 'persistentVolumeClaim' in v:
        names.add(v['persistentVolumeClaim']['claimName'])
print('\n'.join(sorted(names)))
PY
)

[[ -s $PLAY && ${#VOLUMES[@]} -gt 0 ]] || die "could not split $WORK/all.yaml"

# Leftovers of an earlier run would be reused silently: refuse them.
for volume in "${VOLUMES[@]}"; do
  if podman volume exists "$volume"; then
    die "podman volume $volume exists (an earlier run?): podman volume rm $volume"
  fi
done
if podman network exists "$NETWORK"; then
  die "podman network $NETWORK exists (an earlier run?): podman network rm -f $NETWORK"
fi

# 2. Secrets as podman volumes; the CA ConfigMap beside the training one.
log "the CA and server-side certificates (k8s/make_secrets.sh)"
PYTHON=$PYTHON "$K8S/make_secrets.sh" --dir="$WORK/secrets" \
  --edge-servers="$SERVERS" > "$WORK/make_secrets.log" 2>&1 ||
  die "make_secrets.sh: $(cat "$WORK/make_secrets.log")"
"$PYTHON" - "$WORK/secrets/secrets.yaml" >> "$CONFIGMAP" <<'PY'
import sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
  if d and d['kind'] == 'ConfigMap':
    print('---'); print(yaml.safe_dump(d, sort_keys=False), end='')
PY
for secret_dir in "$WORK"/secrets/files/*/; do
  secret=$(basename "$secret_dir")
  [[ $secret == tff-edge-ca ]] && continue  # A ConfigMap, above.
  podman volume create "$secret" > /dev/null
  mountpoint=$(podman volume inspect --format '{{.Mountpoint}}' "$secret")
  cp "$secret_dir"/* "$mountpoint/"
  chown -R 10001:10001 "$mountpoint"
  chmod 0500 "$mountpoint"; chmod 0400 "$mountpoint"/*
done

# The edge pods' signer: kube play runs each pod's init containers before
# the next pod, so it signs while kube play waits on the `identity` one.
sign_pods() {
  local i pod ctr
  for ((i = 0; i < PODS; i++)); do
    pod=edge-$i ctr=edge-$i-identity
    until podman exec "$ctr" test -s "/data/identity/$pod.csr" 2>/dev/null; do
      sleep 1
    done
    podman exec "$ctr" cat "/data/identity/$pod.csr" > "$WORK/$pod.csr"
    (cd "$REPO" && "$PYTHON" -m workers.certs sign \
       --ca_dir="$WORK/secrets/certs" --csr="$WORK/$pod.csr" --name="$pod" \
       --role=edge-pod --out="$WORK/$pod.crt" > /dev/null)
    podman exec -i "$ctr" sh -c \
      "cat > /data/identity/$pod.crt.new && mv /data/identity/$pod.crt.new /data/identity/$pod.crt" \
      < "$WORK/$pod.crt"
    log "signed $pod's CSR; its key never left it"
  done
}

# 3. Play.
podman network create "$NETWORK" > /dev/null
sign_pods > "$WORK/sign.log" 2>&1 &
SIGNER=$!
log "podman kube play ($(grep -c '^kind: Pod$' "$PLAY") pods on network $NETWORK)"
PLAYED=1
podman kube play --network "$NETWORK" --configmap "$CONFIGMAP" "$PLAY" \
  > "$WORK/play.log" 2>&1 || die "podman kube play: $(tail -20 "$WORK/play.log")"
wait "$SIGNER" || die "signing the pods' CSRs failed: $(cat "$WORK/sign.log")"

# 4. Wait for the coordinator.
coordinator=coordinator-coordinator
start=$(date +%s)
last_report=0
while true; do
  state=$(podman inspect --format '{{.State.Status}} {{.State.ExitCode}} {{.RestartCount}}' \
          "$coordinator" 2>/dev/null || echo "missing 0 0")
  read -r status code restarts <<< "$state"
  now=$(date +%s)
  if [[ $status == exited && $code == 0 ]]; then
    break
  fi
  if [[ $status == missing ]]; then
    die "the coordinator container is gone; see $OUT/logs"
  fi
  if (( restarts >= 3 )) || [[ $status == exited && $code != 0 ]]; then
    podman logs --tail 30 "$coordinator" >&2 || true
    die "the coordinator failed (status $status, exit code $code, $restarts restarts)"
  fi
  if (( now - start > TIMEOUT )); then
    podman logs --tail 30 "$coordinator" >&2 || true
    die "the coordinator did not finish within ${TIMEOUT}s"
  fi
  if (( now - last_report >= 60 )); then
    last_report=$now
    log "waiting for the coordinator ($status, $(( now - start ))s): $(podman logs --tail 1 "$coordinator" 2>&1 | tail -c 200)"
  fi
  sleep 5
done

# 5. The result.
runs=$(podman volume inspect --format '{{.Mountpoint}}' coordinator-runs)
summary=$(ls "$runs"/*/summary.json 2>/dev/null | head -1)
[[ -n $summary ]] || die "the coordinator exited 0 but wrote no summary.json"
mkdir -p "$OUT"
cp -r "$(dirname "$summary")" "$OUT/run"
accuracy=$("$PYTHON" -c '
import json, sys
final = json.load(open(sys.argv[1]))["final_eval"]
print("%.4f (loss %.4f)" % (final["accuracy"], final["loss"]))' "$summary")
log "training finished in $(( $(date +%s) - start ))s; run copied to $OUT/run"
echo "final accuracy: $accuracy"
