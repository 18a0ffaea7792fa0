#!/usr/bin/env bash
# Side-by-side pooler benchmark, one run, one machine: PostgreSQL directly, PgBouncer (Debian's
# package, and 1.25.1 built from /work/shared/peers when available) and pgbay's pooler
# (crates/pooler, run by its `standalone` example), all in transaction mode with a pool of 20
# server connections in front of the same PostgreSQL 15 cluster; each pooler measured without TLS
# and with TLS required from clients (pgbench and psycopg with sslmode=require).
#
#   bench/pooler.sh            # full run (about 10 minutes); DURATION=10 CLIENTS="50 500" to change
#   DURATION=3 CLIENTS=10 IDLE=100 MANY=200 bench/pooler.sh        # smoke run
#
# Settings (environment): DURATION, CLIENTS, IDLE, MANY as above; TLS="plain tls" (which client
# transports to measure); PGBOUNCER_NEW=path of a PgBouncer 1.25.1 binary (default: built with
# /work/shared/peers/build-pgbouncer.sh if that script exists, else that column is skipped;
# PGBOUNCER_NEW=none skips it); POOLER_BIN=path of a standalone build to measure instead of the
# working tree's; POOLER_THREADS=N runs pgbay's pooler with N worker threads (default: one per
# core); ROUNDS=N measures every row N times (the targets' order rotated each round) and adds a
# table of each row's medians with pgbay's CPU per transaction over PgBouncer 1.25.1's;
# POOLER_VARIANTS="name:bin:threads[:args] ..." adds more pgbay targets to the same run (another
# build, or the same with another worker count or with more standalone arguments, comma-separated
# in ARGS; an empty field means POOLER_BIN, or POOLER_THREADS), each
# measured in turn with the others as target pgbay-NAME; MODES (default "simple prepared
# set-heavy") picks the protocols; DIRECT=0 leaves out PostgreSQL directly and PGBOUNCER_OLD=none
# Debian's PgBouncer; IDLE=0 / MANY=0 skip those idle-client runs; PERF=1 adds
# the pooler's system calls and context switches per transaction (perf stat, Debian linux-perf; the
# switches also split into voluntary and preempted, from /proc/PID/task/*/status) and the packets on the loopback interface per transaction;
# BACKEND=unix has every pooler reach PostgreSQL over its Unix socket (as pgbay reaches the
# PostgreSQL it runs itself) instead of TCP on 127.0.0.1 (BACKEND=tcp, the default); FLOOR=1 adds
# a "floor" target without TLS: crates/pooler/examples/floor_relay.rs, which copies bytes between
# each client and a connection of its own to PostgreSQL (over TCP) and does nothing else, so its
# CPU per transaction is the least a relaying process spends here (the kernel's share); RATE=N
# runs pgbench at N transactions per second in total (`-R N`) instead of as fast as it can, so that
# every target is measured under the same load on PostgreSQL and the machine (a pooler that serves
# more TPS otherwise also makes its own transactions dearer on a shared machine).
#
# Measures, per target and transport: pgbench -S TPS (simple and -M prepared) and a SET-heavy script
# (protocol column "set-heavy": each transaction `SET search_path` then a select; pgbench counts the
# script as one transaction although the pooler sees two), the pooler's CPU time per transaction (from /proc/PID/stat), the RSS growth per idle client over IDLE idle clients, and
# whether MANY concurrent clients on one pool all get served. Writes a markdown report to
# bench/results/pooler-<timestamp>.md and prints it.
#
# TLS: one self-signed certificate (ECDSA P-256, made with openssl in the bench's temp dir) serves
# every pooler; PgBouncer runs with client_tls_sslmode=require. Poolers reach PostgreSQL in
# plaintext in every case, over TCP loopback or its Unix socket as BACKEND says (PostgreSQL here
# offers no TLS), so the TLS rows differ from the plain ones by the client side only. No password is passed on a command line by this script
# (PGPASSWORD, userlist files, PGBAY_POOLER_PASSWORD for the standalone example).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

