"""The admin console (database `pgbouncer` on a service's pooler port) and per-pool metrics.

Real clients drive it: psql, psycopg 3 (simple and extended protocol), psycopg2, pgbench for the
load it counts, and the PgBouncer Prometheus exporter people already run. Column lists are
PgBouncer 1.25.1's: recorded below from the peer's console, and compared against a live peer
when its build script is at hand (`../shared/peers/build-pgbouncer.sh`, cached in target/peers).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import requests

from conftest import API_KEY, API_SECRET, REPO, find_pool, ok, provision, psql, psql_ok, unique

# PgBouncer 1.25.1's console columns (name, type oid), taken from its console with psycopg.
PGBOUNCER_COLUMNS = {
    "POOLS": [("database", 25), ("user", 25), ("cl_active", 23), ("cl_waiting", 23), ("cl_active_cancel_req", 23), ("cl_waiting_cancel_req", 23), ("sv_active", 23), ("sv_active_cancel", 23), ("sv_being_canceled", 23), ("sv_idle", 23), ("sv_used", 23), ("sv_tested", 23), ("sv_login", 23), ("maxwait", 23), ("maxwait_us", 23), ("pool_mode", 25), ("load_balance_hosts", 25)],
    "STATS": [("database", 25), ("total_server_assignment_count", 1700), ("total_xact_count", 1700), ("total_query_count", 1700), ("total_received", 1700), ("total_sent", 1700), ("total_xact_time", 1700), ("total_query_time", 1700), ("total_wait_time", 1700), ("total_client_parse_count", 1700), ("total_server_parse_count", 1700), ("total_bind_count", 1700), ("avg_server_assignment_count", 1700), ("avg_xact_count", 1700), ("avg_query_count", 1700), ("avg_recv", 1700), ("avg_sent", 1700), ("avg_xact_time", 1700), ("avg_query_time", 1700), ("avg_wait_time", 1700), ("avg_client_parse_count", 1700), ("avg_server_parse_count", 1700), ("avg_bind_count", 1700)],
    "STATS_TOTALS": [("database", 25), ("server_assignment_count", 1700), ("xact_count", 1700), ("query_count", 1700), ("bytes_received", 1700), ("bytes_sent", 1700), ("xact_time", 1700), ("query_time", 1700), ("wait_time", 1700), ("client_parse_count", 1700), ("server_parse_count", 1700), ("bind_count", 1700)],
    "STATS_AVERAGES": [("database", 25), ("server_assignment_count", 1700), ("xact_count", 1700), ("query_count", 1700), ("bytes_received", 1700), ("bytes_sent", 1700), ("xact_time", 1700), ("query_time", 1700), ("wait_time", 1700), ("avg_client_parse_count", 1700), ("avg_server_parse_count", 1700), ("avg_bind_count", 1700)],
    "CLIENTS": [("type", 25), ("user", 25), ("database", 25), ("replication", 25), ("state", 25), ("addr", 25), ("port", 23), ("local_addr", 25), ("local_port", 23), ("connect_time", 25), ("request_time", 25), ("wait", 23), ("wait_us", 23), ("close_needed", 23), ("ptr", 25), ("link", 25), ("remote_pid", 23), ("tls", 25), ("application_name", 25), ("prepared_statements", 23), ("id", 23)],
    "SERVERS": [("type", 25), ("user", 25), ("database", 25), ("replication", 25), ("state", 25), ("addr", 25), ("port", 23), ("local_addr", 25), ("local_port", 23), ("connect_time", 25), ("request_time", 25), ("wait", 23), ("wait_us", 23), ("close_needed", 23), ("ptr", 25), ("link", 25), ("remote_pid", 23), ("tls", 25), ("application_name", 25), ("prepared_statements", 23), ("id", 23)],
    "DATABASES": [("name", 25), ("host", 25), ("port", 23), ("database", 25), ("force_user", 25), ("pool_size", 23), ("min_pool_size", 23), ("reserve_pool_size", 23), ("server_lifetime", 23), ("pool_mode", 25), ("load_balance_hosts", 25), ("max_connections", 23), ("current_connections", 23), ("max_client_connections", 23), ("current_client_connections", 23), ("paused", 23), ("disabled", 23)],
    "USERS": [("name", 25), ("pool_size", 25), ("reserve_pool_size", 25), ("pool_mode", 25), ("max_user_connections", 23), ("current_connections", 23), ("max_user_client_connections", 23), ("current_client_connections", 23)],
    "CONFIG": [("key", 25), ("value", 25), ("default", 25), ("changeable", 25)],
    "LISTS": [("list", 25), ("items", 23)],
    "VERSION": [("version", 25)],
    "STATE": [("key", 25), ("value", 25)],
}

EXPORTER = "prometheus-pgbouncer-exporter==2.1.2"


def console_uri(svc, user=None, password=None) -> str:
    """The service's console: its pooler port, database `pgbouncer`, TLS required."""
    u = urlsplit(svc.uri_for(user=user, password=password, dbname="pgbouncer"))
    netloc = u.netloc.rsplit(":", 1)[0] + f":{svc.bouncer_port}"
    return urlunsplit((u.scheme, netloc, u.path, u.query, u.fragment))


