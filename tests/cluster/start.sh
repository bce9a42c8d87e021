#!/usr/bin/env bash
# Starts a local Kubernetes control plane with kwokctl (binary runtime, RBAC on, loopback only),
# then adds KWOK nodes, the visa-local StorageClass with static volumes and the visa-instances
# namespace. Reuses a healthy cluster and recreates a broken one.
# Prints the path of the admin kubeconfig on its last line.
#
# Environment:
#   VISA_STATE_DIR     state folder (default /tmp/visa-k8s-provider)
#   VISA_CLUSTER_NAME  kwokctl cluster name (default visa)
#   VISA_NODE_COUNT    KWOK nodes kwok-node-0..N-1 (default 2)
#   VISA_NODE_CPUS     allocatable cores of each node (default 32)
#   VISA_NODE_MEMORY   allocatable memory of each node (default 256Gi)
#   VISA_PV_COUNT      PersistentVolumes of class visa-local (default 60)
set -euo pipefail

# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

node_count="${VISA_NODE_COUNT:-2}"
node_cpus="${VISA_NODE_CPUS:-32}"
node_memory="${VISA_NODE_MEMORY:-256Gi}"
pv_count="${VISA_PV_COUNT:-60}"
instances_namespace=visa-instances
storage_class=visa-local
# Written after the nodes, volumes and namespace exist. kwokctl deletes it with the cluster folder.
setup_done_mark="$cluster_dir/visa-setup-done"
# kwokctl names each pid file and log file after the component.
cluster_components=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok-controller)

[[ "$node_count" =~ ^[1-9][0-9]*$ ]] || fail "VISA_NODE_COUNT must be a positive integer, got '$node_count'"
[[ "$node_cpus" =~ ^[1-9][0-9]*$ ]] || fail "VISA_NODE_CPUS must be a positive integer, got '$node_cpus'"
[[ "$node_memory" =~ ^[1-9][0-9]*(Mi|Gi|Ti)$ ]] || fail "VISA_NODE_MEMORY must be a size such as 256Gi, got '$node_memory'"
[[ "$pv_count" =~ ^[0-9]+$ ]] || fail "VISA_PV_COUNT must be a non-negative integer, got '$pv_count'"

kubectl_bin="$bin_dir/kubectl"

run_kubectl() {
  "$kubectl_bin" --kubeconfig "$kubeconfig_path" "$@"
}

