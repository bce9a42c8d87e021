#!/usr/bin/env bash
# Runs every test: installs what is missing, builds (or reuses) the control plane binaries,
# starts a private control plane, Redis, MariaDB and slapd, runs the Rust tests against them,
# and stops everything it started. Exits non-zero on any failure.
#
# Environment:
#   VISA_TEST_STATE_DIR  where the services keep their state (default /tmp/visa-k8s-provider-test)
#   VISA_K8S_CACHE       where the control plane binaries are cached (default ~/.cache/visa-k8s-provider)
#   VISA_TEST_CLUSTER_NAME  kwokctl cluster name (default visa-test)
#   VISA_TEST_REDIS_PORT, VISA_TEST_MARIADB_PORT, VISA_TEST_LDAP_PORT  service ports
#   CARGO_TEST_ARGS      extra arguments for cargo test, for example "lifecycle"
set -euo pipefail

PATH="$PATH:/usr/local/go/bin:$HOME/.cargo/bin:/usr/sbin:/sbin"
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# shellcheck source=scripts/test-services.sh
source scripts/test-services.sh

echo "== building the provider"
cargo build --workspace --bins --all-targets

echo "== running the tests"
# shellcheck disable=SC2086 # CARGO_TEST_ARGS is a list of words on purpose
cargo test --workspace --no-fail-fast -- ${CARGO_TEST_ARGS:-}
