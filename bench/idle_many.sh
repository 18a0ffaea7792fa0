#!/usr/bin/env bash
# Many idle TLS clients on one pool of one pgbay pooler, each of which then runs a query again.
#
#   N=19500 bench/idle_many.sh
#
# Starts a PostgreSQL cluster and pgbay's pooler (the `standalone` example; POOLER_BIN to choose a
# build) with TLS required, a transaction pool of 20; opens N clients (psycopg, sslmode=require,
# 200 handshakes at a time), each logging in and running SELECT 1; measures the pooler's RSS with
# every client idle; then has every client run SELECT 1 again and counts the answers. The pooler
# holds one file descriptor per client, so N must stay under this shell's hard limit of open
# files (`ulimit -Hn`; the script raises the soft limit to it). Prints one markdown row.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

N=${N:-10000}
PYTHON=${PYTHON:-.venv/bin/python}
PASSWORD=bench-$RANDOM$RANDOM
export PGPASSWORD=$PASSWORD
hard=$(ulimit -Hn)
ulimit -n "$hard"
if [ "$hard" != unlimited ] && [ "$N" -gt $((hard - 200)) ]; then
    echo "N=$N clients need more open files than this shell's hard limit ($hard) leaves a pooler" >&2
    exit 1
fi
[ -x "$PYTHON" ] || { echo "needs a Python with psycopg at $PYTHON (./scripts/test.sh creates .venv)" >&2; exit 1; }
[ -n "${POOLER_BIN:-}" ] || POOLER_BIN=$(standalone_bin)

work=$(mktemp -d /tmp/pgbay-idle-many.XXXXXX)
chmod 755 "$work"
pooler_pid=""
cleanup() {
    [ -n "$pooler_pid" ] && kill "$pooler_pid" 2>/dev/null || true
    stop_pg "$work/pg"
    rm -rf "$work"
}
trap cleanup EXIT

PG_PORT=$(free_port)
start_pg "$work/pg" "$PG_PORT" "$PASSWORD"
as_unpriv "$PG_BIN/psql" -q -h 127.0.0.1 -p "$PG_PORT" -U bench -d postgres -c "CREATE DATABASE bench" >/dev/null
bench_cert "$work/tls"

port=$(free_port)
PGBAY_POOLER_PASSWORD="$PASSWORD" "$POOLER_BIN" --listen "127.0.0.1:$port" \
    --backend-host 127.0.0.1 --backend-port "$PG_PORT" --user bench --pool bench --database bench \
    --mode transaction --size 20 --max-client-conn $((N + 100)) \
    --tls-cert "$work/tls/server.crt" --tls-key "$work/tls/server.key" > "$work/pooler.log" 2>&1 &
pooler_pid=$!
for _ in $(seq 100); do
    pg_isready -q -h 127.0.0.1 -p "$port" && break
    kill -0 "$pooler_pid" || { cat "$work/pooler.log" >&2; exit 1; }
    sleep 0.1
done
dsn="host=127.0.0.1 port=$port user=bench dbname=bench sslmode=require"
# One client first, so that the baseline includes the pool's first server connection.
"$PYTHON" bench/idle_clients.py "$dsn" 1 1 < /dev/null > /dev/null
rss0=$(rss_kib "$pooler_pid")
start=$(date +%s.%N)
coproc IDLE { "$PYTHON" bench/idle_clients.py "$dsn" "$N" 200; }
read -r ready <&"${IDLE[0]}"
connected=$(date +%s.%N)
rss1=$(rss_kib "$pooler_pid")
echo query >&"${IDLE[1]}"
read -r queried <&"${IDLE[0]}"
done_at=$(date +%s.%N)
rss2=$(rss_kib "$pooler_pid")
exec {IDLE[1]}>&-
wait "$IDLE_PID" || true
echo "| pgbay | tls | $N | $ready | $queried | $rss0 | $rss1 | $rss2 | $(awk -v a="$rss0" -v b="$rss1" -v n="$N" 'BEGIN {printf "%.2f", (b - a) / n}') | $(awk -v a="$start" -v b="$connected" -v c="$done_at" 'BEGIN {printf "%.0f / %.0f", b - a, c - b}') |"
echo "(columns: target, TLS, clients, logins, queries after idling, RSS KiB before / idle / after the queries, KiB per idle client, seconds to log in all / to query all; pooler limit: $hard open files)" >&2
