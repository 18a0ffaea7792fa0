"""End to end: every pool created through the API is served at once by pgbay's pooler, over TLS.

The official `exoscale` client creates services, databases, users and pools; psycopg 3, psql and
pgbench connect through each pool's `connection-uri` (sslmode=require and verify-full against the
CA from GET /v2/dbaas-ca-certificate) and run transactions against the real PostgreSQL cluster.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from urllib.parse import urlsplit

import psycopg
import pytest

from conftest import (
    PgbayServer,
    find_pool,
    ok,
    provision,
    psql,
    psql_ok,
    reveal,
    unique,
    wait_op,
)


@pytest.fixture(scope="module")
def svc(client):
    """A service with a database `app` and a user `appuser`, shared by this module's tests."""
    s = provision(client, unique("dp"))
    ok(client, client.create_dbaas_pg_database(service_name=s.name, database_name="app"))
    ok(client, client.create_dbaas_postgres_user(service_name=s.name, username="appuser"))
    with psycopg.connect(s.uri_for(dbname="app"), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t (id int, note text)")
        conn.execute("GRANT ALL ON t TO appuser")
        # PostgreSQL 15 no longer lets every role create in `public`; pgbench -i needs it.
        conn.execute("GRANT CREATE ON SCHEMA public TO appuser")
    return s


def make_pool(client, svc, *, mode="transaction", size=10, username="appuser", database="app"):
    name = unique(f"p-{mode}")
    ok(client, client.create_dbaas_pg_connection_pool(
        service_name=svc.name, name=name, database_name=database, mode=mode, size=size,
        username=username))
    pool = find_pool(client.get_dbaas_service_pg(name=svc.name), name)
    assert pool is not None
    return pool


def backends_of(svc, user: str, database: str = "app") -> int:
    """Server connections the pooler holds for `user` on `database`, seen by PostgreSQL itself."""
    rows = psql_ok(svc.uri, f"SELECT count(*) FROM pg_stat_activity WHERE usename = '{user}' "
                            f"AND datname = '{database}'")
    return int(rows[0])


def wait_until(pred, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.mark.parametrize("mode", ["session", "transaction", "statement"])
def test_pool_serves_at_once_in_each_mode(client, svc, mode):
    pool = make_pool(client, svc, mode=mode)
    uri = pool["connection-uri"]
    u = urlsplit(uri)
    assert u.port == svc.bouncer_port and u.path == "/" + pool["name"]
    assert "sslmode=require" in uri
    # Right after the operation returned: served, over TLS, as the pool's user on its database.
    with psycopg.connect(uri, autocommit=True) as conn:
        row = conn.execute("SELECT current_user, current_database(), ssl FROM pg_stat_ssl "
                           "WHERE pid = pg_backend_pid()").fetchone()
        assert row[0] == "appuser" and row[1] == "app"
        assert conn.pgconn.ssl_in_use
        marker = unique(mode)
        if mode == "statement":
            conn.execute("INSERT INTO t VALUES (1, %s)", (marker,))
        else:
            with conn.transaction():
                conn.execute("INSERT INTO t VALUES (1, %s)", (marker,))
                conn.execute("INSERT INTO t VALUES (2, %s)", (marker,))
        n = conn.execute("SELECT count(*) FROM t WHERE note = %s", (marker,)).fetchone()[0]
        assert n == (1 if mode == "statement" else 2)
    assert psql_ok(uri, "SELECT 40 + 2") == ["42"]


def test_verify_full_with_the_api_ca(client, svc, tmp_path):
    pool = make_pool(client, svc)
    ca = client.get_dbaas_ca_certificate()["certificate"]
    (tmp_path / "ca.pem").write_text(ca)
    uri = pool["connection-uri"].replace("sslmode=require",
                                         f"sslmode=verify-full&sslrootcert={tmp_path / 'ca.pem'}")
    assert psql_ok(uri, "SELECT 'verified'") == ["verified"]
    with psycopg.connect(uri) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_pgbench_through_a_pool(client, svc):
    # A user of its own, so that PostgreSQL's count of its connections is this pool's alone.
    user = unique("bench")
    ok(client, client.create_dbaas_postgres_user(service_name=svc.name, username=user))
    psql_ok(svc.uri_for(dbname="app"), f'GRANT CREATE ON SCHEMA public TO "{user}"')
    pool = make_pool(client, svc, size=4, username=user)
    uri = pool["connection-uri"]
    init = subprocess.run(["pgbench", "-i", "-s", "1", "-q", uri], capture_output=True, text=True,
                          timeout=120)
    assert init.returncode == 0, init.stderr
    run = subprocess.run(["pgbench", "-c", "8", "-j", "2", "-t", "50", "-n", uri],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "number of transactions actually processed: 400/400" in run.stdout, run.stdout
    # 8 clients, at most 4 server connections: the pool's size holds.
    assert 1 <= backends_of(svc, user) <= 4


def test_live_update_keeps_the_session_and_enforces_the_new_size(client, svc):
    pool = make_pool(client, svc, mode="transaction", size=3)
    uri = pool["connection-uri"]
    marker = unique("upd")
    conn = psycopg.connect(uri)
    conn.execute("INSERT INTO t VALUES (1, %s)", (marker,))  # inside an open transaction
    ok(client, client.update_dbaas_pg_connection_pool(
        service_name=svc.name, connection_pool_name=pool["name"], size=1, mode="session"))
    # The client connected during the update keeps its session and finishes its transaction.
    conn.execute("INSERT INTO t VALUES (2, %s)", (marker,))
    conn.commit()
    assert conn.execute("SELECT count(*) FROM t WHERE note = %s", (marker,)).fetchone()[0] == 2
    conn.close()
    updated = find_pool(client.get_dbaas_service_pg(name=svc.name), pool["name"])
    assert updated["size"] == 1 and updated["mode"] == "session"
    # New size enforced: in session mode with size 1, one client holds the only server
    # connection, so a second client waits until the first one leaves.
    first = psycopg.connect(uri, autocommit=True)
    first_pid = first.execute("SELECT pg_backend_pid()").fetchone()[0]
    result = {}

    def second():
        with psycopg.connect(uri, autocommit=True) as c2:
            result["pid"] = c2.execute("SELECT pg_backend_pid()").fetchone()[0]

    t = threading.Thread(target=second)
    t.start()
    time.sleep(1.0)
    assert "pid" not in result, "a second server connection was opened beyond size 1"
    first.close()
    t.join(timeout=30)
    assert result.get("pid") == first_pid


def test_delete_pool_lets_the_transaction_finish_then_57P01(client, svc):
    pool = make_pool(client, svc, mode="transaction")
    uri = pool["connection-uri"]
    marker = unique("del")
    conn = psycopg.connect(uri)
    conn.execute("INSERT INTO t VALUES (1, %s)", (marker,))
    ok(client, client.delete_dbaas_pg_connection_pool(
        service_name=svc.name, connection_pool_name=pool["name"]))
    conn.execute("INSERT INTO t VALUES (2, %s)", (marker,))
    conn.commit()
    with pytest.raises(psycopg.OperationalError) as info:
        conn.execute("SELECT 1")
    assert pool["name"] in str(info.value)
    conn.close()
    assert psql_ok(svc.uri_for(dbname="app"),
                   f"SELECT count(*) FROM t WHERE note = '{marker}'") == ["2"]
    r = psql(uri, "SELECT 1")
    assert r.returncode != 0
    assert "does not exist" in r.stderr and pool["name"] in r.stderr, r.stderr


def test_password_reset_applies_to_new_logins_only(client, svc):
    user = unique("pwu")
    ok(client, client.create_dbaas_postgres_user(service_name=svc.name, username=user))
    psql_ok(svc.uri_for(dbname="app"), f'GRANT SELECT ON t TO "{user}"')
    pool = make_pool(client, svc, username=user)
    old_uri = pool["connection-uri"]
    established = psycopg.connect(old_uri, autocommit=True)
    ok(client, client.reset_dbaas_postgres_user_password(
        service_name=svc.name, username=user, password="a-brand-new-password-123"))
    r = psql(old_uri, "SELECT 1")
    assert r.returncode != 0 and "password authentication failed" in r.stderr, r.stderr
    new_uri = find_pool(client.get_dbaas_service_pg(name=svc.name), pool["name"])["connection-uri"]
    assert urlsplit(new_uri).password == "a-brand-new-password-123"
    assert psql_ok(new_uri, "SELECT 1") == ["1"]
    assert established.execute("SELECT count(*) >= 0 FROM t").fetchone() == (True,)
    established.close()
    assert reveal(client, svc.name, user) == "a-brand-new-password-123"


def test_ip_filter_is_enforced_at_the_pooler(client, svc):
    pool = make_pool(client, svc)
    uri = pool["connection-uri"]
    ok(client, client.update_dbaas_service_pg(name=svc.name, ip_filter=["192.0.2.0/24"]))
    try:
        r = psql(uri, "SELECT 1")
        assert r.returncode != 0
        assert "127.0.0.1" in r.stderr, r.stderr
    finally:
        ok(client, client.update_dbaas_service_pg(name=svc.name, ip_filter=[]))
    assert psql_ok(uri, "SELECT 1") == ["1"]


def test_pgbouncer_settings_reach_the_pooler_live(client, svc):
    user = unique("minu")
    ok(client, client.create_dbaas_postgres_user(service_name=svc.name, username=user))
    make_pool(client, svc, username=user, size=5)
    assert backends_of(svc, user) == 0
    ok(client, client.update_dbaas_service_pg(name=svc.name,
                                              pgbouncer_settings={"min_pool_size": 3}))
    try:
        wait_until(lambda: backends_of(svc, user) == 3, what="min_pool_size server connections")
    finally:
        ok(client, client.update_dbaas_service_pg(name=svc.name,
                                                  pgbouncer_settings={"min_pool_size": 0}))


def test_restart_brings_pools_back_on_the_same_uri():
    srv = PgbayServer("dp-restart")
    try:
        srv.start()
        c = srv.client()
        s = provision(c, unique("rs"))
        ok(c, c.create_dbaas_pg_connection_pool(service_name=s.name, name="keep",
                                                database_name="defaultdb"))
        uri = find_pool(c.get_dbaas_service_pg(name=s.name), "keep")["connection-uri"]
        assert psql_ok(uri, "SELECT 'before'") == ["before"]
        for how in ("sigterm", "kill9"):
            if how == "sigterm":
                assert srv.stop() == 0
            else:
                srv.kill9()
            r = psql(uri, "SELECT 1")
            assert r.returncode != 0, f"pool still served with pgbay stopped ({how})"
            srv.start()
            c = srv.client()
            again = find_pool(c.get_dbaas_service_pg(name=s.name), "keep")["connection-uri"]
            assert again == uri
            wait_until(lambda: psql(uri, "SELECT 1").returncode == 0, timeout=60,
                       what=f"pool served again after {how}")
            assert psql_ok(uri, "SELECT 'after'") == ["after"]
    finally:
        srv.close()


def test_service_delete_closes_the_listener(client):
    s = provision(client, unique("gone"))
    ok(client, client.create_dbaas_pg_connection_pool(service_name=s.name, name="p",
                                                      database_name="defaultdb"))
    uri = find_pool(client.get_dbaas_service_pg(name=s.name), "p")["connection-uri"]
    conn = psycopg.connect(uri, autocommit=True)
    assert conn.execute("SELECT 1").fetchone() == (1,)
    ok(client, client.delete_dbaas_service_pg(name=s.name))
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()
    r = psql(uri, "SELECT 1")
    assert r.returncode != 0


def test_pool_operation_fails_when_the_pooler_cannot_serve_its_service():
    """A change the pooler cannot apply (here: the service's pooler port is held by another
    process when pgbay starts) ends `failure` with the pooler's reason, never `success`; other
    services keep serving, and the service is served again once its port is free."""
    srv = PgbayServer("dp-bindfail")
    holder = None
    try:
        srv.start()
        c = srv.client()
        a, b = provision(c, unique("ok")), provision(c, unique("held"))
        for s, pool in ((a, "a1"), (b, "b1")):
            ok(c, c.create_dbaas_pg_connection_pool(service_name=s.name, name=pool,
                                                    database_name="defaultdb"))
        uri = {p: find_pool(c.get_dbaas_service_pg(name=s.name), p)["connection-uri"]
               for s, p in ((a, "a1"), (b, "b1"))}
        assert psql_ok(uri["b1"], "SELECT 'b1'") == ["b1"]

        assert srv.stop() == 0
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # The stopped pooler's connections may leave the port in TIME_WAIT; a listener elsewhere
        # would still hold it (Linux refuses a second listener even with SO_REUSEADDR).
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", b.bouncer_port))
        holder.listen(1)
        srv.start()
        c = srv.client()
        wait_until(lambda: psql(uri["a1"], "SELECT 1").returncode == 0, timeout=60,
                   what="the other service's pool served after the restart")

        op = c.create_dbaas_pg_connection_pool(service_name=b.name, name="b2",
                                               database_name="defaultdb")
        final = wait_op(c, op)
        assert final["state"] == "failure", final
        assert final["reason"] == "unavailable", final
        assert str(b.bouncer_port) in final["message"], final
        assert "in use" in final["message"], final
        # The failure is final: reading it again does not turn it into a success.
        assert c.get_operation(id=op["id"])["state"] == "failure"

        # The other service is untouched and still takes changes.
        ok(c, c.create_dbaas_pg_connection_pool(service_name=a.name, name="a2",
                                                database_name="defaultdb"))
        assert psql_ok(uri["a1"], "SELECT 'a1'") == ["a1"]
        a2 = find_pool(c.get_dbaas_service_pg(name=a.name), "a2")["connection-uri"]
        assert psql_ok(a2, "SELECT 'a2'") == ["a2"]

        # Once the port is free, the next change to the service binds it again.
        holder.close()
        holder = None
        ok(c, c.update_dbaas_pg_connection_pool(service_name=b.name, connection_pool_name="b2",
                                                size=5))
        assert psql_ok(uri["b1"], "SELECT 'b1 again'") == ["b1 again"]
        b2 = find_pool(c.get_dbaas_service_pg(name=b.name), "b2")["connection-uri"]
        assert psql_ok(b2, "SELECT 'b2'") == ["b2"]
    finally:
        if holder is not None:
            holder.close()
        srv.close()
