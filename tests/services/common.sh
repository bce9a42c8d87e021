# Helpers shared by the service scripts in this folder. Source this file instead of running it.
# shellcheck shell=bash

# shellcheck disable=SC2034 # used by the scripts that source this file
state_dir="${VISA_STATE_DIR:-/tmp/visa-k8s-provider}"
# mariadbd, mariadb-install-db and slapd live in sbin, which a non-login PATH may lack.
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

say() {
  echo "$*" >&2
}

fail() {
  echo "error: $*" >&2
  exit 1
}

apt_lists_updated=false

# Installs a Debian package when the command it provides is missing.
ensure_command() {
  local command_name=$1 package=$2
  if command -v "$command_name" >/dev/null 2>&1; then
    return
  fi
  if [[ $EUID -ne 0 ]]; then
    fail "$command_name not found; install it with: sudo apt-get install -y $package"
  fi
  say "$command_name not found; installing Debian package $package"
  if [[ $apt_lists_updated == false ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get update >&2 ||
      fail "apt-get update failed; fix the apt sources, then run this script again"
    apt_lists_updated=true
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y "$package" >&2 ||
    fail "apt-get install -y $package failed"
  command -v "$command_name" >/dev/null 2>&1 ||
    fail "$command_name is still missing after installing $package"
}

# Prints the pid stored in a pid file when that process runs and its name (/proc/PID/comm) matches.
running_pid() {
  local pid_file=$1 process_name=$2 pid comm
  [[ -f "$pid_file" ]] || return 1
  pid=$(<"$pid_file")
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  [[ "$comm" == "$process_name" ]] || return 1
  echo "$pid"
}

# Succeeds when something listens on TCP port $1 of 127.0.0.1 or of all addresses.
port_is_listening() {
  local port=$1
  ss -Hltn "( sport = :$port )" 2>/dev/null | grep -q .
}

# Runs a command every 0.5 s until it succeeds or the timeout (seconds) passes.
wait_until() {
  local timeout=$1
  shift
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

# Sends SIGTERM to the process in the pid file, then SIGKILL after the timeout (seconds).
stop_process() {
  local pid_file=$1 process_name=$2 timeout=$3 pid
  if ! pid=$(running_pid "$pid_file" "$process_name"); then
    rm -f "$pid_file"
    say "$process_name is not running"
    return
  fi
  kill -TERM "$pid" 2>/dev/null || true
  if ! wait_until "$timeout" test ! -e "/proc/$pid"; then
    say "$process_name (pid $pid) did not exit $timeout s after SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_until 5 test ! -e "/proc/$pid" || fail "$process_name (pid $pid) is still running after SIGKILL"
  fi
  rm -f "$pid_file"
  say "$process_name (pid $pid) stopped"
}
