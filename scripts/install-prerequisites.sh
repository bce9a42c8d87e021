#!/usr/bin/env bash
# Installs the Debian packages the provider's local stack and tests need, when missing.
# Rust (cargo) and Go must already be installed: the packages of Debian 12 are too old for both.
set -euo pipefail

PATH="$PATH:/usr/local/go/bin:$HOME/.cargo/bin:/usr/sbin:/sbin"

for tool in cargo go; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "error: $tool not found: install Rust with rustup and Go 1.26 or newer, then run this again" >&2
    exit 1
  fi
done

missing=()
for pair in redis-server:redis-server mariadbd:mariadb-server slapd:slapd ldapsearch:ldap-utils \
  openssl:openssl curl:curl ss:iproute2 flock:util-linux chromium:chromium; do
  command_name=${pair%%:*}
  package=${pair#*:}
  command -v "$command_name" >/dev/null 2>&1 || missing+=("$package")
done

if [[ ${#missing[@]} -gt 0 ]]; then
  if [[ $EUID -ne 0 ]]; then
    echo "error: missing Debian packages: ${missing[*]}; install them with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "== installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
