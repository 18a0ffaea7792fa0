#!/usr/bin/env bash
# Side-by-side pooler benchmark, one run, one machine: PostgreSQL directly, PgBouncer (Debian's
# package) and pgbay's pooler (crates/pooler, run by its `standalone` example), all in transaction
# mode with a pool of 20 server connections in front of the same PostgreSQL 15 cluster.
#
#   bench/pooler.sh            # full run (about 5 minutes); DURATION=10 CLIENTS="50 500" to change
#
# Measures, per target: pgbench -S TPS (simple and -M prepared, 50 and 500 clients), the pooler's
# CPU time per transaction (from /proc/PID/stat), the RSS growth per idle client over 2,000 idle
# clients, and whether 10,000 concurrent clients on one pool all get served. Writes a markdown report
# to bench/results/pooler-<timestamp>.md and prints it.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

DURATION=${DURATION:-15}
CLIENTS=${CLIENTS:-"50 500"}
IDLE=${IDLE:-2000}
MANY=${MANY:-10000}
PYTHON=${PYTHON:-.venv/bin/python}
PASSWORD=bench-$RANDOM$RANDOM
export PGPASSWORD=$PASSWORD
ulimit -n 20000

command -v pgbouncer >/dev/null || { echo "needs Debian's pgbouncer: apt-get install -y pgbouncer" >&2; exit 1; }
[ -x "$PYTHON" ] || { echo "needs a Python with psycopg at $PYTHON (./scripts/test.sh creates .venv)" >&2; exit 1; }

cargo build --release -q -p pgbay-pooler --example standalone
POOLER_BIN=${CARGO_TARGET_DIR:-target}/release/examples/standalone

work=$(mktemp -d /tmp/pgbay-bench.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    stop_pg "$work/pg"
    rm -rf "$work"
}
trap cleanup EXIT

PG_PORT=$(free_port)
start_pg "$work/pg" "$PG_PORT" "$PASSWORD"
pgbench -h 127.0.0.1 -p "$PG_PORT" -U bench -i -s 10 -q postgres >/dev/null 2>&1

# PgBouncer: same pool size and mode; it refuses to run as root, so it runs as nobody.
BOUNCER_PORT=$(free_port)
mkdir -p "$work/bouncer"
printf '"bench" "%s"\n' "$PASSWORD" > "$work/bouncer/userlist.txt"
cat > "$work/bouncer/pgbouncer.ini" <<INI
[databases]
bench = host=127.0.0.1 port=$PG_PORT dbname=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $work/bouncer/userlist.txt
pool_mode = transaction
default_pool_size = 20
max_client_conn = 11000
max_db_connections = 20
logfile = $work/bouncer/pgbouncer.log
INI
[ "$(id -u)" = 0 ] && chown -R 65534:65534 "$work/bouncer"
as_unpriv pgbouncer "$work/bouncer/pgbouncer.ini" > "$work/bouncer/stderr.log" 2>&1 &
pids+=($!)

POOLER_PORT=$(free_port)
"$POOLER_BIN" --listen "127.0.0.1:$POOLER_PORT" --backend-host 127.0.0.1 --backend-port "$PG_PORT" \
    --user bench --password "$PASSWORD" --pool bench --database postgres --mode transaction \
    --size 20 --max-client-conn 11000 > "$work/pgbay.log" 2>&1 &
pids+=($!)
sleep 1

# The pid that does the pooling work (pgbouncer runs under setpriv, which execs it: same pid).
bouncer_pid=$(pgrep -f "pgbouncer $work/bouncer/pgbouncer.ini" | head -1)
pgbay_pid=$(pgrep -f "$POOLER_BIN --listen 127.0.0.1:$POOLER_PORT" | head -1)
# setpriv and the pooler run behind a backgrounded function: stop them by their own pids too.
pids+=("$bouncer_pid" "$pgbay_pid")
hz=$(getconf CLK_TCK)

report=bench/results/pooler-$(date -u +%Y%m%dT%H%M%SZ).md
mkdir -p bench/results
{
    echo "# Pooler benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}'), $(pgbouncer --version | head -1), pgbench -S -T $DURATION -j 2, scale 10, pool size 20, transaction mode."
    echo
    echo "| target | protocol | clients | TPS | pooler CPU µs/txn | note |"
    echo "|---|---|---|---|---|---|"
} > "$report"

run_pgbench() { # target port pid mode clients
    local target=$1 port=$2 pid=$3 mode=$4 c=$5 db=$6
    local before after out tps txns cpu note=""
    before=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
    if out=$(pgbench -h 127.0.0.1 -p "$port" -U bench -n -S -M "$mode" -c "$c" -j 2 -T "$DURATION" "$db" 2>&1); then :; else note="pgbench failed: $(echo "$out" | grep -m1 -iE 'error|fatal' | cut -c1-120)"; fi
    after=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
    tps=$(echo "$out" | awk '/^tps/ {printf "%.0f", $3}')
    txns=$(echo "$out" | awk '/number of transactions actually processed/ {print $6}' | cut -d/ -f1)
    if [ -n "$pid" ] && [ -n "$txns" ] && [ "$txns" -gt 0 ]; then
        cpu=$(awk -v d=$((after - before)) -v hz="$hz" -v n="$txns" 'BEGIN {printf "%.1f", d / hz * 1e6 / n}')
    else
        cpu="-"
    fi
    echo "| $target | $mode | $c | ${tps:-0} | $cpu | $note |" >> "$report"
    echo "$target $mode c=$c tps=${tps:-0} cpu/txn=$cpu $note" >&2
}

for c in $CLIENTS; do
    for mode in simple prepared; do
        run_pgbench postgres "$PG_PORT" "" "$mode" "$c" postgres
        run_pgbench pgbouncer "$BOUNCER_PORT" "$bouncer_pid" "$mode" "$c" bench
        run_pgbench pgbay "$POOLER_PORT" "$pgbay_pid" "$mode" "$c" bench
    done
done

idle_clients() { # name port pid n
    local name=$1 port=$2 pid=$3 n=$4 rss0 rss1 line
    rss0=$(rss_kib "$pid")
    coproc IDLE_PROC { "$PYTHON" bench/idle_clients.py "host=127.0.0.1 port=$port user=bench dbname=bench sslmode=disable" "$n" 200; }
    read -r line <&"${IDLE_PROC[0]}"
    rss1=$(rss_kib "$pid")
    exec {IDLE_PROC[1]}>&-
    wait "$IDLE_PROC_PID" || true
    echo "$name $n clients: $line; RSS ${rss0} KiB -> ${rss1} KiB" >&2
    echo "| $name | $n | $line | $rss0 | $rss1 | $(awk -v a="$rss0" -v b="$rss1" -v n="$n" 'BEGIN {printf "%.2f", (b - a) / n}') |" >> "$report"
}

{
    echo
    echo "Idle clients (each logged in and ran SELECT 1, then idles); RSS of the pooler process:"
    echo
    echo "| target | clients | result | RSS before KiB | RSS with clients KiB | KiB per client |"
    echo "|---|---|---|---|---|---|"
} >> "$report"
idle_clients pgbouncer "$BOUNCER_PORT" "$bouncer_pid" "$IDLE"
idle_clients pgbay "$POOLER_PORT" "$pgbay_pid" "$IDLE"
idle_clients pgbouncer "$BOUNCER_PORT" "$bouncer_pid" "$MANY"
idle_clients pgbay "$POOLER_PORT" "$pgbay_pid" "$MANY"

cat "$report"
