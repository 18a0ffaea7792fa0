#!/usr/bin/env bash
# tokio-postgres' cycle per `client.query(&str)` (prepare, run, Close + Sync) through standalone
# poolers side by side, over TLS, transaction mode, pool of 20 (bench/close_cycle.py): cycles per
# second and pooler CPU µs per cycle, ROUNDS rounds.
#
#   POOLERS="before=/path/to/standalone after=target/release/examples/standalone" bench/close_cycle.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

PROCS=${PROCS:-8}
SECS=${SECS:-8}
ROUNDS=${ROUNDS:-3}
PYTHON=${PYTHON:-.venv/bin/python}
[ -n "${POOLERS:-}" ] || POOLERS="pgbay=$(standalone_bin)"
PASSWORD=bench-$RANDOM$RANDOM

bench_work pgbay-close-cycle

bench_cert "$work/tls"
PG_PORT=$(free_port)
start_pg "$work/pg" "$PG_PORT" "$PASSWORD"

declare -A port pid
for spec in $POOLERS; do
    name=${spec%%=*}
    port[$name]=$(free_port)
    PGBAY_POOLER_PASSWORD="$PASSWORD" "${spec#*=}" --listen "127.0.0.1:${port[$name]}" \
        --backend-host 127.0.0.1 --backend-port "$PG_PORT" --user bench --pool bench --database postgres \
        --mode transaction --size 20 --tls-cert "$work/tls/server.crt" --tls-key "$work/tls/server.key" \
        > "$work/$name.log" 2>&1 &
    pids+=($!)
    pid[$name]=$!
    for _ in $(seq 100); do
        pg_isready -q -h 127.0.0.1 -p "${port[$name]}" && break
        sleep 0.1
    done
done

for round in $(seq "$ROUNDS"); do
    for spec in $POOLERS; do
        name=${spec%%=*}
        echo "round $round, $name: $(CLOSE_CYCLE_URI="postgresql://bench:$PASSWORD@127.0.0.1:${port[$name]}/bench" \
            "$PYTHON" bench/close_cycle.py "$PROCS" "$SECS" "${pid[$name]}")"
    done
done
