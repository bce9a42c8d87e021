#!/usr/bin/env bash
# Checks that the cluster from start.sh runs a StatefulSet the way the provider needs:
# volume binding, KWOK pod status, scale to zero, restart on a template change, PVC kept on delete,
# and a test-written ImagePullBackOff status that KWOK leaves alone.
# Starts the cluster if needed (start.sh is idempotent) and leaves it running.
# Removes its StatefulSet, PVC and the PV's claim afterwards, so the volume pool does not shrink.
set -euo pipefail

scripts_dir=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=common.sh
source "$scripts_dir/common.sh"

namespace=visa-instances
statefulset=visa-smoke
pod="$statefulset-0"
pvc="home-$pod"
passed=0
failed=0

KUBECONFIG=$("$scripts_dir/start.sh" | tail -n 1)
export KUBECONFIG
kubectl_bin="$bin_dir/kubectl"

run_kubectl() {
  "$kubectl_bin" "$@"
}

pod_field() {
  run_kubectl -n "$namespace" get pod "$pod" -o "jsonpath=$1" 2>/dev/null || true
}

check() {
  local description=$1
  shift
  if "$@"; then
    passed=$((passed + 1))
    say "ok: $description"
  else
    failed=$((failed + 1))
    say "FAILED: $description"
  fi
}

equals() {
  [[ "$1" == "$2" ]] || {
    say "  expected '$2', got '$1'"
    return 1
  }
}

# Runs a command every second until it succeeds or the timeout (seconds) passes.
eventually() {
  local timeout=$1
  shift
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 1
  done
}

pod_is_ready() {
  [[ "$(pod_field '{.status.conditions[?(@.type=="Ready")].status}')" == True ]]
}

pod_is_absent() {
  ! run_kubectl -n "$namespace" get pod "$pod" >/dev/null 2>&1
}

pod_is_ready_with_new_uid() {
  local old_uid=$1
  [[ "$(pod_field '{.metadata.uid}')" != "$old_uid" ]] && pod_is_ready
}

release_volume() {
  local volume
  volume=$(run_kubectl -n "$namespace" get pvc "$pvc" -o 'jsonpath={.spec.volumeName}' 2>/dev/null) || true
  run_kubectl -n "$namespace" delete statefulset "$statefulset" --ignore-not-found --wait=true >/dev/null
  run_kubectl -n "$namespace" delete pvc "$pvc" --ignore-not-found --wait=true >/dev/null
  # A Retain volume stays Released after its claim is deleted until its claimRef is removed.
  if [[ -n "$volume" ]]; then
    run_kubectl patch pv "$volume" --type=json -p '[{"op":"remove","path":"/spec/claimRef"}]' >/dev/null 2>&1 || true
  fi
}

release_volume

run_kubectl apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: $statefulset
  namespace: $namespace
spec:
  replicas: 1
  serviceName: $statefulset
  selector:
    matchLabels: {app: $statefulset}
  template:
    metadata:
      labels: {app: $statefulset}
    spec:
      containers:
      - name: desktop
        image: registry.invalid/visa/desktop:1
        volumeMounts: [{name: home, mountPath: /home}]
  volumeClaimTemplates:
  - metadata: {name: home}
    spec:
      storageClassName: visa-local
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Gi}}
EOF

check "pod $pod becomes Ready within 60 s" eventually 60 pod_is_ready
check "PVC $pvc is Bound" equals "$(run_kubectl -n "$namespace" get pvc "$pvc" -o 'jsonpath={.status.phase}')" Bound
check "pod is scheduled to a KWOK node" equals "$(pod_field '{.spec.nodeName}' | sed 's/[0-9]*$//')" kwok-node-
check "pod phase is Running" equals "$(pod_field '{.status.phase}')" Running
check "pod has a pod IP" test -n "$(pod_field '{.status.podIP}')"

# A test can write a status that KWOK's pod-ready stage does not match (phase stays Running).
pod_ip=$(pod_field '{.status.podIP}')
run_kubectl -n "$namespace" patch pod "$pod" --subresource=status --type=merge -p '{"status":{
  "containerStatuses":[{"name":"desktop","image":"registry.invalid/visa/desktop:1","imageID":"","ready":false,
    "restartCount":0,"started":false,"state":{"waiting":{"reason":"ImagePullBackOff","message":"Back-off pulling image"}}}],
  "conditions":[{"type":"Ready","status":"False","reason":"ContainersNotReady"},
    {"type":"ContainersReady","status":"False","reason":"ContainersNotReady"},
    {"type":"Initialized","status":"True"},{"type":"PodScheduled","status":"True"}]}}' >/dev/null
sleep 15
check "written ImagePullBackOff is kept after 15 s" \
  equals "$(pod_field '{.status.containerStatuses[0].state.waiting.reason}')" ImagePullBackOff
check "pod IP is kept with ImagePullBackOff" equals "$(pod_field '{.status.podIP}')" "$pod_ip"

run_kubectl -n "$namespace" scale statefulset "$statefulset" --replicas=0 >/dev/null
check "scale to 0 removes the pod within 60 s" eventually 60 pod_is_absent

run_kubectl -n "$namespace" scale statefulset "$statefulset" --replicas=1 >/dev/null
check "scale to 1 brings the pod back within 60 s" eventually 60 pod_is_ready
old_uid=$(pod_field '{.metadata.uid}')
run_kubectl -n "$namespace" patch statefulset "$statefulset" --type=merge \
  -p '{"spec":{"template":{"metadata":{"annotations":{"visa.test/restarted-at":"'"$(date +%s)"'"}}}}}' >/dev/null
check "template change recreates the pod (new uid) within 60 s" eventually 60 pod_is_ready_with_new_uid "$old_uid"

run_kubectl -n "$namespace" delete statefulset "$statefulset" --wait=true >/dev/null
check "deleting the StatefulSet removes the pod within 60 s" eventually 60 pod_is_absent
check "PVC stays Bound after the StatefulSet is deleted" \
  equals "$(run_kubectl -n "$namespace" get pvc "$pvc" -o 'jsonpath={.status.phase}' 2>&1)" Bound

release_volume

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
