#!/usr/bin/env bash
# Scale benchmark (see benches/scale.rs): prints a table of figures and ratios.
# Env: BENCH_SIZES="10000,100000,300000" BENCH_APPLY=10000 BENCH_CONCURRENCY="8,16"
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/install-testbed.sh >/dev/null
command -v /usr/bin/time >/dev/null || apt-get install -y -q --no-install-recommends time
cargo build --release --quiet --bin matrix-ldap-sync
exec cargo bench --quiet --bench scale