DURATION=${DURATION:-15}
CLIENTS=${CLIENTS:-"50 500"}
IDLE=${IDLE:-2000}
MANY=${MANY:-10000}
TLS=${TLS:-"plain tls"}
ROUNDS=${ROUNDS:-1}
PERF=${PERF:-0}
BACKEND=${BACKEND:-tcp}
FLOOR=${FLOOR:-0}
PYTHON=${PYTHON:-.venv/bin/python}
PEERS_BUILD=${PEERS_BUILD:-/work/shared/peers/build-pgbouncer.sh}
PGBOUNCER_NEW=${PGBOUNCER_NEW:-auto}
PGBOUNCER_OLD=${PGBOUNCER_OLD:-pgbouncer}
POOLER_VARIANTS=${POOLER_VARIANTS:-}
MODES=${MODES:-"simple prepared set-heavy"}
DIRECT=${DIRECT:-1}
RATE=${RATE:-}
PASSWORD=bench-$RANDOM$RANDOM
export PGPASSWORD=$PASSWORD
ulimit -n 20000

[ "$PGBOUNCER_OLD" = none ] || command -v "$PGBOUNCER_OLD" >/dev/null || { echo "needs Debian's pgbouncer: apt-get install -y pgbouncer (or PGBOUNCER_OLD=none)" >&2; exit 1; }
command -v openssl >/dev/null || { echo "needs openssl (for the TLS certificate)" >&2; exit 1; }
[ "$PERF" != 1 ] || command -v perf >/dev/null || { echo "PERF=1 needs perf: apt-get install -y linux-perf" >&2; exit 1; }
case "$BACKEND" in tcp | unix) ;; *) echo "BACKEND must be tcp or unix, not $BACKEND" >&2; exit 1 ;; esac
[ -x "$PYTHON" ] || { echo "needs a Python with psycopg at $PYTHON (./scripts/test.sh creates .venv)" >&2; exit 1; }

if [ "$PGBOUNCER_NEW" = auto ]; then
    PGBOUNCER_NEW=none
    if [ -x "$PEERS_BUILD" ]; then
        echo "building PgBouncer 1.25.1 with $PEERS_BUILD (once; kept in target/peers)" >&2
        PGBOUNCER_NEW=$("$PEERS_BUILD" "${CARGO_TARGET_DIR:-target}/peers" | tail -1) || PGBOUNCER_NEW=none
    fi
fi

# POOLER_BIN=path: measure that build of the standalone pooler (e.g. an older one, for a
# before/after run) instead of building the working tree's.
[ -n "${POOLER_BIN:-}" ] || POOLER_BIN=$(standalone_bin)
if [ "$FLOOR" = 1 ] && [ -z "${FLOOR_BIN:-}" ]; then
    cargo build --release -q -p pgbay-pooler --example floor_relay
    FLOOR_BIN=${CARGO_TARGET_DIR:-target}/release/examples/floor_relay
fi
# The standalone example takes a certificate only if its usage names one (it did not when this
# script was written: then pgbay's TLS rows are reported as skipped).
POOLER_TLS=no
pooler_usage=$("$POOLER_BIN" --help 2>&1 || true)
if grep -q -- '--tls-cert' <<<"$pooler_usage"; then POOLER_TLS=yes; fi

bench_work pgbay-bench

# The certificate every pooler presents to TLS clients (sslmode=require checks no name).
bench_cert "$work/tls"
[ "$(id -u)" = 0 ] && chown -R 65534:65534 "$work/tls"

PG_PORT=$(free_port)
start_pg "$work/pg" "$PG_PORT" "$PASSWORD"
pgbench -h 127.0.0.1 -p "$PG_PORT" -U bench -i -s 10 -q postgres >/dev/null 2>&1
# Where the poolers reach PostgreSQL: TCP loopback, or the directory of its Unix socket.
PG_HOST=127.0.0.1
[ "$BACKEND" = unix ] && PG_HOST=$work/pg

# start_pgbay NAME TRANSPORT [BIN [THREADS [ARGS]]]: the standalone example (POOLER_BIN and
# POOLER_THREADS unless given; ARGS: more arguments, comma-separated); sets POOLER_PORT and
# POOLER_PID.
start_pgbay() {
    local name=$1 transport=$2 bin=${3:-$POOLER_BIN} threads=${4:-${POOLER_THREADS:-}} tls_args=()
    local extra=()
    [ -n "${5:-}" ] && IFS=, read -r -a extra <<< "$5"
    POOLER_PORT=$(free_port)
    [ "$transport" = tls ] && tls_args=(--tls-cert "$work/tls/server.crt" --tls-key "$work/tls/server.key")
    PGBAY_POOLER_PASSWORD="$PASSWORD" "$bin" --listen "127.0.0.1:$POOLER_PORT" \
        --backend-host "$PG_HOST" --backend-port "$PG_PORT" --user bench --pool bench --database postgres --mode transaction \
        --size 20 --max-client-conn 11000 "${tls_args[@]}" ${threads:+--threads "$threads"} "${extra[@]}" \
        > "$work/$name.log" 2>&1 &
    pids+=($!)
    sleep 0.5
    POOLER_PID=$(pgrep -f "$bin --listen 127.0.0.1:$POOLER_PORT" | head -1)
    pids+=("$POOLER_PID")
}

