#!/usr/bin/env bash
# Sets up and starts the whole provider on this machine: the local control plane, Redis, a
# private slapd with sample investigations, an embedded SQLite database, the API and one worker
# that syncs the investigations from slapd every minute. Safe to run again: what runs is kept.
# Stop everything with scripts/stop-local.sh.
#
# Environment:
#   VISA_STATE_DIR     where everything keeps its state and logs (default /tmp/visa-k8s-provider)
#   VISA_API_PORT      port of the API on 127.0.0.1 (default 8080)
#   VISA_CLUSTER_NAME  kwokctl cluster name (default visa)
#   VISA_REDIS_PORT    port of Redis on 127.0.0.1 (default 6390)
#   VISA_LDAP_PORT     port of slapd on 127.0.0.1 (default 3389)
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

echo "== starting the control plane, Redis and slapd"
kubeconfig=$(bash tests/cluster/start.sh | tail -n 1)
redis_url=$(bash tests/services/redis.sh start | tail -n 1)
ldap_url=$(bash tests/services/slapd.sh start | tail -n 1)

# slapd.sh makes the suffix dc=visa,dc=test and keeps the admin password in this file.
ldap_bind_dn="cn=admin,dc=visa,dc=test"
ldap_password_file="$VISA_STATE_DIR/slapd/password"
ldap_base_dn="ou=investigations,dc=visa,dc=test"
if ! ldapsearch -x -H "$ldap_url" -D "$ldap_bind_dn" -y "$ldap_password_file" -b "$ldap_base_dn" \
  -s base -LLL dn >/dev/null 2>&1; then
  echo "== loading the sample investigations into $ldap_base_dn"
  ldapadd -x -H "$ldap_url" -D "$ldap_bind_dn" -y "$ldap_password_file" \
    -f config/investigations.example.ldif >/dev/null
fi

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
# The worker syncs investigations from the sample directory, and instances get the data paths
# of their proposals as NFS volumes. The NFS server only shapes the pod spec, because KWOK
# mounts nothing.
export VISA_LDAP_URL="$ldap_url"
export VISA_LDAP_BASE_DN="$ldap_base_dn"
export VISA_LDAP_FILTER="(objectClass=posixGroup)"
export VISA_LDAP_IDENTIFIER_ATTRIBUTE=cn
export VISA_LDAP_PATH_ATTRIBUTE=description
export VISA_LDAP_GROUP_ID_ATTRIBUTE=gidNumber
export VISA_LDAP_BIND_DN="$ldap_bind_dn"
export VISA_LDAP_PASSWORD_FILE="$ldap_password_file"
export VISA_LDAP_SYNC_INTERVAL_SECONDS=60
export VISA_NFS_SERVER="${VISA_NFS_SERVER:-nfs.example.org}"

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
  LDAP:        $ldap_url, investigations under $ldap_base_dn, bind DN
               $ldap_bind_dn, password in $ldap_password_file; the worker
               syncs every $VISA_LDAP_SYNC_INTERVAL_SECONDS s, and instances mount data from $VISA_NFS_SERVER

Read the last LDAP sync, or run one now:
  VISA_DATABASE_URL='$VISA_DATABASE_URL' target/debug/visa-worker ldap-status
  VISA_DATABASE_URL='$VISA_DATABASE_URL' VISA_LDAP_URL=$ldap_url \\
    VISA_LDAP_BASE_DN=$ldap_base_dn VISA_LDAP_BIND_DN=$ldap_bind_dn \\
    VISA_LDAP_PASSWORD_FILE=$ldap_password_file target/debug/visa-worker ldap-sync

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
