#!/usr/bin/env bash
# Runs every check and test of matrix-ldap-sync on this machine: installs what the tests need
# (slapd and ldap-utils from Debian, Synapse from PyPI into .testbed/venv), then formatting,
# lints, unit tests and integration tests against a real slapd and a real Synapse.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-testbed.sh
echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --all-targets --locked