# Targets: "name transport port pid" (pid empty for PostgreSQL itself).
targets=()
[ "$DIRECT" = 0 ] || targets+=("postgres plain $PG_PORT -")
if [ "$FLOOR" = 1 ] && [[ " $TLS " == *" plain "* ]]; then
    floor_port=$(free_port)
    "$FLOOR_BIN" --listen "127.0.0.1:$floor_port" --backend "127.0.0.1:$PG_PORT" > "$work/floor.log" 2>&1 &
    pids+=($!)
    targets+=("floor plain $floor_port $!")
fi
bouncer_versions=""
[ "$PGBOUNCER_OLD" = none ] || bouncer_versions=", $("$PGBOUNCER_OLD" --version | head -1)"
bouncer_new_version=""
for transport in $TLS; do
    if [ "$PGBOUNCER_OLD" != none ]; then
        start_bouncer "pgbouncer-$transport" "$(command -v "$PGBOUNCER_OLD")" "$transport"
        targets+=("pgbouncer $transport $BOUNCER_PORT $BOUNCER_PID")
    fi
    if [ "$PGBOUNCER_NEW" != none ] && [ -x "$PGBOUNCER_NEW" ]; then
        bouncer_new_version=$("$PGBOUNCER_NEW" --version | head -1)
        start_bouncer "pgbouncer-new-$transport" "$PGBOUNCER_NEW" "$transport"
        targets+=("pgbouncer-1.25 $transport $BOUNCER_PORT $BOUNCER_PID")
    fi
    if [ "$transport" = plain ] || [ "$POOLER_TLS" = yes ]; then
        start_pgbay "pgbay-$transport" "$transport"
        targets+=("pgbay $transport $POOLER_PORT $POOLER_PID")
        for variant in $POOLER_VARIANTS; do
            IFS=: read -r vname vbin vthreads vargs <<< "$variant"
            start_pgbay "pgbay-$vname-$transport" "$transport" "${vbin:-$POOLER_BIN}" "$vthreads" "$vargs"
            targets+=("pgbay-$vname $transport $POOLER_PORT $POOLER_PID")
        done
    fi
done
sleep 0.5
hz=$(getconf CLK_TCK)

# Packets received on the loopback interface so far (every packet of the run: client to pooler,
# pooler to PostgreSQL, their ACKs; nothing else of this machine's should be on it meanwhile).
lo_packets() { awk '$1 == "lo:" {print $3}' /proc/net/dev; }
# A process's context switches so far, voluntary (it waited) and involuntary (it was preempted),
# summed over its threads.
ctxt_switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^voluntary_ctxt_switches/ {v += $2} /^nonvoluntary_ctxt_switches/ {n += $2} END {print v + 0, n + 0}'; }

sslmode() { [ "$1" = tls ] && echo require || echo disable; }

report=bench/results/pooler-$(date -u +%Y%m%dT%H%M%SZ).md
mkdir -p bench/results
{
    echo "# Pooler benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}')$bouncer_versions${bouncer_new_version:+, $bouncer_new_version}, pgbench -S -T $DURATION -j 2${RATE:+ -R $RATE}, scale 10, pool size 20, transaction mode. TLS rows: clients with sslmode=require, ECDSA P-256 self-signed certificate; poolers to PostgreSQL in plaintext over $([ "$BACKEND" = unix ] && echo "its Unix socket" || echo "TCP loopback")."
    if [ "$POOLER_TLS" = no ] && [[ " $TLS " == *" tls "* ]]; then
        echo
        echo "pgbay over TLS: skipped, the standalone example takes no certificate (no --tls-cert)."
    fi
    echo
    echo "| target | TLS | protocol | clients | TPS | pooler CPU µs/txn | user | sys | note |"
    echo "|---|---|---|---|---|---|---|---|---|"
} > "$report"

# Every measured row, for the medians over rounds: target transport mode clients tps user_us sys_us
rows="$work/rows.tsv"
: > "$rows"

