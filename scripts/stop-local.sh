#!/usr/bin/env bash
# Stops what scripts/run-local.sh started: the API, the worker, Redis, slapd and the control
# plane. slapd keeps its directory and password for the next start.
# Stopping the control plane removes every instance, so the SQLite database goes too; the
# token stays for the next start.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export VISA_STATE_DIR="${VISA_STATE_DIR:-/tmp/visa-k8s-provider}"
run_dir="$VISA_STATE_DIR/provider"

for name in visa-api visa-worker; do
  pid_file="$run_dir/$name.pid"
  if [[ -s "$pid_file" ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
    kill "$(cat "$pid_file")"
    echo "stopped $name"
  fi
  rm -f "$pid_file"
done

bash tests/services/redis.sh stop
bash tests/services/slapd.sh stop
bash tests/cluster/stop.sh
rm -f "$run_dir"/provider.db*
