#!/usr/bin/env bash
# Runs the benchmarks against the same private services as the tests, and stops them again.
# docs/benchmarks.md describes what each one measures and records results.
#
# Environment: as scripts/test.sh, plus VISA_BENCH_INSTANCES, VISA_BENCH_READS and
# VISA_BENCH_CONCURRENCY for the read burst.
set -euo pipefail

PATH="$PATH:/usr/local/go/bin:$HOME/.cargo/bin:/usr/sbin:/sbin"
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# shellcheck source=scripts/test-services.sh
source scripts/test-services.sh

echo "== building the provider"
cargo build --workspace --bins

echo "== running the read burst benchmark"
# The API and worker under test are the debug builds that the tests use; the numbers are an
# upper bound for a release build.
cargo bench -p visa-tests --bench read_burst --profile dev
