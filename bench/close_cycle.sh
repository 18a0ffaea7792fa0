#!/usr/bin/env bash
# tokio-postgres' cycle per `client.query(&str)` (prepare, run, Close + Sync) through standalone
# poolers side by side, over TLS, transaction mode, pool of 20 (bench/close_cycle.py): cycles per
# second and pooler CPU µs per cycle, ROUNDS rounds.
#
#   POOLERS="before=/path/to/standalone after=target/release/examples/standalone" bench/close_cycle.sh
#   PGBOUNCERS="pgbouncer-1.25.1=target/peers/pgbouncer-1.25.1/pgbouncer" bench/close_cycle.sh
#
# PGBOUNCERS: PgBouncer builds measured beside the standalone poolers, with the same pool
# (`start_bouncer`; prepared statements on, their default since 1.22).
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
# PgBouncer runs as nobody (`start_bouncer`) and reads the certificate too.
[ "$(id -u)" = 0 ] && chown -R 65534:65534 "$work/tls"
PG_PORT=$(free_port)
PG_HOST=127.0.0.1
start_pg "$work/pg" "$PG_PORT" "$PASSWORD"

declare -A port pid
names=()
for spec in $POOLERS; do
    name=${spec%%=*}
    names+=("$name")
    port[$name]=$(free_port)
    PGBAY_POOLER_PASSWORD="$PASSWORD" "${spec#*=}" --listen "127.0.0.1:${port[$name]}" \
        --backend-host 127.0.0.1 --backend-port "$PG_PORT" --user bench --pool bench --database postgres \
        --mode transaction --size 20 --tls-cert "$work/tls/server.crt" --tls-key "$work/tls/server.key" \
        > "$work/$name.log" 2>&1 &
    pids+=($!)
    pid[$name]=$!
done
for spec in ${PGBOUNCERS:-}; do
    name=${spec%%=*}
    names+=("$name")
    start_bouncer "$name" "${spec#*=}" tls
    port[$name]=$BOUNCER_PORT
    pid[$name]=$BOUNCER_PID
done
for name in "${names[@]}"; do
    for _ in $(seq 100); do
        pg_isready -q -h 127.0.0.1 -p "${port[$name]}" && break
        sleep 0.1
    done
done

for round in $(seq "$ROUNDS"); do
    for name in "${names[@]}"; do
        echo "round $round, $name: $(CLOSE_CYCLE_URI="postgresql://bench:$PASSWORD@127.0.0.1:${port[$name]}/bench" \
            "$PYTHON" bench/close_cycle.py "$PROCS" "$SECS" "${pid[$name]}")"
    done
done
