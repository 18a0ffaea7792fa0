#!/usr/bin/env bash
# The whole pgbay test suite: Rust unit and integration tests, then the Python end-to-end suite
# (official `exoscale` client, psycopg, psql, pgbench) against a freshly built `pgbay` binary.
# Every PostgreSQL and pgbay server a test needs is started by that test and stopped by it.
set -euo pipefail
cd "$(dirname "$0")/.."

# A project-local venv, so that a fresh machine needs nothing by hand. It comes first: the pooler's
# Rust tests drive psycopg through it too (PGBAY_PYTHON).
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet --upgrade pip
fi
.venv/bin/pip install --quiet -r tests/requirements.txt
export PGBAY_PYTHON="${PGBAY_PYTHON:-$PWD/.venv/bin/python}"
# The node drivers of the driver matrix (tests/test_drivers.py), from package-lock.json.
if [ ! -d tests/drivers/node/node_modules ]; then
    (cd tests/drivers/node && npm ci --no-audit --no-fund --silent)
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --workspace --all-targets
cargo test --workspace

export PGBAY_BIN="${PGBAY_BIN:-$CARGO_TARGET_DIR/debug/pgbay}"
# pytest's own exit code is the suite's: 5 (no test collected) fails too.
.venv/bin/pytest -q tests "$@"
