"""Read replicas (issue 19): a service created with a read_replica integration is a physical
streaming replica of its source: it serves the source's rows within seconds, refuses writes,
follows its source across a failover, and deleting the integration promotes it.
"""

import os
import shutil
import signal
import time
from pathlib import Path

import psycopg
import pytest

from conftest import (
    PgbayServer,
    api_error,
    check_error_response,
    ok,
    provision,
    reveal,
    signed,
    unique,
    uri_with,
    wait_service_running,
)
from test_ha import master, patroni_pids, postmaster_of, roles, tx_pool, wait_for


@pytest.fixture(scope="module")
def node():
    srv = PgbayServer("replica")
    try:
        srv.start()
        yield srv
    finally:
        srv.close()


def rr(source):
    return [{"type": "read_replica", "source-service": source}]


def count(uri, table):
    with psycopg.connect(uri, autocommit=True, connect_timeout=5) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_a_read_replica_serves_reads_refuses_writes_and_is_promoted(node):
    c = node.client()
    src = provision(c, unique("rsrc"), plan="hobbyist-2")
    src_pool = tx_pool(c, src.name, "app")
    with psycopg.connect(src_pool, autocommit=True) as conn:
        conn.execute("CREATE TABLE r (n int PRIMARY KEY)")
        conn.execute("INSERT INTO r SELECT generate_series(1, 100)")
    name = unique("rrep")
    ok(c, c.create_dbaas_service_pg(name=name, plan="hobbyist-2", integrations=rr(src.name)))
    doc = wait_service_running(c, name)
    [integ] = doc["integrations"]
    assert integ["type"] == "read_replica" and integ["source"] == src.name
    assert integ["dest"] == name and integ["is-active"] is True
    assert c.get_dbaas_service_pg(name=src.name)["integrations"] == [integ]
    assert c.get_dbaas_integration(id=integ["id"]) == integ
    # The replica has the source's users: the source's admin password logs in.
    assert doc["uri"].split("@")[0].split(":")[-1] == src.admin_password
    rep_pool = tx_pool(c, name, "reads")
    assert count(rep_pool, "r") == 100

    # A row written to the source through a pool is served by the replica within 5 s.
    with psycopg.connect(src_pool, autocommit=True) as conn:
        conn.execute("INSERT INTO r VALUES (101)")
    with psycopg.connect(rep_pool, autocommit=True) as conn:
        wait_for("the row on the replica", 5, lambda: conn.execute(
            "SELECT count(*) FROM r").fetchone()[0] == 101, every=0.05)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO r VALUES (999)")

    # Its users and databases are the source's; the source cannot go before it.
    with api_error(409, "read replica"):
        c.create_dbaas_pg_database(service_name=name, database_name="other")
    with api_error(409, name):
        c.delete_dbaas_service_pg(name=src.name)
    with api_error(400, "settings"):
        c.update_dbaas_integration(id=integ["id"], settings={"x": 1})
    # A user made on the source logs in through the replica's pools too.
    ok(c, c.create_dbaas_postgres_user(service_name=src.name, username="reader"))
    pw = reveal(c, src.name, "reader")
    ok(c, c.create_dbaas_pg_connection_pool(
        service_name=name, name="byreader", database_name="defaultdb", mode="transaction",
        size=1, username="reader"))
    by_reader = [p for p in c.get_dbaas_service_pg(name=name)["connection-pools"]
                 if p["name"] == "byreader"][0]["connection-uri"]
    with psycopg.connect(uri_with(by_reader, password=pw), autocommit=True) as conn:
        wait_for("the new user on the replica", 10,
                 lambda: conn.execute("SELECT current_user").fetchone() == ("reader",))

    # Deleting the integration promotes it: writable, and no longer following the source.
    ok(c, c.delete_dbaas_integration(id=integ["id"]))
    assert c.get_dbaas_service_pg(name=name)["integrations"] == []
    assert c.get_dbaas_service_pg(name=src.name)["integrations"] == []
    with psycopg.connect(rep_pool, autocommit=True) as conn:
        wait_for("a write on the promoted service", 30,
                 lambda: conn.execute("INSERT INTO r VALUES (1000)") or True)
    with psycopg.connect(src_pool, autocommit=True) as conn:
        conn.execute("INSERT INTO r VALUES (102)")
    time.sleep(1.0)  # the absence of replication can only be seen after a while
    assert count(rep_pool, "r") == 102  # 101 + its own 1000, not the source's 102
    # Its replication role on the source is gone.
    with psycopg.connect(src.uri, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'pgbay_rr_%'"
                            ).fetchone() == (0,)
    ok(c, c.delete_dbaas_service_pg(name=name))
    ok(c, c.delete_dbaas_service_pg(name=src.name))


