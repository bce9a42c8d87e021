# Settings and helpers shared by start.sh and stop.sh. Source this file instead of running it.
# shellcheck shell=bash

cluster_scripts_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.sh
source "$cluster_scripts_dir/versions.sh"

state_dir="${VISA_STATE_DIR:-/tmp/visa-k8s-provider}"
cluster_name="${VISA_CLUSTER_NAME:-visa}"
bin_dir="$(cluster_bin_dir)"

# kwokctl keeps its configuration, clusters and download cache under KWOK_WORKDIR.
export KWOK_WORKDIR="$state_dir/kwok"
cluster_dir="$KWOK_WORKDIR/clusters/$cluster_name"
# kubectl, also when kwokctl runs it, keeps its discovery cache here instead of in ~/.kube/cache.
export KUBECACHEDIR="$KWOK_WORKDIR/kubectl-cache"
kwokctl_log="$KWOK_WORKDIR/kwokctl-$cluster_name.log"
kubeconfig_path="$state_dir/kubeconfig"
volumes_dir="$state_dir/volumes/$cluster_name"

say() {
  echo "$*" >&2
}

fail() {
  echo "error: $*" >&2
  exit 1
}

# Serialises start.sh and stop.sh runs for one cluster, so parallel test processes can call start.sh.
# Commands that leave processes running must close descriptor 9, or those processes keep the lock.
lock_cluster() {
  mkdir -p "$state_dir"
  exec 9>"$state_dir/cluster-$cluster_name.lock"
  # The wait covers a first start that builds the binaries.
  flock -w 3600 9 || fail "timed out after 3600 s waiting for the lock $state_dir/cluster-$cluster_name.lock held by another start.sh or stop.sh"
}

# Prints the ids of running processes whose program is in this cluster's bin folder.
# kwokctl links each component there and starts it by that path, so argv[0] starts with it.
list_cluster_pids() {
  local cmdline_file pid argv0
  for cmdline_file in /proc/[0-9]*/cmdline; do
    argv0=""
    IFS= read -r -d '' argv0 <"$cmdline_file" 2>/dev/null || true
    if [[ "$argv0" == "$cluster_dir/bin/"* ]]; then
      pid=${cmdline_file#/proc/}
      echo "${pid%/cmdline}"
    fi
  done
}

# Waits up to 10 s until none of the given pids is in /proc. kwokctl kills the components with
# SIGKILL and does not wait for them, so they stay zombies until their parent (often init) reaps them.
wait_for_pids_to_exit() {
  local pid deadline=$((SECONDS + 10)) remaining
  while true; do
    remaining=()
    for pid in "$@"; do
      [[ -e "/proc/$pid" ]] && remaining+=("$pid")
    done
    [[ ${#remaining[@]} -eq 0 ]] && return 0
    ((SECONDS < deadline)) || break
    sleep 0.2
  done
  say "warning: pids ${remaining[*]} still exist 10 s after they were killed (zombies not yet reaped by their parent)"
}

# Deletes the cluster with kwokctl, kills any of its processes left running and removes its state.
delete_cluster() {
  local started_pids pids
  started_pids=$(list_cluster_pids)

  if [[ -f "$cluster_dir/kwok.yaml" && -x "$bin_dir/kwokctl" ]]; then
    say "deleting cluster $cluster_name"
    if ! "$bin_dir/kwokctl" --name "$cluster_name" delete cluster >>"$kwokctl_log" 2>&1 9>&-; then
      say "kwokctl delete cluster failed (log: $kwokctl_log). Killing the cluster processes by pid."
    fi
  fi

  pids=$(list_cluster_pids)
  if [[ -n "$pids" ]]; then
    say "stopping leftover cluster processes: $(echo "$pids" | tr '\n' ' ')"
    # shellcheck disable=SC2086 # one pid per word
    kill -TERM $pids 2>/dev/null || true
    local deadline=$((SECONDS + 15))
    while [[ -n "$(list_cluster_pids)" && $SECONDS -lt $deadline ]]; do
      sleep 0.5
    done
    pids=$(list_cluster_pids)
    if [[ -n "$pids" ]]; then
      # shellcheck disable=SC2086 # one pid per word
      kill -KILL $pids 2>/dev/null || true
      sleep 1
    fi
  fi

  pids=$(list_cluster_pids)
  if [[ -n "$pids" ]]; then
    fail "cluster processes still running after SIGKILL: $(echo "$pids" | tr '\n' ' ')"
  fi
  if [[ -n "$started_pids" ]]; then
    # shellcheck disable=SC2086 # one pid per word
    wait_for_pids_to_exit $started_pids
  fi

  rm -rf "$cluster_dir" "$volumes_dir" "$kubeconfig_path" "$kwokctl_log"
}
