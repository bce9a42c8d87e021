#!/usr/bin/env bash
# Runs a private MariaDB server for tests, owned by this script rather than by systemd.
#   mariadb.sh start   starts it unless it already runs and prints mysql://visa:PASSWORD@127.0.0.1:PORT/visa last
#   mariadb.sh stop    stops it, and the data folder and password stay for the next start
# Environment: VISA_STATE_DIR (default /tmp/visa-k8s-provider), VISA_MARIADB_PORT (default 3307).
# Data, configuration, socket, log, pid file and the password of user visa are in $VISA_STATE_DIR/mariadb.
# User visa owns database visa and may create and drop databases named visa_test_*.
set -euo pipefail

# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

port="${VISA_MARIADB_PORT:-3307}"
mariadb_dir="$state_dir/mariadb"
data_dir="$mariadb_dir/data"
config_file="$mariadb_dir/my.cnf"
socket_file="$mariadb_dir/mariadbd.sock"
pid_file="$mariadb_dir/mariadbd.pid"
log_file="$mariadb_dir/mariadbd.log"
password_file="$mariadb_dir/password"
database=visa
database_user=visa

[[ "$port" =~ ^[0-9]+$ ]] || fail "VISA_MARIADB_PORT must be a TCP port number, got '$port'"

# The data folder belongs to the user running this script, and mariadbd runs as that user.
# mariadbd runs as root only with user = root in its configuration, which write_config sets for root.
# NOTE: only runs as root have been tried.
server_user=$(id -un)

# Runs the mariadb client as the server's unix_socket administrator (the OS user that created the data folder).
admin_sql() {
  mariadb --no-defaults --socket="$socket_file" --user="$server_user" --batch --skip-column-names "$@"
}

server_accepts_connections() {
  admin_sql -e 'SELECT 1' >/dev/null 2>&1
}

write_config() {
  # --defaults-file makes mariadbd and mariadb-install-db ignore /etc/mysql.
  cat >"$config_file" <<CONF
[mariadbd]
user = $server_user
datadir = $data_dir
socket = $socket_file
pid-file = $pid_file
log-error = $log_file
port = $port
bind-address = 127.0.0.1
skip-name-resolve
character-set-server = utf8mb4
collation-server = utf8mb4_unicode_ci
innodb_buffer_pool_size = 64M
CONF
}

initialise_data_dir() {
  say "initialising the MariaDB data folder $data_dir"
  mkdir -p "$data_dir"
  # The root account (and the OS user running this, if not root) log in through unix_socket only.
  if ! mariadb-install-db --defaults-file="$config_file" --auth-root-authentication-method=socket \
    --skip-test-db >"$mariadb_dir/mariadb-install-db.log" 2>&1; then
    tail -n 20 "$mariadb_dir/mariadb-install-db.log" >&2
    rm -rf "$data_dir"
    fail "mariadb-install-db failed; see $mariadb_dir/mariadb-install-db.log"
  fi
}

ensure_password_file() {
  if [[ -s "$password_file" ]]; then
    return
  fi
  # 32 hex digits, so the password needs no escaping in SQL or in a URL.
  (umask 077 && od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$password_file")
}

create_database_and_user() {
  local password
  password=$(<"$password_file")
  # Underscores are escaped because _ matches any character in a database-level grant.
  admin_sql <<SQL || fail "creating database $database and user $database_user failed; see $log_file"
CREATE DATABASE IF NOT EXISTS \`$database\`;
CREATE USER IF NOT EXISTS '$database_user'@'127.0.0.1' IDENTIFIED BY '$password';
CREATE USER IF NOT EXISTS '$database_user'@'localhost' IDENTIFIED BY '$password';
ALTER USER '$database_user'@'127.0.0.1' IDENTIFIED BY '$password';
ALTER USER '$database_user'@'localhost' IDENTIFIED BY '$password';
GRANT ALL PRIVILEGES ON \`$database\`.* TO '$database_user'@'127.0.0.1', '$database_user'@'localhost';
GRANT ALL PRIVILEGES ON \`visa\\_test\\_%\`.* TO '$database_user'@'127.0.0.1', '$database_user'@'localhost';
SQL
}

print_url() {
  echo "mysql://$database_user:$(<"$password_file")@127.0.0.1:$port/$database"
}

start() {
  ensure_command mariadbd mariadb-server
  ensure_command mariadb-install-db mariadb-server
  ensure_command mariadb mariadb-client
  ensure_command ss iproute2

  mkdir -p "$mariadb_dir"
  ensure_password_file

  if running_pid "$pid_file" mariadbd >/dev/null && server_accepts_connections; then
    print_url
    return
  fi
  if port_is_listening "$port"; then
    fail "port $port is in use by another process, so MariaDB cannot start; stop that process or set VISA_MARIADB_PORT"
  fi

  write_config
  if [[ ! -d "$data_dir/mysql" ]]; then
    initialise_data_dir
  fi

  # setsid detaches the server from this shell's session, so it outlives the caller's terminal.
  setsid mariadbd --defaults-file="$config_file" </dev/null >>"$log_file" 2>&1 &
  if ! wait_until 60 server_accepts_connections; then
    tail -n 20 "$log_file" >&2 || true
    fail "MariaDB on 127.0.0.1:$port did not accept connections within 60 s of starting; see $log_file"
  fi
  create_database_and_user
  say "MariaDB $(admin_sql -e 'SELECT VERSION()') is running on 127.0.0.1:$port (pid $(<"$pid_file"))"
  print_url
}

stop() {
  stop_process "$pid_file" mariadbd 60
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) fail "usage: $0 start|stop" ;;
esac