def test_bad_read_replica_requests_are_refused(node):
    c = node.client()
    with api_error(400, "integrations.source-service"):
        c.create_dbaas_service_pg(name=unique("rbad"), plan="hobbyist-2", integrations=rr("nope"))
    with api_error(400, "integrations.type"):
        c.create_dbaas_service_pg(name=unique("rbad"), plan="hobbyist-2",
                                  integrations=[{"type": "logs", "source-service": "x"}])
    with api_error(400, "integration-type"):
        c.create_dbaas_integration(integration_type="nope", source_service="a",
                                   dest_service="b")
    with api_error(400, "source-service"):
        c.create_dbaas_integration(integration_type="read_replica", source_service="nope",
                                   dest_service="b")
    # A field of another type than a string is refused as such, not as missing.
    for field, body in (
            ("integration-type", {"integration-type": 5, "source-service": "a",
                                  "dest-service": "b"}),
            ("dest-service", {"integration-type": "read_replica", "source-service": "a",
                              "dest-service": ["b"]})):
        check_error_response(signed(node, "POST", "/dbaas-integration", body), 400, field,
                             "must be a string")
    types = c.list_dbaas_integration_types()["dbaas-integration-types"]
    assert [t["type"] for t in types] == ["read_replica"]
    names = [s["name"] for s in c.list_dbaas_services()["dbaas-services"]]
    assert not any(n.startswith("rbad") for n in names)


def ha_source(c, prefix: str):
    """A business service (primary and standby running) with a transaction pool and an empty
    table f: (name, document, pool URI)."""
    src = unique(prefix)
    ok(c, c.create_dbaas_service_pg(name=src, plan="business-4"))
    doc = wait_for("both members running", 300, lambda: (
        d := c.get_dbaas_service_pg(name=src),
        d["state"] == "running"
        and roles(d) == [("master", "running"), ("standby", "running")] and d)[1])
    src_pool = tx_pool(c, src, "app")
    with psycopg.connect(src_pool, autocommit=True) as conn:
        conn.execute("CREATE TABLE f (n int)")
    return src, doc, src_pool


def write_after_failover(c, src: str, old: str, src_pool: str, n: int) -> None:
    """Once a member other than `old` is the primary, inserts `n` into f through the pool.
    The write waits for the promotion: one sent while the old primary's backends outlive its
    postmaster for a moment can still commit there, unreplicated (asynchronous replication),
    and be lost with it."""
    wait_for("the standby promoted", 60, lambda: master(c.get_dbaas_service_pg(name=src)) != old)

    def write() -> bool:
        # As an application does: a statement sent to a server that dies under it loses its
        # connection (08006), and the next attempt connects again.
        with psycopg.connect(src_pool, autocommit=True) as conn:
            conn.execute("INSERT INTO f VALUES (%s)", (n,))
        return True
    wait_for("a write after the failover", 90, write)


@pytest.mark.skipif(shutil.which("patroni") is None or shutil.which("etcd") is None,
                    reason="patroni and etcd are not installed")
def test_a_replica_follows_its_source_across_a_failover(node):
    c = node.client()
    src, doc, src_pool = ha_source(c, "rha")
    with api_error(400, "integrations"):
        c.create_dbaas_service_pg(name=unique("rbad"), plan="business-4", integrations=rr(src))
    name = unique("rrf")
    ok(c, c.create_dbaas_service_pg(name=name, plan="hobbyist-2", integrations=rr(src)))
    rep = wait_service_running(c, name)["uri"]
    old = master(doc)
    os.kill(patroni_pids(node, src)[old], signal.SIGKILL)
    os.kill(postmaster_of(node, src, old), signal.SIGKILL)
    write_after_failover(c, src, old, src_pool, 1)
    # The replica streams from the new primary (through the source's own port).
    wait_for("the row written after the failover on the replica", 60,
             lambda: count(rep, "f") >= 1)
    ok(c, c.delete_dbaas_service_pg(name=name))
    ok(c, c.delete_dbaas_service_pg(name=src))


def walreceiver_of(postmaster: int) -> int:
    """The pid of the WAL receiver among a postmaster's children."""
    for child in Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split():
        try:
            title = Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "walreceiver" in title:
            return int(child)
    raise AssertionError(f"no walreceiver under postmaster {postmaster}")


@pytest.mark.skipif(shutil.which("patroni") is None or shutil.which("etcd") is None,
                    reason="patroni and etcd are not installed")