def wait_until(pred, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def svc(client):
    s = provision(client, unique("console"))
    ok(client, client.create_dbaas_pg_database(service_name=s.name, database_name="app"))
    ok(client, client.create_dbaas_postgres_user(service_name=s.name, username="appuser"))
    with psycopg.connect(s.uri_for(dbname="app"), autocommit=True) as conn:
        conn.execute("GRANT CREATE ON SCHEMA public TO appuser")
    return s


def make_pool(client, svc, *, mode="transaction", size=10):
    name = unique("cp")
    ok(client, client.create_dbaas_pg_connection_pool(
        service_name=svc.name, name=name, database_name="app", mode=mode, size=size,
        username="appuser"))
    return find_pool(client.get_dbaas_service_pg(name=svc.name), name)


def show(svc, what: str) -> list[dict]:
    with psycopg.connect(console_uri(svc), autocommit=True) as conn:
        cur = conn.execute(f"SHOW {what}")
        names = [d.name for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]


def pool_row(svc, pool: str) -> dict:
    rows = [r for r in show(svc, "POOLS") if r["database"] == pool]
    assert len(rows) == 1, rows
    return rows[0]


def scrape(server) -> dict:
    """/metrics parsed by prometheus_client's parser: {(name, labels...): value}."""
    from prometheus_client.parser import text_string_to_metric_families
    # /metrics takes the key pair as basic auth, as Prometheus' basic_auth sends it.
    r = requests.get(f"http://127.0.0.1:{server.api_port}/metrics", auth=(API_KEY, API_SECRET),
                     timeout=10)
    assert r.status_code == 200, r.text
    text = r.text
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def pool_series(metrics: dict, name: str, svc, pool: str, user="appuser"):
    key = (name, tuple(sorted({"service": svc.name, "pool": pool, "user": user}.items())))
    return metrics.get(key)


# --------------------------------------------------------------------------------------------
# Columns


@pytest.mark.parametrize("what", sorted(PGBOUNCER_COLUMNS))
def test_show_columns_are_pgbouncers(svc, what):
    with psycopg.connect(console_uri(svc), autocommit=True) as conn:
        cur = conn.execute(f"SHOW {what}")
        got = [(d.name, d.type_code) for d in cur.description]
    assert got == [tuple(c) for c in PGBOUNCER_COLUMNS[what]]


@pytest.fixture(scope="module")
def peer_columns(tmp_path_factory):
    """SHOW column lists from a live PgBouncer 1.25.1, built with the peers' script (cached)."""
    script = Path(os.environ.get("PGBAY_PEERS_DIR", REPO.parent / "shared" / "peers"))
    script = script / "build-pgbouncer.sh"
    if not script.exists():
        pytest.skip(f"no PgBouncer build script at {script}")
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "peers"
    built = subprocess.run(["bash", str(script), str(target)], capture_output=True, text=True,
                           timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    binary = built.stdout.strip().splitlines()[-1]
    work = Path(tempfile.mkdtemp(prefix="pgbay-peer-"))
    os.chmod(work, 0o777)
    start = f"""
set -e
. {REPO}/bench/lib.sh
PGP=$(free_port); BP=$(free_port)
start_pg {work}/pg "$PGP" secret
cat > {work}/pgb.ini <<INI
[databases]
mypool = host=127.0.0.1 port=$PGP dbname=postgres user=bench password=secret
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BP
auth_type = plain
auth_file = {work}/users.txt
admin_users = bench
logfile = {work}/pgb.log
pidfile = {work}/pgb.pid
INI
echo '"bench" "secret"' > {work}/users.txt
chmod 644 {work}/pgb.ini {work}/users.txt
as_unpriv {binary} -d {work}/pgb.ini
echo $BP
"""
    try:
        r = subprocess.run(["bash", "-c", start], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        port = int(r.stdout.split()[-1])
        dsn = f"host=127.0.0.1 port={port} user=bench password=secret dbname=pgbouncer"
        conn = wait_until(lambda: _try_connect(dsn), what="the peer PgBouncer")
        cols = {}
        with conn:
            for what in PGBOUNCER_COLUMNS:
                cur = conn.execute(f"SHOW {what}")
                cols[what] = [(d.name, d.type_code) for d in cur.description]
        return cols
    finally:
        subprocess.run(["bash", "-c", f"kill $(cat {work}/pgb.pid) 2>/dev/null; "
                        f". {REPO}/bench/lib.sh; stop_pg {work}/pg"], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def _try_connect(dsn):
    try:
        return psycopg.connect(dsn, autocommit=True)
    except psycopg.OperationalError:
        return None


def test_recorded_columns_are_the_live_peers(peer_columns):
    assert peer_columns == {k: [tuple(c) for c in v] for k, v in PGBOUNCER_COLUMNS.items()}


# --------------------------------------------------------------------------------------------
# Who gets in


def test_non_admin_user_is_refused_like_pgbouncer(client, svc):
    user = unique("nonadmin")
    ok(client, client.create_dbaas_postgres_user(service_name=svc.name, username=user))
    pw = client.reveal_dbaas_postgres_user_password(service_name=svc.name, username=user)
    with pytest.raises(psycopg.OperationalError) as e:
        psycopg.connect(console_uri(svc, user=user, password=pw["password"]))
    assert "not allowed" in str(e.value)
    # Its password is checked first: a wrong one is a password failure, as anywhere else.
    with pytest.raises(psycopg.OperationalError) as e:
        psycopg.connect(console_uri(svc, password="wrong"))
    assert "password authentication failed" in str(e.value)


def test_console_requires_tls(svc):
    r = psql(console_uri(svc).replace("sslmode=require", "sslmode=disable"), "SHOW VERSION")
    assert r.returncode != 0 and "SSL required" in r.stderr, r.stderr


# --------------------------------------------------------------------------------------------
# Drivers


def test_psql_drives_the_console(client, svc):
    pool = make_pool(client, svc)
    lines = psql_ok(console_uri(svc), "SHOW POOLS")
    assert any(line.startswith(pool["name"] + "|appuser|") for line in lines), lines
    assert psql_ok(console_uri(svc), "SHOW VERSION") == ["PgBouncer 1.25.1 compatible (pgbay 0.1.0)"]
    r = psql(console_uri(svc), "SHOW NOPE")
    assert r.returncode != 0 and "invalid command 'SHOW NOPE', use SHOW HELP;" in r.stderr


def test_psycopg3_simple_and_extended(client, svc):
    pool = make_pool(client, svc)
    with psycopg.connect(console_uri(svc), autocommit=True) as conn:
        simple = conn.execute("SHOW DATABASES").fetchall()
        # prepare=True: Parse/Describe/Bind/Execute/Sync.
        cur = conn.cursor()
        cur.execute("SHOW DATABASES", prepare=True)
        extended = cur.fetchall()
        cur.execute("SHOW DATABASES", prepare=True)
        assert [d.name for d in cur.description][:3] == ["name", "host", "port"]
        assert {r[0] for r in extended} == {r[0] for r in simple}
        assert pool["name"] in {r[0] for r in extended}
        # An error in the extended protocol leaves the console usable.
        with pytest.raises(psycopg.Error) as e:
            cur.execute("SHOW NOPE", prepare=True)
        assert e.value.sqlstate == "08P01"
        assert conn.execute("SHOW STATE").fetchall()[0] == ("active", "yes")


def test_psycopg2_drives_the_console(client, svc):
    import psycopg2
    pool = make_pool(client, svc)
    conn = psycopg2.connect(console_uri(svc))
    try:
        conn.autocommit = True
        cur = conn.cursor()
        cur.execute("SHOW STATS")
        names = [d.name for d in cur.description]
        rows = [dict(zip(names, r)) for r in cur.fetchall()]
        assert pool["name"] in {r["database"] for r in rows}
        cur.execute("SHOW CONFIG")
        config = dict((k, v) for k, v, _, _ in cur.fetchall())
        assert config["max_client_conn"].isdigit() and config["max_user_connections"] == "0"
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------
# What it shows


def test_saturated_pool_in_show_pools_and_metrics(client, server, svc):
    pool = make_pool(client, svc, size=2)
    name = pool["name"]
    holders = [psycopg.connect(pool["connection-uri"]) for _ in range(2)]
    done = threading.Event()
    try:
        for c in holders:
            c.execute("SELECT 1")  # opens a transaction (not autocommit): the server is held
        def third():
            with psycopg.connect(pool["connection-uri"], autocommit=True) as c:
                c.execute("SELECT 1")
            done.set()
        t = threading.Thread(target=third, daemon=True)
        t.start()
        row = wait_until(lambda: (lambda r: r if r["cl_waiting"] >= 1 else None)(pool_row(svc, name)),
                         what="a waiting client")
        assert row["sv_active"] == 2 and row["cl_active"] == 2, row
        assert row["pool_mode"] == "transaction" and row["user"] == "appuser"
        m = scrape(server)
        assert pool_series(m, "pgbay_pool_servers_active", svc, name) == 2
        assert pool_series(m, "pgbay_pool_clients_waiting", svc, name) >= 1
        assert pool_series(m, "pgbay_pool_clients_active", svc, name) == 2
        assert pool_series(m, "pgbay_pool_max_wait_seconds", svc, name) > 0
        assert not done.is_set()
    finally:
        for c in holders:
            c.rollback()
            c.close()
    assert done.wait(20), "the waiting client was never served"
    after = pool_row(svc, name)
    assert after["cl_waiting"] == 0 and after["sv_active"] == 0, after


def test_show_stats_counts_a_pgbench_run(client, server, svc):
    pool = make_pool(client, svc, size=4)
    uri = pool["connection-uri"]
    init = subprocess.run(["pgbench", "-i", "-s", "1", "-q", uri], capture_output=True, text=True,
                          timeout=120)
    assert init.returncode == 0, init.stderr
    def stats():
        return [r for r in show(svc, "STATS") if r["database"] == pool["name"]][0]
    before = stats()
    run = subprocess.run(["pgbench", "-c", "4", "-j", "2", "-t", "50", "-n", uri],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    after = stats()
    xacts = after["total_xact_count"] - before["total_xact_count"]
    queries = after["total_query_count"] - before["total_query_count"]
    # 200 TPC-B transactions of 7 statements each (BEGIN ... END), plus the few one-statement
    # transactions pgbench runs at start (it reads the scale from pgbench_branches).
    assert 200 <= xacts <= 205, (before, after)
    assert queries - 200 * 7 == xacts - 200, (before, after)
    assert after["total_received"] > before["total_received"]
    assert after["total_sent"] > before["total_sent"]
    assert after["total_xact_time"] > before["total_xact_time"]
    assert after["total_query_time"] > before["total_query_time"]
    # Transaction pooling: every transaction gets a server of its own, even from a client that
    # sends its next one the moment it has the answer to the last one (pgbench over TLS did, in
    # about a quarter of its transactions, when the pooler read the client before flushing).
    assigned = after["total_server_assignment_count"] - before["total_server_assignment_count"]
    assert assigned == xacts, (before, after)
    totals = [r for r in show(svc, "STATS_TOTALS") if r["database"] == pool["name"]][0]
    assert totals["xact_count"] == after["total_xact_count"]
    m = scrape(server)
    assert pool_series(m, "pgbay_pool_transactions_total", svc, pool["name"]) == after["total_xact_count"]
    assert pool_series(m, "pgbay_pool_queries_total", svc, pool["name"]) == after["total_query_count"]


def test_prepared_statements_count_parses_and_binds(client, server, svc):
    pool = make_pool(client, svc)
    with psycopg.connect(pool["connection-uri"], autocommit=True) as c:
        for i in range(5):
            c.execute("SELECT %s::int", (i,), prepare=True)
    row = [r for r in show(svc, "STATS") if r["database"] == pool["name"]][0]
    assert row["total_client_parse_count"] == 1, row
    assert row["total_bind_count"] == 5, row
    m = scrape(server)
    assert pool_series(m, "pgbay_pool_client_binds_total", svc, pool["name"]) == 5
    assert pool_series(m, "pgbay_pool_server_binds_total", svc, pool["name"]) == 5
    assert pool_series(m, "pgbay_pool_server_parses_total", svc, pool["name"]) >= 1


def test_metrics_parse_and_name_every_series(client, server, svc):
    pool = make_pool(client, svc)
    psql_ok(pool["connection-uri"], "SELECT 1")
    m = scrape(server)
    for name in [
        "pgbay_pool_clients_active", "pgbay_pool_clients_waiting", "pgbay_pool_servers_active",
        "pgbay_pool_servers_idle", "pgbay_pool_servers_used", "pgbay_pool_servers_login",
        "pgbay_pool_max_wait_seconds", "pgbay_pool_transactions_total",
        "pgbay_pool_queries_total", "pgbay_pool_received_bytes_total",
        "pgbay_pool_sent_bytes_total", "pgbay_pool_transaction_time_seconds_total",
        "pgbay_pool_query_time_seconds_total", "pgbay_pool_wait_time_seconds_total",
        "pgbay_pool_server_assignments_total", "pgbay_pool_client_parses_total",
        "pgbay_pool_server_parses_total", "pgbay_pool_client_binds_total",
        "pgbay_pool_server_binds_total",
    ]:
        assert pool_series(m, name, svc, pool["name"]) is not None, name
    assert pool_series(m, "pgbay_pool_transactions_total", svc, pool["name"]) >= 1
    assert pool_series(m, "pgbay_pool_servers_idle", svc, pool["name"]) == 1


def test_show_clients_and_servers_list_the_connections(client, svc):
    pool = make_pool(client, svc)
    name = pool["name"]
    with psycopg.connect(pool["connection-uri"] + "&application_name=lister") as app:
        pid = app.execute("SELECT pg_backend_pid()").fetchone()[0]  # transaction left open
        clients = [r for r in show(svc, "CLIENTS") if r["database"] == name]
        servers = [r for r in show(svc, "SERVERS") if r["database"] == name]
        assert len(clients) == 1 and len(servers) == 1, (clients, servers)
        c, s = clients[0], servers[0]
        assert (c["type"], c["user"], c["state"], c["addr"], c["tls"], c["application_name"]) == \
            ("C", "appuser", "active", "127.0.0.1", "TLS", "lister"), c
        assert c["local_port"] == svc.bouncer_port and c["connect_time"].endswith(" UTC")
        assert (s["type"], s["state"], s["remote_pid"], s["port"]) == ("S", "active", pid, svc.pg_port) \
            or (s["type"], s["state"], s["remote_pid"]) == ("S", "active", pid), s
        assert c["link"] == s["ptr"] and s["link"] == c["ptr"], (c, s)
        app.rollback()
        idle = [r for r in show(svc, "SERVERS") if r["database"] == name][0]
        assert idle["state"] == "idle" and idle["link"] == "", idle


# --------------------------------------------------------------------------------------------
# Commands


def test_pause_holds_queries_until_resume(client, svc):
    pool = make_pool(client, svc)
    name = pool["name"]
    with psycopg.connect(pool["connection-uri"], autocommit=True) as app, \
            psycopg.connect(console_uri(svc), autocommit=True) as console:
        app.execute("SELECT 1")
        console.execute(f"PAUSE {name}")
        assert [r for r in console.execute("SHOW DATABASES").fetchall() if r[0] == name][0][15] == 1
        result = {}
        def query():
            result["v"] = app.execute("SELECT 42").fetchone()[0]
        t = threading.Thread(target=query, daemon=True)
        t.start()
        wait_until(lambda: pool_row(svc, name)["cl_waiting"] == 1, what="the query to wait")
        time.sleep(0.5)
        assert "v" not in result, "a query ran while the pool was paused"
        console.execute(f"RESUME {name}")
        t.join(10)
        assert result.get("v") == 42
        with pytest.raises(psycopg.Error) as e:
            console.execute(f"RESUME {name}")
        assert f"database {name} is not paused" in str(e.value)


def test_pause_waits_for_the_running_transaction(client, svc):
    pool = make_pool(client, svc)
    name = pool["name"]
    with psycopg.connect(pool["connection-uri"]) as app, \
            psycopg.connect(console_uri(svc), autocommit=True) as console:
        app.execute("SELECT 1")  # a transaction stays open
        paused = threading.Event()
        def pause():
            with psycopg.connect(console_uri(svc), autocommit=True) as c:
                c.execute(f"PAUSE {name}")
            paused.set()
        threading.Thread(target=pause, daemon=True).start()
        time.sleep(0.5)
        assert not paused.is_set(), "PAUSE returned while a transaction was running"
        app.commit()
        assert paused.wait(10)
        console.execute(f"RESUME {name}")


def test_reconnect_kill_and_wait_close(client, svc):
    pool = make_pool(client, svc)
    name = pool["name"]
    with psycopg.connect(console_uri(svc), autocommit=True) as console:
        with psycopg.connect(pool["connection-uri"], autocommit=True) as app:
            pid = app.execute("SELECT pg_backend_pid()").fetchone()[0]
            console.execute(f"RECONNECT {name}")
            console.execute(f"WAIT_CLOSE {name}")
            assert app.execute("SELECT pg_backend_pid()").fetchone()[0] != pid
            console.execute(f"KILL {name}")
            with pytest.raises(psycopg.OperationalError) as e:
                app.execute("SELECT 1")
            assert "database removed" in str(e.value)
        console.execute(f"RESUME {name}")
        assert psql_ok(pool["connection-uri"], "SELECT 7") == ["7"]
        with pytest.raises(psycopg.Error) as e:
            console.execute("KILL nosuchpool")
        assert "no such database: nosuchpool" in str(e.value)


# --------------------------------------------------------------------------------------------
# The exporter


@pytest.fixture(scope="module")
def exporter_bin():
    """prometheus-pgbouncer-exporter, installed --no-deps (its pinned psycopg2 needs a compiler;
    psycopg2-binary and its other deps come from tests/requirements.txt)."""
    bindir = Path(sys.executable).parent
    exe = bindir / "pgbouncer-exporter"
    if not exe.exists():
        r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", EXPORTER],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
    return exe


def test_exporter_scrapes_the_console(client, svc, exporter_bin, tmp_path):
    from conftest import spare_port
    pool = make_pool(client, svc)
    psql_ok(pool["connection-uri"], "SELECT 1")
    port = spare_port()
    (tmp_path / "config.yml").write_text(
        f"exporter_host: 127.0.0.1\nexporter_port: {port}\n"
        f"pgbouncers:\n  - dsn: {console_uri(svc)}\n")
    proc = subprocess.Popen([str(exporter_bin), "--config", str(tmp_path / "config.yml")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def metrics():
            try:
                return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            except requests.ConnectionError:
                return None
        text = wait_until(metrics, timeout=30, what="the exporter")
        assert "pgbouncer_up 1.0" in text, text
        assert f'pgbouncer_pools_client_active_connections{{database="{pool["name"]}",user="appuser"}}' \
            in text, text
        assert f'pgbouncer_stats_transactions_total{{database="{pool["name"]}"}} 1.0' in text, text
    finally:
        proc.terminate()
        out = proc.communicate(timeout=10)[0]
        print(out)