run_pgbench() { # target transport port pid mode clients db
    local target=$1 transport=$2 port=$3 pid=$4 mode=$5 c=$6 db=$7
    local u0=0 s0=0 u1 s1 out tps txns cpu="-" user_us="" sys_us="" note="" perf_pid="" extra=""
    [ "$pid" = - ] && pid=""
    # A pooler that exited (PgBouncer 1.18 may, under -M prepared) is reported, not fatal.
    if [ -n "$pid" ] && [ ! -e "/proc/$pid" ]; then
        echo "| $target | $transport | $mode | $c | 0 | - | - | - | pooler not running |" >> "$report"
        return 0
    fi
    [ -n "$pid" ] && read -r u0 s0 < <(user_sys_ticks "$pid")
    # PERF=1: the pooler's system calls and context switches over the same interval (perf stat
    # attached to the process; counting only, no sampling).
    local lo0=0 lo1=0 vol0=0 inv0=0 vol1=0 inv1=0
    if [ "$PERF" = 1 ] && [ -n "$pid" ]; then
        lo0=$(lo_packets)
        read -r vol0 inv0 < <(ctxt_switches "$pid")
        perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "$pid" -o "$work/perf.csv" &
        perf_pid=$!
    fi
    local workload
    read -r -a workload <<< "$(workload_args "$mode" "$work")"
    [ -n "$RATE" ] && workload+=(-R "$RATE")
    if out=$(PGSSLMODE=$(sslmode "$transport") pgbench -h 127.0.0.1 -p "$port" -U bench -n "${workload[@]}" -c "$c" -j 2 -T "$DURATION" "$db" 2>&1); then :; else note="pgbench failed: $(echo "$out" | grep -m1 -iE 'error|fatal' | cut -c1-120 || true)"; fi
    if [ -n "$perf_pid" ]; then
        kill -INT "$perf_pid" 2>/dev/null || true
        wait "$perf_pid" 2>/dev/null || true
        lo1=$(lo_packets)
        read -r vol1 inv1 < <(ctxt_switches "$pid")
    fi
    u1=$u0 s1=$s0
    [ -n "$pid" ] && [ -e "/proc/$pid" ] && read -r u1 s1 < <(user_sys_ticks "$pid")
    tps=$(echo "$out" | awk '/^tps/ {printf "%.0f", $3}')
    txns=$(echo "$out" | awk '/number of transactions actually processed/ {print $6}' | cut -d/ -f1)
    local failed=0
    [[ "$note" == "pgbench failed"* ]] && failed=1
    if [ -n "$pid" ] && [ -n "$txns" ] && [ "$txns" -gt 0 ]; then
        user_us=$(awk -v d=$((u1 - u0)) -v hz="$hz" -v n="$txns" 'BEGIN {printf "%.1f", d / hz * 1e6 / n}')
        sys_us=$(awk -v d=$((s1 - s0)) -v hz="$hz" -v n="$txns" 'BEGIN {printf "%.1f", d / hz * 1e6 / n}')
        cpu=$(awk -v a="$user_us" -v b="$sys_us" 'BEGIN {printf "%.1f", a + b}')
        if [ -n "$perf_pid" ] && [ -s "$work/perf.csv" ]; then
            extra=$(awk -F, -v n="$txns" -v lo=$((lo1 - lo0)) -v vol=$((vol1 - vol0)) -v inv=$((inv1 - inv0)) '$3 ~ /sys_enter/ {s = $1 / n} $3 ~ /context-switches/ {c = $1 / n} END {printf "%.2f syscalls, %.2f context switches (%.2f voluntary, %.2f preempted), %.2f loopback packets per txn", s, c, vol / n, inv / n, lo / n}' "$work/perf.csv")
            note="${note:+$note; }$extra"
        fi
        # A failed run's figures are not a measurement of the pooler: left out of the medians.
        [ "$failed" = 0 ] && printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$transport" "$mode" "$c" "${tps:-0}" "$user_us" "$sys_us" >> "$rows"
    elif [ -z "$pid" ] && [ "$failed" = 0 ]; then
        printf '%s\t%s\t%s\t%s\t%s\t-\t-\n' "$target" "$transport" "$mode" "$c" "${tps:-0}" >> "$rows"
    fi
    echo "| $target | $transport | $mode | $c | ${tps:-0} | $cpu | ${user_us:--} | ${sys_us:--} | $note |" >> "$report"
    echo "$target $transport $mode c=$c tps=${tps:-0} cpu/txn=$cpu (user ${user_us:--}, sys ${sys_us:--}) $note" >&2
}

