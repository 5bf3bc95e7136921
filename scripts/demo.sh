#!/usr/bin/env bash
# The demo: installs what is missing (slapd from Debian, Synapse from PyPI into .testbed/venv),
# starts a local directory with 36 sample agents and a local Synapse on loopback ports, and
# runs `check`, `plan`, `sync`, a directory change, `plan` and `sync` again.
# Pass --keep to leave the servers running afterwards (Ctrl-C stops them).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/install-testbed.sh >/dev/null
cargo build --quiet --bin matrix-ldap-sync --example demo
exec target/debug/examples/demo "$@"