ensure_binaries() {
  local binary missing=()
  for binary in etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok kwokctl; do
    [[ -x "$bin_dir/$binary" ]] || missing+=("$binary")
  done
  if [[ ${#missing[@]} -eq 0 && -f "$bin_dir/.complete" ]]; then
    return
  fi
  say "building the control plane binaries into $bin_dir (missing: ${missing[*]:-none}); this takes 20 to 40 minutes once"
  "$cluster_scripts_dir/build-binaries.sh" >/dev/null
  for binary in etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok kwokctl; do
    [[ -x "$bin_dir/$binary" ]] || fail "$bin_dir/$binary is missing after build-binaries.sh; delete $bin_dir and run tests/cluster/build-binaries.sh to see the build error"
  done
}

# Succeeds when every component process of the cluster runs and the API server is ready.
cluster_is_healthy() {
  local component pid_file pid argv0
  [[ -f "$cluster_dir/kwok.yaml" && -f "$kubeconfig_path" ]] || return 1
  for component in "${cluster_components[@]}"; do
    pid_file="$cluster_dir/pids/$component.pid"
    [[ -f "$pid_file" ]] || return 1
    pid=$(<"$pid_file")
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    # A pid file that survived a reboot can name an unrelated process, so argv[0] is compared too.
    argv0=""
    IFS= read -r -d '' argv0 <"/proc/$pid/cmdline" 2>/dev/null || true
    [[ "$argv0" == "$cluster_dir/bin/$component" ]] || return 1
  done
  run_kubectl --request-timeout=5s get --raw /readyz >/dev/null 2>&1
}

write_kwokctl_config() {
  mkdir -p "$KWOK_WORKDIR"
  # kwokctl reads $KWOK_WORKDIR/kwok.yaml on every command, so delete and get use the same options.
  # bindAddress 127.0.0.1 keeps etcd, the API server, the controllers and kwok off other interfaces.
  cat >"$KWOK_WORKDIR/kwok.yaml" <<EOF
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokctlConfiguration
options:
  runtime: binary
  bindAddress: 127.0.0.1
  kubeVersion: v$KUBERNETES_VERSION
  etcdVersion: $ETCD_VERSION
  securePort: true
  kubeAuthorization: true
  kubeAdmission: true
  cacheDir: $KWOK_WORKDIR/cache
  etcdBinary: $bin_dir/etcd
  kubeApiserverBinary: $bin_dir/kube-apiserver
  kubeControllerManagerBinary: $bin_dir/kube-controller-manager
  kubeSchedulerBinary: $bin_dir/kube-scheduler
  kubectlBinary: $bin_dir/kubectl
  kwokControllerBinary: $bin_dir/kwok
EOF
}

create_cluster() {
  write_kwokctl_config
  say "creating cluster $cluster_name in $cluster_dir (log: $kwokctl_log)"
  # An empty --kubeconfig keeps kwokctl from editing ~/.kube/config.
  if ! "$bin_dir/kwokctl" --name "$cluster_name" create cluster --kubeconfig= --timeout=5m --wait=0s \
    >"$kwokctl_log" 2>&1 9>&-; then
    tail -n 30 "$kwokctl_log" >&2
    fail "kwokctl create cluster failed; see $kwokctl_log and the component logs in $cluster_dir/logs"
  fi

  local admin_kubeconfig="$cluster_dir/kubeconfig.yaml"
  [[ -f "$admin_kubeconfig" ]] || fail "kwokctl did not write $admin_kubeconfig; see $kwokctl_log"
  # The copy embeds the certificates, so it does not depend on paths in the cluster folder.
  (umask 077 && "$kubectl_bin" --kubeconfig "$admin_kubeconfig" config view --raw --flatten \
    >"$kubeconfig_path.tmp")
  mv "$kubeconfig_path.tmp" "$kubeconfig_path"
}

wait_for_api_server() {
  local deadline=$((SECONDS + 120))
  until run_kubectl --request-timeout=5s get --raw /readyz >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      fail "kube-apiserver of cluster $cluster_name is not ready after 120 s; see $cluster_dir/logs/kube-apiserver.log"
    fi
    sleep 1
  done
}

# Fails if a cluster process listens on an address other than 127.0.0.1.
check_loopback_only() {
  if ! command -v ss >/dev/null 2>&1; then
    say "warning: ss not found (Debian package iproute2), so the listening addresses were not checked"
    return
  fi
  local pids pid line local_address exposed=()
  pids=$(list_cluster_pids)
  while IFS= read -r line; do
    for pid in $pids; do
      if [[ "$line" == *"pid=$pid,"* ]]; then
        local_address=$(awk '{print $4}' <<<"$line")
        [[ "$local_address" == 127.0.0.1:* ]] || exposed+=("$local_address (pid $pid)")
      fi
    done
  done < <(ss -Hltnp)
  if [[ ${#exposed[@]} -gt 0 ]]; then
    fail "cluster $cluster_name listens beyond 127.0.0.1 on ${exposed[*]}; run tests/cluster/stop.sh and check bindAddress in $KWOK_WORKDIR/kwok.yaml"
  fi
}

print_node_manifests() {
  local index name
  for ((index = 0; index < node_count; index++)); do
    name="kwok-node-$index"
    cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: $name
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    beta.kubernetes.io/arch: amd64
    beta.kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    kubernetes.io/hostname: $name
    kubernetes.io/os: linux
    kubernetes.io/role: agent
    node-role.kubernetes.io/agent: ""
    type: kwok
status:
  allocatable:
    cpu: "$node_cpus"
    ephemeral-storage: 1Ti
    memory: $node_memory
    pods: "110"
  capacity:
    cpu: "$node_cpus"
    ephemeral-storage: 1Ti
    memory: $node_memory
    pods: "110"
  nodeInfo:
    architecture: amd64
    operatingSystem: linux
EOF
  done
}

print_storage_manifests() {
  cat <<EOF
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: $storage_class
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Retain
EOF
  local index name
  for ((index = 0; index < pv_count; index++)); do
    name=$(printf '%s-pv-%03d' "$storage_class" "$index")
    cat <<EOF
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: $name
spec:
  storageClassName: $storage_class
  capacity:
    storage: 100Gi
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  volumeMode: Filesystem
  hostPath:
    path: $volumes_dir/$name
    type: DirectoryOrCreate
EOF
  done
}

set_up_cluster_objects() {
  local index manifest="$cluster_dir/visa-objects.yaml"

  say "adding $node_count KWOK nodes, StorageClass $storage_class with $pv_count volumes and namespace $instances_namespace"
  mkdir -p "$volumes_dir"
  {
    print_node_manifests
    print_storage_manifests
    printf -- '---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n' "$instances_namespace"
  } >"$manifest"
  run_kubectl apply -f "$manifest" >/dev/null ||
    fail "kubectl apply -f $manifest failed on cluster $cluster_name"

  for ((index = 0; index < node_count; index++)); do
    run_kubectl wait --for=condition=Ready "node/kwok-node-$index" --timeout=120s >/dev/null ||
      fail "node kwok-node-$index is not Ready after 120 s; see $cluster_dir/logs/kwok-controller.log"
  done

  # The ServiceAccount admission plugin rejects pods until the namespace has its default account.
  local deadline=$((SECONDS + 60))
  until run_kubectl -n "$instances_namespace" get serviceaccount default >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      fail "serviceaccount default in namespace $instances_namespace was not created within 60 s; see $cluster_dir/logs/kube-controller-manager.log"
    fi
    sleep 1
  done

  touch "$setup_done_mark"
}

lock_cluster
ensure_binaries

if cluster_is_healthy; then
  if [[ ! -f "$setup_done_mark" ]]; then
    set_up_cluster_objects
  fi
  echo "$kubeconfig_path"
  exit 0
fi

if [[ -e "$cluster_dir" || -n "$(list_cluster_pids)" ]]; then
  say "cluster $cluster_name in $cluster_dir is not healthy; recreating it"
  delete_cluster
fi

started=$SECONDS
create_cluster
wait_for_api_server
check_loopback_only
set_up_cluster_objects
check_loopback_only
say "cluster $cluster_name is ready after $((SECONDS - started)) s"
echo "$kubeconfig_path"
