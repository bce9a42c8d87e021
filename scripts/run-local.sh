#!/usr/bin/env bash
# Sets up and starts the whole provider on this machine: the local control plane, Redis, an
# embedded SQLite database, the API and one worker. Safe to run again: what runs is kept.
# Stop everything with scripts/stop-local.sh.
#
# Environment:
#   VISA_STATE_DIR  where everything keeps its state and logs (default /tmp/visa-k8s-provider)
#   VISA_API_PORT   port of the API on 127.0.0.1 (default 8080)
set -euo pipefail

PATH="$PATH:/usr/local/go/bin:$HOME/.cargo/bin:/usr/sbin:/sbin"
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

export VISA_STATE_DIR="${VISA_STATE_DIR:-/tmp/visa-k8s-provider}"
api_port="${VISA_API_PORT:-8080}"
run_dir="$VISA_STATE_DIR/provider"
mkdir -p "$run_dir"

bash scripts/install-prerequisites.sh

echo "== building the control plane binaries (cached after the first run)"
bash tests/cluster/build-binaries.sh >/dev/null

echo "== starting the control plane and Redis"
kubeconfig=$(bash tests/cluster/start.sh | tail -n 1)
redis_url=$(bash tests/services/redis.sh start | tail -n 1)

echo "== building the provider"
cargo build --bins

token_file="$run_dir/token"
if [[ ! -s "$token_file" ]]; then
  (umask 077 && openssl rand -hex 32 >"$token_file")
fi
operator_password_file="$run_dir/operator-password"
if [[ ! -s "$operator_password_file" ]]; then
  (umask 077 && openssl rand -hex 16 >"$operator_password_file")
fi

export KUBECONFIG="$kubeconfig"
export VISA_DATABASE_URL="sqlite://$run_dir/provider.db?mode=rwc"
export VISA_REDIS_URL="$redis_url"
export VISA_CATALOGUE="${VISA_CATALOGUE:-$root/config/catalogue.example.yaml}"
export VISA_NAMESPACE=visa-instances
export VISA_STORAGE_CLASS=visa-local

# Starts a binary in the background unless its pid file names a live process of that binary.
start_process() {
  local name=$1
  shift
  local pid_file="$run_dir/$name.pid"
  if [[ -s "$pid_file" ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
    echo "$name is already running (pid $(cat "$pid_file"))"
    return
  fi
  nohup "$@" >"$run_dir/$name.log" 2>&1 &
  echo $! >"$pid_file"
}

start_process visa-api target/debug/visa-api --listen "127.0.0.1:$api_port" --token-file "$token_file" \
  --operator-password-file "$operator_password_file"
start_process visa-worker target/debug/visa-worker

echo "== waiting for the API to be ready"
for _ in $(seq 1 120); do
  if curl -fsS "http://127.0.0.1:$api_port/readyz" >/dev/null 2>&1; then
    cat <<MESSAGE

The provider is running.
  API URL:     http://127.0.0.1:$api_port/api  (VISA_CLOUD_WEB_PROVIDER_URL)
  Token file:  $token_file  (VISA_CLOUD_WEB_PROVIDER_AUTH_TOKEN)
  Operators:   http://127.0.0.1:$api_port/operator/instances and /operator/jobs/, user
               operator, password in $operator_password_file; metrics at /metrics
  Kubeconfig:  $kubeconfig
  Logs:        $run_dir/visa-api.log and $run_dir/visa-worker.log

Create an instance from the example request:
  curl -sS -H "X-Auth-Token: \$(cat $token_file)" -H 'Content-Type: application/json' \\
    --data @tests/fixtures/create-instance.request.json http://127.0.0.1:$api_port/api/instances
MESSAGE
    exit 0
  fi
  sleep 0.5
done
echo "error: the API did not become ready in 60 s; read $run_dir/visa-api.log" >&2
exit 1
