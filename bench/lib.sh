# Shared helpers for the bench scripts: a throwaway PostgreSQL cluster and unprivileged runs.
# Sourced, not executed.

PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"

# Runs a command as `nobody` when we are root: PostgreSQL and PgBouncer both refuse to run as root.
as_unpriv() {
    if [ "$(id -u)" = 0 ]; then
        setpriv --reuid=65534 --regid=65534 --clear-groups -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# bench_cert DIR: a throwaway self-signed certificate for 127.0.0.1, DIR/server.crt and
# DIR/server.key (mode 0600), which every bench pooler presents to TLS clients (sslmode=require
# checks no name).
bench_cert() {
    mkdir -p "$1"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj "/CN=127.0.0.1" -keyout "$1/server.key" -out "$1/server.crt" 2>/dev/null
    chmod 600 "$1/server.key"
}

# standalone_bin: builds the working tree's standalone pooler (release) and prints its path.
standalone_bin() {
    cargo build --release -q -p pgbay-pooler --example standalone
    echo "${CARGO_TARGET_DIR:-target}/release/examples/standalone"
}

# start_pg DIR PORT PASSWORD: initdb with SCRAM auth and a superuser `bench`, then start it. It
# listens on 127.0.0.1:PORT and on a Unix socket in DIR (DIR/.s.PGSQL.PORT).
start_pg() {
    local dir=$1 port=$2 password=$3
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown 65534:65534 "$dir"
    # The password file lives only as long as initdb needs it, readable by its owner alone.
    (umask 077 && printf '%s\n' "$password" > "$dir.pw")
    [ "$(id -u)" = 0 ] && chown 65534:65534 "$dir.pw"
    as_unpriv "$PG_BIN/initdb" -D "$dir/data" -U bench --pwfile="$dir.pw" --auth=scram-sha-256 >/dev/null
    rm -f "$dir.pw"
    cat >> "$dir/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
max_connections = 700
shared_buffers = 256MB
fsync = off
synchronous_commit = off
CONF
    as_unpriv "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/log" -w start >/dev/null
}

stop_pg() {
    as_unpriv "$PG_BIN/pg_ctl" -D "$1/data" -m immediate -w stop >/dev/null 2>&1 || true
}

# bench_work PREFIX: a scratch directory, $work (mode 755: PostgreSQL runs as nobody), and on exit
# the processes in $pids killed, the cluster in $work/pg stopped and $work removed.
bench_work() {
    work=$(mktemp -d "/tmp/$1.XXXXXX")
    chmod 755 "$work"
    pids=()
    trap bench_cleanup EXIT
}

bench_cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    stop_pg "$work/pg"
    rm -rf "$work"
}

# start_bouncer NAME BINARY TRANSPORT: a PgBouncer with the bench's pool size and mode (pgbouncer_ini;
# database `bench` on PostgreSQL at PG_HOST:PG_PORT, user bench with PASSWORD; TLS clients with the
# certificate in $work/tls), on its own port; it refuses to run as root, so it runs as nobody. Sets
# BOUNCER_PORT and BOUNCER_PID; its PIDs go in $pids (bench_work).
start_bouncer() {
    local name=$1 bin=$2 transport=$3 dir="$work/$1"
    BOUNCER_PORT=$(free_port)
    mkdir -p "$dir"
    cp "$bin" "$dir/pgbouncer"
    printf '"bench" "%s"\n' "$PASSWORD" > "$dir/userlist.txt"
    chmod 600 "$dir/userlist.txt"
    {
        pgbouncer_ini "$PG_PORT" "$BOUNCER_PORT" "$dir" "$PG_HOST"
        printf 'max_client_conn = 11000\nmax_db_connections = 20\nserver_tls_sslmode = disable\n'
    } > "$dir/pgbouncer.ini"
    if [ "$transport" = tls ]; then
        cat >> "$dir/pgbouncer.ini" <<INI
client_tls_sslmode = require
client_tls_cert_file = $work/tls/server.crt
client_tls_key_file = $work/tls/server.key
INI
    fi
    [ "$(id -u)" = 0 ] && chown -R 65534:65534 "$dir"
    as_unpriv "$dir/pgbouncer" "$dir/pgbouncer.ini" > "$dir/stderr.log" 2>&1 &
    pids+=($!)
    sleep 0.5
    # setpriv execs pgbouncer: the pid found by the ini path is the pooling process itself.
    BOUNCER_PID=$(pgrep -f "$dir/pgbouncer.ini" | head -1)
    pids+=("$BOUNCER_PID")
}

# user_sys_ticks PID: "user system" CPU time of a process (all its threads), in clock ticks.
user_sys_ticks() {
    awk '{print $14, $15}' "/proc/$1/stat"
}

rss_kib() {
    awk '/^VmRSS:/ {print $2}' "/proc/$1/status"
}

# pgbouncer_ini PG_PORT LISTEN_PORT DIR [PG_HOST]: the [databases] and [pgbouncer] settings every
# bench PgBouncer shares (database `bench` on the bench cluster at PG_HOST, 127.0.0.1 unless given —
# a directory means its Unix socket —, transaction pooling, pool of 20, SCRAM against
# DIR/userlist.txt, log in DIR); callers append their own lines after it.
pgbouncer_ini() {
    cat <<INI
[databases]
bench = host=${4:-127.0.0.1} port=$1 dbname=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $2
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $3/userlist.txt
pool_mode = transaction
default_pool_size = 20
logfile = $3/pgbouncer.log
INI
}

# pgbench's arguments for MODE: -S in that protocol, or the SET-heavy script (every transaction
# sets search_path, then selects; simple protocol), written into DIR the first time.
workload_args() {
    local mode=$1 dir=$2
    if [ "$mode" = set-heavy ]; then
        [ -f "$dir/set_heavy.sql" ] || cat > "$dir/set_heavy.sql" <<'SQL'
\set aid random(1, 100000 * :scale)
SET search_path = public, pg_catalog;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
SQL
        echo "-f $dir/set_heavy.sql -M simple"
    else
        echo "-S -M $mode"
    fi
}
