#!/usr/bin/env bash
# Deletes the local cluster made by start.sh, checks that none of its processes is left running
# and removes its state (kwokctl cluster folder, volume folders, kubeconfig).
# Does nothing when no cluster exists. Uses VISA_STATE_DIR and VISA_CLUSTER_NAME like start.sh.
set -euo pipefail

# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

lock_cluster
delete_cluster

# Remove the shared kwokctl folder once no cluster is left in it.
if [[ -d "$KWOK_WORKDIR" ]] && [[ -z "$(ls -A "$KWOK_WORKDIR/clusters" 2>/dev/null)" ]]; then
  rm -rf "$KWOK_WORKDIR"
fi
rmdir "$state_dir/volumes" 2>/dev/null || true

say "cluster $cluster_name is stopped and its state is removed"
