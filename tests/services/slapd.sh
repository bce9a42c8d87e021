#!/usr/bin/env bash
# Runs a private OpenLDAP server (slapd) for tests, owned by this script rather than by systemd.
#   slapd.sh start   starts it unless it already runs and prints ldap://127.0.0.1:PORT last
#   slapd.sh stop    stops it, and the directory data and password stay for the next start
# Environment: VISA_STATE_DIR (default /tmp/visa-k8s-provider), VISA_LDAP_PORT (default 3389).
# With VISA_LDAP_TLS_CERT and VISA_LDAP_TLS_KEY (PEM files) slapd also offers StartTLS on that port,
# and with VISA_LDAP_TLS_PORT it listens for ldaps:// there too.
# Suffix dc=visa,dc=test with ou=people and ou=groups. The admin bind DN is cn=admin,dc=visa,dc=test,
# and its password is in $VISA_STATE_DIR/slapd/password. slapd.conf, data, log and pid file are there too.
set -euo pipefail

# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

port="${VISA_LDAP_PORT:-3389}"
slapd_dir="$state_dir/slapd"
data_dir="$slapd_dir/data"
config_file="$slapd_dir/slapd.conf"
pid_file="$slapd_dir/slapd.pid"
log_file="$slapd_dir/slapd.log"
password_file="$slapd_dir/password"
suffix="dc=visa,dc=test"
admin_dn="cn=admin,$suffix"
url="ldap://127.0.0.1:$port"
tls_cert="${VISA_LDAP_TLS_CERT:-}"
tls_key="${VISA_LDAP_TLS_KEY:-}"
tls_port="${VISA_LDAP_TLS_PORT:-}"

[[ "$port" =~ ^[0-9]+$ ]] || fail "VISA_LDAP_PORT must be a TCP port number, got '$port'"
[[ -z "$tls_port" || "$tls_port" =~ ^[0-9]+$ ]] || fail "VISA_LDAP_TLS_PORT must be a TCP port number, got '$tls_port'"
if [[ -n "$tls_cert" && -z "$tls_key" ]] || [[ -z "$tls_cert" && -n "$tls_key" ]]; then
  fail "set both VISA_LDAP_TLS_CERT and VISA_LDAP_TLS_KEY, or neither"
fi
if [[ -n "$tls_port" && -z "$tls_cert" ]]; then
  fail "VISA_LDAP_TLS_PORT needs VISA_LDAP_TLS_CERT and VISA_LDAP_TLS_KEY"
fi

admin_bind_succeeds() {
  ldapwhoami -x -H "$url" -D "$admin_dn" -y "$password_file" >/dev/null 2>&1
}

ensure_password_file() {
  if [[ -s "$password_file" ]]; then
    return
  fi
  # 32 hex digits. ldap tools read it with -y, which takes the whole file, so it has no newline.
  (umask 077 && od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$password_file")
}

write_config() {
  local password_hash
  password_hash=$(slappasswd -T "$password_file") || fail "slappasswd failed to hash $password_file"
  # TLS settings are global, so they go before the database section.
  local tls_settings=""
  if [[ -n "$tls_cert" ]]; then
    tls_settings="TLSCertificateFile $tls_cert
TLSCertificateKeyFile $tls_key"
  fi
  # The schema files and modules are the ones Debian's slapd package installs.
  (umask 077 && cat >"$config_file" <<CONF
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/nis.schema
include /etc/ldap/schema/inetorgperson.schema

pidfile $pid_file
argsfile $slapd_dir/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
$tls_settings

database mdb
maxsize 104857600
suffix "$suffix"
rootdn "$admin_dn"
rootpw $password_hash
directory $data_dir
index objectClass eq
index uid,cn,mail eq,sub
index memberUid,member eq
CONF
  )
}

add_base_entries() {
  if ldapsearch -x -H "$url" -D "$admin_dn" -y "$password_file" -b "$suffix" -s base -LLL dn >/dev/null 2>&1; then
    return
  fi
  ldapadd -x -H "$url" -D "$admin_dn" -y "$password_file" >/dev/null <<LDIF || fail "adding the base entries under $suffix failed"
dn: $suffix
objectClass: dcObject
objectClass: organization
dc: visa
o: VISA test directory

dn: ou=people,$suffix
objectClass: organizationalUnit
ou: people

dn: ou=groups,$suffix
objectClass: organizationalUnit
ou: groups
LDIF
}

start() {
  ensure_command slapd slapd
  ensure_command ldapadd ldap-utils
  ensure_command ss iproute2

  mkdir -p "$slapd_dir"
  ensure_password_file

  if running_pid "$pid_file" slapd >/dev/null && admin_bind_succeeds; then
    echo "$url"
    return
  fi
  if port_is_listening "$port"; then
    fail "port $port is in use by another process, so slapd cannot start; stop that process or set VISA_LDAP_PORT"
  fi
  local listeners="ldap://127.0.0.1:$port/"
  if [[ -n "$tls_port" ]]; then
    if port_is_listening "$tls_port"; then
      fail "port $tls_port is in use by another process, so slapd cannot start; stop that process or set VISA_LDAP_TLS_PORT"
    fi
    listeners="$listeners ldaps://127.0.0.1:$tls_port/"
  fi

  mkdir -p "$data_dir"
  write_config
  slaptest -u -f "$config_file" >>"$log_file" 2>&1 || fail "slaptest rejected $config_file; see $log_file"

  # With -d slapd stays in the foreground and writes its log to stderr instead of syslog.
  setsid slapd -d stats -f "$config_file" -h "$listeners" </dev/null >>"$log_file" 2>&1 &
  if ! wait_until 30 admin_bind_succeeds; then
    tail -n 20 "$log_file" >&2 || true
    fail "slapd on 127.0.0.1:$port did not accept the admin bind within 30 s of starting; see $log_file"
  fi
  add_base_entries
  say "slapd is running on 127.0.0.1:$port (pid $(<"$pid_file")), suffix $suffix, admin $admin_dn"
  echo "$url"
}

stop() {
  stop_process "$pid_file" slapd 30
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) fail "usage: $0 start|stop" ;;
esac