def test_a_replica_ahead_of_the_promoted_standby_is_made_again(node):
    """Asynchronous replication: rows reach the read replica but not the standby, then the
    primary dies and the standby is promoted. PostgreSQL cannot take the replica onto the new
    timeline (it forked before the replica's position); pgbay makes the replica again from the
    new primary, so it serves what the source serves, not the rows the source lost."""
    c = node.client()
    src, doc, src_pool = ha_source(c, "rdv")
    with psycopg.connect(src_pool, autocommit=True) as conn:
        conn.execute("INSERT INTO f VALUES (0)")
    name = unique("rdvr")
    ok(c, c.create_dbaas_service_pg(name=name, plan="hobbyist-2", integrations=rr(src)))
    rep = wait_service_running(c, name)["uri"]
    wait_for("the first row on the replica", 60, lambda: count(rep, "f") == 1)
    old = master(doc)
    [standby] = [n["name"] for n in doc["node-states"] if n["role"] == "standby"]
    primary = postmaster_of(node, src, old)
    # The standby's WAL receiver is stopped, the rows are written (the replica gets them),
    # the primary dies, and then the stopped receiver is killed: what its socket held is
    # gone with it, and its postmaster restarts it without the rows.
    receiver = walreceiver_of(postmaster_of(node, src, standby))
    os.kill(receiver, signal.SIGSTOP)
    try:
        with psycopg.connect(src_pool, autocommit=True) as conn:
            conn.execute("INSERT INTO f SELECT generate_series(1, 10)")
        wait_for("the ten rows on the replica", 30, lambda: count(rep, "f") == 11)
        os.kill(patroni_pids(node, src)[old], signal.SIGKILL)
        os.kill(primary, signal.SIGKILL)
    finally:
        os.kill(receiver, signal.SIGKILL)
    write_after_failover(c, src, old, src_pool, 100)
    with psycopg.connect(src_pool, autocommit=True) as conn:
        on_source = conn.execute("SELECT count(*) FROM f").fetchone()[0]
    assert on_source < 11, "the standby had the rows: nothing diverged"
    # The replica is made again from the new primary: it has exactly what the source has.
    wait_for("the replica made again from the new primary", 120,
             lambda: count(rep, "f") == on_source)
    ok(c, c.delete_dbaas_service_pg(name=name))
    ok(c, c.delete_dbaas_service_pg(name=src))


def test_a_read_replica_that_lost_its_data_directory_is_made_again_from_its_source(node):
    """A read replica has no backups of its own: when its data directory is gone, pgbay makes it
    again from its source (not from a repository it does not have), on the same port, and it
    streams what the source writes after."""
    c = node.client()
    src = provision(c, unique("rls"), plan="hobbyist-2")
    with psycopg.connect(src.uri, autocommit=True) as conn:
        conn.execute("CREATE TABLE g (n int)")
        conn.execute("INSERT INTO g SELECT generate_series(1, 5)")
    name = unique("rlsr")
    ok(c, c.create_dbaas_service_pg(name=name, plan="hobbyist-2", integrations=rr(src.name)))
    rep = wait_service_running(c, name)["uri"]
    wait_for("the rows on the replica", 60, lambda: count(rep, "g") == 5)
    node.stop()
    shutil.rmtree(node.data_dir / "services" / name / "pgdata")
    node.start()
    c = node.client()
    with psycopg.connect(src.uri, autocommit=True) as conn:
        conn.execute("INSERT INTO g SELECT generate_series(6, 8)")
    wait_for("the replica made again from its source", 180, lambda: count(rep, "g") == 8)
    assert wait_service_running(c, name)["uri"] == rep
    ok(c, c.delete_dbaas_service_pg(name=name))
    ok(c, c.delete_dbaas_service_pg(name=src.name))


def test_post_integration_makes_a_new_empty_service_a_replica(node):
    c = node.client()
    src = provision(c, unique("psrc"), plan="hobbyist-2")
    with psycopg.connect(src.uri, autocommit=True) as conn:
        conn.execute("CREATE TABLE p (n int)")
        conn.execute("INSERT INTO p VALUES (1), (2)")
    dest = provision(c, unique("pdst"), plan="hobbyist-2")
    busy = provision(c, unique("pbusy"), plan="hobbyist-2")
    with psycopg.connect(busy.uri, autocommit=True) as conn:
        conn.execute("CREATE TABLE mine (n int)")
    # A service with data of its own is not replaced.
    with api_error(400, "dest-service"):
        c.create_dbaas_integration(integration_type="read_replica", source_service=src.name,
                                   dest_service=busy.name)
    with psycopg.connect(busy.uri, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM mine").fetchone() == (0,)
    ok(c, c.create_dbaas_integration(integration_type="read_replica", source_service=src.name,
                                     dest_service=dest.name))
    doc = wait_service_running(c, dest.name)
    [integ] = doc["integrations"]
    assert integ["source"] == src.name and integ["dest"] == dest.name
    assert count(doc["uri"], "p") == 2
    for name in (dest.name, busy.name, src.name):
        ok(c, c.delete_dbaas_service_pg(name=name))
