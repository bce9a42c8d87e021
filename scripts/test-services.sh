# Starts the control plane, Redis, MariaDB and slapd for the tests and the benchmarks, and
# exports the VISA_TEST_* variables that the test harness reads. Source this file from the
# repository's top folder; it stops the services when the sourcing script exits.
# shellcheck shell=bash

export VISA_STATE_DIR="${VISA_TEST_STATE_DIR:-/tmp/visa-k8s-provider-test}"
export VISA_CLUSTER_NAME="${VISA_TEST_CLUSTER_NAME:-visa-test}"
export VISA_REDIS_PORT="${VISA_TEST_REDIS_PORT:-6392}"
export VISA_MARIADB_PORT="${VISA_TEST_MARIADB_PORT:-3309}"
export VISA_LDAP_PORT="${VISA_TEST_LDAP_PORT:-3390}"
# Every test makes its own instances, so the nodes and the pool of volumes are sized for the
# whole suite rather than for one user.
export VISA_NODE_CPUS=512 VISA_NODE_MEMORY=4Ti VISA_PV_COUNT=200

stop_services() {
  bash tests/cluster/stop.sh >/dev/null 2>&1 || echo "warning: stopping the control plane failed" >&2
  bash tests/services/redis.sh stop >/dev/null 2>&1 || echo "warning: stopping Redis failed" >&2
  bash tests/services/mariadb.sh stop >/dev/null 2>&1 || echo "warning: stopping MariaDB failed" >&2
  bash tests/services/slapd.sh stop >/dev/null 2>&1 || echo "warning: stopping slapd failed" >&2
}
trap stop_services EXIT

bash scripts/install-prerequisites.sh

echo "== building the control plane binaries, kubectl and helm (cached after the first run)"
# The chart tests run helm and kubectl from this folder.
VISA_TEST_BIN_DIR=$(bash tests/cluster/build-binaries.sh | tail -n 1)
export VISA_TEST_BIN_DIR

echo "== starting the control plane, Redis, MariaDB and slapd in $VISA_STATE_DIR"
VISA_TEST_KUBECONFIG=$(bash tests/cluster/start.sh | tail -n 1)
VISA_TEST_REDIS_URL=$(bash tests/services/redis.sh start | tail -n 1)
# The URL contains the MariaDB password, so it is never printed.
VISA_TEST_MARIADB_URL=$(bash tests/services/mariadb.sh start | tail -n 1)
VISA_TEST_LDAP_URL=$(bash tests/services/slapd.sh start | tail -n 1)
# slapd.sh keeps the admin password (bind DN cn=admin,dc=visa,dc=test) in this file.
VISA_TEST_LDAP_PASSWORD_FILE="$VISA_STATE_DIR/slapd/password"
export VISA_TEST_KUBECONFIG VISA_TEST_REDIS_URL VISA_TEST_MARIADB_URL VISA_TEST_LDAP_URL VISA_TEST_LDAP_PASSWORD_FILE

