#!/usr/bin/env bash
# PgBouncer's instructions per transaction under callgrind, for comparison with bench/callgrind.sh
# (pgbay's). PgBouncer runs under valgrind in transaction mode with a pool of 20 in front of a
# throwaway PostgreSQL 15; pgbench -S with 4 clients runs TXNS_A and then TXNS_B transactions per
# client against two fresh PgBouncer processes, and the difference of their instruction totals
# over the difference in transactions is the steady cost of one transaction (logins, server
# logins and start-up cancel out).
#
#   PGBOUNCER=target/peers/pgbouncer-1.25.1/pgbouncer bench/callgrind_pgbouncer.sh
#   TLS=1 ...   # clients with sslmode=require (self-signed ECDSA P-256)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
PGBOUNCER=${PGBOUNCER:-target/peers/pgbouncer-1.25.1/pgbouncer}
TLS=${TLS:-0}
TXNS_A=${TXNS_A:-1000}
TXNS_B=${TXNS_B:-5000}
command -v valgrind >/dev/null || { echo "needs valgrind: apt-get install -y valgrind" >&2; exit 1; }
[ -x "$PGBOUNCER" ] || { echo "no PgBouncer at $PGBOUNCER (build it with /work/shared/peers/build-pgbouncer.sh)" >&2; exit 1; }

work=$(mktemp -d /tmp/pgbay-cgb.XXXXXX)
chmod 755 "$work"
export PGPASSWORD=bench-$RANDOM$RANDOM
cleanup() { pkill -f "callgrind-out-file=$work/" 2>/dev/null || true; stop_pg "$work/pg"; rm -rf "$work"; }
trap cleanup EXIT
PG_PORT=$(free_port)
start_pg "$work/pg" "$PG_PORT" "$PGPASSWORD"
pgbench -h 127.0.0.1 -p "$PG_PORT" -U bench -i -s 1 -q postgres >/dev/null 2>&1
bench_cert "$work"
cp "$PGBOUNCER" "$work/pgbouncer"
printf '"bench" "%s"\n' "$PGPASSWORD" > "$work/userlist.txt"
chmod 600 "$work/userlist.txt"
[ "$(id -u)" = 0 ] && chown -R 65534:65534 "$work"

# instructions TXNS: total instructions of one PgBouncer process that served 4 x TXNS transactions.
instructions() {
    local n=$1 port out
    port=$(free_port)
    out="$work/callgrind.out.$n"
    pgbouncer_ini "$PG_PORT" "$port" "$work" > "$work/b.ini"
    if [ "$TLS" = 1 ]; then
        printf 'client_tls_sslmode = require\nclient_tls_cert_file = %s\nclient_tls_key_file = %s\n' \
            "$work/server.crt" "$work/server.key" >> "$work/b.ini"
    fi
    [ "$(id -u)" = 0 ] && chown 65534:65534 "$work/b.ini"
    as_unpriv valgrind --tool=callgrind --callgrind-out-file="$out" "$work/pgbouncer" "$work/b.ini" \
        >/dev/null 2>&1 &
    local i
    for i in $(seq 150); do pg_isready -h 127.0.0.1 -p "$port" -q && break; sleep 0.2; done
    PGSSLMODE=$([ "$TLS" = 1 ] && echo require || echo disable) \
        pgbench -h 127.0.0.1 -p "$port" -U bench -n -S -c 4 -j 1 -t "$n" bench >/dev/null
    pkill -INT -f "callgrind-out-file=$out"
    for i in $(seq 150); do pgrep -f "callgrind-out-file=$out" >/dev/null || break; sleep 0.2; done
    awk '/^(summary|totals):/ {print $2; exit}' "$out"
}
a=$(instructions "$TXNS_A")
b=$(instructions "$TXNS_B")
echo "$("$PGBOUNCER" --version | head -1), TLS=$TLS: $(( (b - a) / (4 * (TXNS_B - TXNS_A)) )) instructions per transaction (4 clients, -S, $TXNS_A vs $TXNS_B transactions each)"