# ROUNDS=N measures every row N times; each round starts the targets one further along, so no
# target always runs right after the same neighbour.
for round in $(seq "$ROUNDS"); do
    [ "$ROUNDS" -gt 1 ] && echo "round $round of $ROUNDS" >&2
    for c in $CLIENTS; do
        for mode in $MODES; do
            n=${#targets[@]}
            for ((i = 0; i < n; i++)); do
                read -r name transport port pid <<< "${targets[$(((i + round - 1) % n))]}"
                db=bench
                [ "$name" = postgres ] || [ "$name" = floor ] && db=postgres
                run_pgbench "$name" "$transport" "$port" "$pid" "$mode" "$c" "$db"
            done
        done
    done
done

# Over several rounds: each row's median TPS and CPU, and pgbay's CPU against PgBouncer 1.25.1's.
if [ "$ROUNDS" -gt 1 ]; then
    {
        echo
        echo "Medians over $ROUNDS rounds (CPU: pooler user + system µs per transaction; ratio: pgbay's CPU per transaction over PgBouncer 1.25.1's in the same row):"
        echo
        echo "| target | TLS | protocol | clients | TPS | pooler CPU µs/txn | user | sys | pgbay / PgBouncer 1.25.1 CPU |"
        echo "|---|---|---|---|---|---|---|---|---|"
        sort -t$'\t' -k4,4n -k3,3 -k2,2 -k1,1 -s "$rows" | awk -F'\t' '
            function median(list,   a, n, i, j, t) {
                n = split(list, a, " ")
                for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
                return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
            }
            {
                k = $1 SUBSEP $2 SUBSEP $3 SUBSEP $4
                if (!(k in tps)) order[++m] = k
                tps[k] = tps[k] " " $5
                if ($6 != "-") { cpu[k] = cpu[k] " " ($6 + $7); usr[k] = usr[k] " " $6; sys[k] = sys[k] " " $7 }
            }
            END {
                for (i = 1; i <= m; i++) {
                    split(order[i], f, SUBSEP)
                    c = (order[i] in cpu) ? sprintf("%.1f", median(cpu[order[i]])) : "-"
                    u = (order[i] in usr) ? sprintf("%.1f", median(usr[order[i]])) : "-"
                    s = (order[i] in sys) ? sprintf("%.1f", median(sys[order[i]])) : "-"
                    ratio = "-"
                    peer = "pgbouncer-1.25" SUBSEP f[2] SUBSEP f[3] SUBSEP f[4]
                    if (f[1] ~ /^pgbay/ && (order[i] in cpu) && (peer in cpu)) ratio = sprintf("%.2f×", median(cpu[order[i]]) / median(cpu[peer]))
                    printf "| %s | %s | %s | %s | %.0f | %s | %s | %s | %s |\n", f[1], f[2], f[3], f[4], median(tps[order[i]]), c, u, s, ratio
                }
            }'
    } >> "$report"
fi

idle_clients() { # name transport port pid n
    local name=$1 transport=$2 port=$3 pid=$4 n=$5 rss0 rss1 line
    [ -e "/proc/$pid" ] || { echo "| $name | $transport | $n | pooler not running | - | - | - |" >> "$report"; return 0; }
    rss0=$(rss_kib "$pid")
    coproc IDLE_PROC { "$PYTHON" bench/idle_clients.py "host=127.0.0.1 port=$port user=bench dbname=bench sslmode=$(sslmode "$transport")" "$n" 200; }
    read -r line <&"${IDLE_PROC[0]}"
    rss1=$(rss_kib "$pid")
    exec {IDLE_PROC[1]}>&-
    wait "$IDLE_PROC_PID" || true
    echo "$name $transport $n clients: $line; RSS ${rss0} KiB -> ${rss1} KiB" >&2
    echo "| $name | $transport | $n | $line | $rss0 | $rss1 | $(awk -v a="$rss0" -v b="$rss1" -v n="$n" 'BEGIN {printf "%.2f", (b - a) / n}') |" >> "$report"
}

if [ "$IDLE" -gt 0 ] || [ "$MANY" -gt 0 ]; then
    {
        echo
        echo "Idle clients (each logged in and ran SELECT 1, then idles); RSS of the pooler process:"
        echo
        echo "| target | TLS | clients | result | RSS before KiB | RSS with clients KiB | KiB per client |"
        echo "|---|---|---|---|---|---|---|"
    } >> "$report"
fi
for n in "$IDLE" "$MANY"; do
    [ "$n" -gt 0 ] || continue
    for t in "${targets[@]}"; do
        read -r name transport port pid <<< "$t"
        [ "$name" = postgres ] || [ "$name" = floor ] && continue
        idle_clients "$name" "$transport" "$port" "$pid" "$n"
    done
done

cat "$report"
