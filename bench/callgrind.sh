#!/usr/bin/env bash
# Instructions per transaction of pgbay's pooler, counted by valgrind's callgrind: unlike wall-clock
# TPS on 2 shared cores, the count is repeatable whatever else the machine does, so it compares two
# builds of the pooler (before/after a change) in one run.
#
#   bench/callgrind.sh                       # the working tree's pooler
#   POOLERS="old=/path/to/standalone new=target/release/examples/standalone" bench/callgrind.sh
#
# For each pooler: pgbench -S (simple protocol, then -M prepared) with CLIENTS clients and TXNS
# transactions each through a transaction-mode pool of 20, the pooler running under callgrind with
# one worker thread. Logins are counted separately (a run with -t 1) and subtracted, and so is
# SCRAM's key derivation, so the figure is the steady-state cost of one transaction.
#
# TLS=1: clients connect with sslmode=require to a pooler given a self-signed ECDSA P-256
# certificate (made with openssl here); the TLS handshakes are in the login runs, subtracted with
# them, so the figure is one transaction's relay plus its record encryption.
#
# KEEP_CALLGRIND=DIR keeps the callgrind outputs (for callgrind_annotate) and the poolers' and
# pgbench's logs in DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

CLIENTS=${CLIENTS:-10}
TXNS=${TXNS:-500}
PASSWORD=bench-$RANDOM$RANDOM
export PGPASSWORD=$PASSWORD
TLS=${TLS:-}
# MODES="simple prepared set-heavy": pgbench -S in each protocol, and the SET-heavy script of
# bench/pooler.sh (SET search_path, then a select: two pooler transactions per pgbench one).
MODES=${MODES:-simple prepared}
command -v valgrind >/dev/null || { echo "needs valgrind" >&2; exit 1; }

[ -n "${POOLERS:-}" ] || POOLERS="pgbay=$(standalone_bin)"

work=$(mktemp -d /tmp/pgbay-callgrind.XXXXXX)
chmod 755 "$work"
vg_pid=""
cleanup() {
    [ -n "$vg_pid" ] && kill "$vg_pid" 2>/dev/null || true
    stop_pg "$work/pg"
    [ -n "${KEEP_CALLGRIND:-}" ] && cp "$work"/callgrind.out.* "$work"/*.log "$KEEP_CALLGRIND"/ 2>/dev/null; rm -rf "$work"
}
trap cleanup EXIT

tls_args=()
sslmode=disable
if [ -n "$TLS" ]; then
    bench_cert "$work/tls"
    tls_args=(--tls-cert "$work/tls/server.crt" --tls-key "$work/tls/server.key")
    sslmode=require
fi

PG_PORT=$(free_port)
start_pg "$work/pg" "$PG_PORT" "$PASSWORD"
pgbench -h 127.0.0.1 -p "$PG_PORT" -U bench -i -s 10 -q postgres >/dev/null 2>&1

# instructions NAME BIN MODE TXNS: total Ir of one pooler run serving CLIENTS x TXNS transactions.
instructions() {
    local name=$1 bin=$2 mode=$3 t=$4 port out
    port=$(free_port)
    out="$work/callgrind.out.$name.$mode.$t"
    # The password goes in the environment; only builds older than PGBAY_POOLER_PASSWORD (kept
    # for before/after comparisons) take it as a flag.
    local legacy=()
    ("$bin" --help 2>&1 || true) | grep -q PGBAY_POOLER_PASSWORD || legacy=(--password "$PASSWORD")
    PGBAY_POOLER_PASSWORD="$PASSWORD" valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$bin" --listen "127.0.0.1:$port" --backend-host 127.0.0.1 --backend-port "$PG_PORT" \
        --user bench "${legacy[@]}" --pool bench --database postgres --mode transaction --size 20 \
        --threads 1 "${tls_args[@]}" > "$work/$name.log" 2>&1 &
    local vg=$!
    vg_pid=$vg
    for _ in $(seq 1 100); do
        pg_isready -q -h 127.0.0.1 -p "$port" && break
        sleep 0.2
    done
    local workload
    read -r -a workload <<< "$(workload_args "$mode" "$work")"
    PGSSLMODE=$sslmode pgbench -h 127.0.0.1 -p "$port" -U bench -n "${workload[@]}" -c "$CLIENTS" -j 2 -t "$t" bench \
        > "$work/pgbench.log" 2>&1 || { cat "$work/pgbench.log" "$work/$name.log" >&2; kill "$vg"; return 1; }
    kill -INT "$vg"
    wait "$vg" || true
    vg_pid=""
    # Minus SCRAM's key derivation (PBKDF2, 4096 rounds, at client and server logins): it is most
    # of a run's instructions, and how many server connections a run opens varies, which would
    # swamp the per-transaction figure.
    local total scram
    total=$(awk '/^summary:/ {print $2}' "$out")
    scram=$(callgrind_annotate --inclusive=yes "$out" 2>/dev/null \
        | awk '/auth\/scram.rs:pgbay_pooler::auth::scram::salted_password/ {gsub(",", "", $1); print $1; exit}')
    echo $((total - ${scram:-0}))
}

printf '| pooler | protocol | clients x txns | instructions per transaction |\n|---|---|---|---|\n'
for entry in $POOLERS; do
    name=${entry%%=*}
    bin=${entry#*=}
    for mode in $MODES; do
        full=$(instructions "$name" "$bin" "$mode" "$TXNS")
        logins=$(instructions "$name" "$bin" "$mode" 1)
        per=$(awk -v a="$full" -v b="$logins" -v n=$((CLIENTS * (TXNS - 1))) 'BEGIN {printf "%.0f", (a - b) / n}')
        printf '| %s | %s | %s x %s | %s |\n' "$name" "$mode" "$CLIENTS" "$TXNS" "$per"
    done
done
