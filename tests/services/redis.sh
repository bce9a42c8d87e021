#!/usr/bin/env bash
# Runs a private Redis server for tests, owned by this script rather than by systemd.
#   redis.sh start   starts it unless it already runs and prints redis://127.0.0.1:PORT/ last
#   redis.sh stop    stops it, and the data folder stays for the next start
# Environment: VISA_STATE_DIR (default /tmp/visa-k8s-provider), VISA_REDIS_PORT (default 6390).
# Data, configuration, log and pid file are in $VISA_STATE_DIR/redis.
set -euo pipefail

# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

port="${VISA_REDIS_PORT:-6390}"
redis_dir="$state_dir/redis"
pid_file="$redis_dir/redis-server.pid"
config_file="$redis_dir/redis.conf"
log_file="$redis_dir/redis-server.log"
url="redis://127.0.0.1:$port/"

[[ "$port" =~ ^[0-9]+$ ]] || fail "VISA_REDIS_PORT must be a TCP port number, got '$port'"

redis_replies_to_ping() {
  [[ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" == PONG ]]
}

start() {
  ensure_command redis-server redis-server
  ensure_command redis-cli redis-tools
  ensure_command ss iproute2

  if running_pid "$pid_file" redis-server >/dev/null && redis_replies_to_ping; then
    echo "$url"
    return
  fi
  if port_is_listening "$port"; then
    fail "port $port is in use by another process, so Redis cannot start; stop that process or set VISA_REDIS_PORT"
  fi

  mkdir -p "$redis_dir"
  # Snapshots and the append-only file are off because tests need no data across restarts.
  cat >"$config_file" <<CONF
bind 127.0.0.1
port $port
protected-mode yes
daemonize yes
pidfile $pid_file
logfile $log_file
dir $redis_dir
save ""
appendonly no
CONF
  redis-server "$config_file" >&2 || fail "redis-server failed to start; see $log_file"
  if ! wait_until 30 redis_replies_to_ping; then
    tail -n 20 "$log_file" >&2 || true
    fail "Redis on 127.0.0.1:$port did not reply to PING within 30 s of starting; see $log_file"
  fi
  say "Redis $(redis-server --version | awk '{print $3}') is running on 127.0.0.1:$port (pid $(<"$pid_file"))"
  echo "$url"
}

stop() {
  stop_process "$pid_file" redis-server 30
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) fail "usage: $0 start|stop" ;;
esac
