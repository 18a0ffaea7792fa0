#!/usr/bin/env bash
# The whole pgbay test suite: Rust unit and integration tests, then the Python end-to-end suite
# (official `exoscale` client, psycopg, psql, pgbench) against a freshly built `pgbay` binary.
# Every PostgreSQL and pgbay server a test needs is started by that test and stopped by it.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --workspace --all-targets
cargo test --workspace

# The Python suite runs in a project-local venv so that a fresh machine needs nothing by hand.
if [ ! -x .venv/bin/pytest ]; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet --upgrade pip
fi
.venv/bin/pip install --quiet -r tests/requirements.txt

export PGBAY_BIN="${PGBAY_BIN:-$CARGO_TARGET_DIR/debug/pgbay}"
set +e
.venv/bin/pytest -q tests "$@"
rc=$?
set -e
# pytest's exit code 5 means it collected no test: that is a failure of the suite, not a pass.
exit $rc
