"""Many nodes, one control store (issue 16): three `pgbay serve` processes share one PostgreSQL
store the test starts, each on its own public host (127.0.0.1, 127.0.0.2, 127.0.0.3), data dir
and API port, all in one port window. A service created through one node is listed by the others;
a pool created through another answers logins on all three hosts; an operation is readable on
every node; services created at once through different nodes get distinct ports; a node whose
pgbay and clusters are killed with SIGKILL leaves the others serving, its pending work failed and
its services no longer `running` within 30 s, and serves again once it is back. Two nodes with one
name, and a node with another cluster key, are refused at start-up with one clear line.
"""

import concurrent.futures
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from conftest import (PgbayServer, PortWindow, component_port, find_pool, ok, provision,
                      unique, wait_for, wait_op)
from test_store_pg import StorePostgres

CLUSTER_KEY = "cluster-key-" + os.urandom(12).hex()
HOSTS = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]


def node_env(store: StorePostgres, name: str, key: str = CLUSTER_KEY) -> dict:
    return {"PGBAY_STORE": store.url, "PGPASSWORD": StorePostgres.PASSWORD,
            "PGBAY_CLUSTER_KEY": key, "PGBAY_NODE_NAME": name}


@pytest.fixture(scope="module")
def store():
    pg = StorePostgres()
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture(scope="module")
def nodes(store):
    window = PortWindow()
    started = []
    try:
        for i, host in enumerate(HOSTS, start=1):
            n = PgbayServer(f"node{i}", env=node_env(store, f"n{i}"), public_host=host,
                            ports=window)
            started.append(n)
            n.start()
        yield started
    finally:
        for n in started:
            n.close()
        window.release()


def on_host(uri: str, host: str) -> str:
    """The same URI with another host."""
    scheme, rest = uri.split("://", 1)
    userinfo, hostport = rest.split("@", 1)
    _, after = hostport.split(":", 1)
    return f"{scheme}://{userinfo}@{host}:{after}"


def login(uri: str) -> tuple:
    with psycopg.connect(uri, connect_timeout=3) as conn:
        return conn.execute("SELECT current_user, current_database()").fetchone()


def listing(node) -> list:
    return sorted((s["name"], s["plan"], s["state"])
                  for s in node.client().list_dbaas_services()["dbaas-services"])


def placed_on(doc: dict) -> str:
    [master] = [n for n in doc["node-states"] if n["role"] == "master"]
    return master["name"]


def test_a_pool_made_through_one_node_is_served_on_every_node(nodes):
    n1, n2, n3 = nodes
    c1, c2 = n1.client(), n2.client()
    svc = provision(c1, unique("mn"), plan="hobbyist-2")
    # Listed identically by every node.
    assert any(s[0] == svc.name for s in listing(n1))
    assert listing(n1) == listing(n2) == listing(n3)
    doc2 = c2.get_dbaas_service_pg(name=svc.name)
    assert placed_on(doc2) in {"n1", "n2", "n3"}
    # connection-info lists the service on every live node.
    hosts = sorted(u.split("@", 1)[1].split(":", 1)[0] for u in doc2["connection-info"]["uri"])
    assert hosts == HOSTS, doc2["connection-info"]

    # A user and a pool through the second node (forwarded to the service's node if needed);
    # the operation is readable through the third.
    ok(c2, c2.create_dbaas_postgres_user(service_name=svc.name, username="app"))
    pool = unique("p")
    op = c2.create_dbaas_pg_connection_pool(
        service_name=svc.name, name=pool, database_name="defaultdb", mode="transaction",
        size=3, username="app")
    final = ok(c2, op)
    assert n3.client().get_operation(id=op["id"])["state"] == "success"
    done = time.monotonic()
    uri = find_pool(c2.get_dbaas_service_pg(name=svc.name), pool)["connection-uri"]
    # Every node serves it within 5 s of the operation's success.
    for host in HOSTS:
        got = wait_for(f"a login through {host}", 5, lambda h=host: login(on_host(uri, h)))
        assert got == ("app", "defaultdb"), got
    assert time.monotonic() - done < 5 + 3, final
    # Another node reaches the service's cluster over TCP with TLS (verified against pgbay's CA;
    # the pooler refuses a server that does not speak it); its own node over the Unix socket.
    owner = placed_on(doc2)
    for i, host in enumerate(HOSTS, start=1):
        with psycopg.connect(on_host(uri, host), connect_timeout=3) as conn:
            ssl = conn.execute(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0]
        assert ssl is (f"n{i}" != owner), (host, owner, ssl)
    # The service's own URI answers on every node too.
    admin_uri = doc2["uri"]
    for host in HOSTS:
        with psycopg.connect(on_host(admin_uri, host), connect_timeout=3) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_services_created_at_once_through_different_nodes_get_distinct_ports(nodes):
    _, n2, n3 = nodes
    names = [unique("at-once"), unique("at-once")]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(provision, n.client(), name, plan="hobbyist-2")
                   for n, name in zip((n2, n3), names)]
        made = [f.result() for f in futures]
    ports = [(s.pg_port, s.bouncer_port) for s in made]
    flat = [p for pair in ports for p in pair]
    assert len(set(flat)) == 4, ports
    # Placed on the nodes with the fewest services: not both on one node.
    docs = [n2.client().get_dbaas_service_pg(name=n) for n in names]
    assert all(d["state"] == "running" for d in docs)


def test_two_nodes_with_one_name_or_another_key_are_refused(nodes, store):
    twin = PgbayServer("twin", env=node_env(store, "n1"))
    try:
        with pytest.raises(RuntimeError):
            twin.start()
        assert "node name \"n1\" is in use by a live node" in twin.log_text(), twin.log_tail()
    finally:
        twin.close()
    stranger = PgbayServer("stranger", env=node_env(store, "n9", key="another-key-" + "x" * 16))
    try:
        with pytest.raises(RuntimeError):
            stranger.start()
        assert "PGBAY_CLUSTER_KEY does not open the store's secret key" in stranger.log_text()
        assert "another-key" not in stranger.log_text()
    finally:
        stranger.close()
    # Nothing was registered for them.
    names = [r[0] for r in store.query("SELECT name FROM nodes ORDER BY name")]
    assert names == ["n1", "n2", "n3"], names


def test_a_read_replica_made_through_another_node_runs_on_its_sources_node(nodes):
    n1, n2, _ = nodes
    c1, c2 = n1.client(), n2.client()
    src = provision(c1, unique("rsrc"), plan="hobbyist-2")
    with psycopg.connect(src.uri, autocommit=True) as conn:
        conn.execute("CREATE TABLE t AS SELECT generate_series(1, 100) AS n")
    name = unique("rr")
    ok(c2, c2.create_dbaas_service_pg(
        name=name, plan="hobbyist-2",
        integrations=[{"type": "read_replica", "source-service": src.name}]))
    doc = wait_for("the replica running", 120, lambda: (
        d := c2.get_dbaas_service_pg(name=name), d["state"] == "running" and d)[1])
    assert placed_on(doc) == placed_on(c1.get_dbaas_service_pg(name=src.name))
    with psycopg.connect(doc["uri"], autocommit=True) as ro:
        wait_for("the rows on the replica", 10, lambda: ro.execute(
            "SELECT count(*) FROM t").fetchone()[0] == 100)


def kill_node(node):
    """SIGKILL the node's pgbay and every PostgreSQL it runs: the machine is gone."""
    pids = node.postmaster_pids()
    node.kill9()
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_node_loss_and_return(nodes):
    n1, n2, n3 = nodes
    c1 = n1.client()
    # A service of the first node with a pool, served on every node.
    svc = provision(c1, unique("keep"), plan="hobbyist-2")
    ok(c1, c1.create_dbaas_postgres_user(service_name=svc.name, username="app"))
    pool = unique("p")
    ok(c1, c1.create_dbaas_pg_connection_pool(
        service_name=svc.name, name=pool, database_name="defaultdb", mode="transaction",
        size=2, username="app"))
    uri = find_pool(c1.get_dbaas_service_pg(name=svc.name), pool)["connection-uri"]
    # A service placed on the third node, still being made when the node dies.
    c3 = n3.client()
    lost_name = unique("lost")
    before = {s[0] for s in listing(n3)}
    op = c3.create_dbaas_service_pg(name=lost_name, plan="hobbyist-2")
    doc = c3.get_dbaas_service_pg(name=lost_name)
    lost_node = placed_on(doc)
    assert lost_name not in before
    # A running service of the third node (the previous test placed one there).
    running_on_n3 = [s["name"] for s in c1.list_dbaas_services()["dbaas-services"] if s["state"] == "running"
                     and placed_on(c1.get_dbaas_service_pg(name=s["name"])) == "n3"]
    assert running_on_n3, "no running service was placed on n3"
    # Placed on the node it was asked of: every node holds as many services as it (a tie).
    assert lost_node == "n3", doc["node-states"]
    kill_node(n3)
    killed = time.monotonic()
    wait_for("the lost node's running service to leave running", 30, lambda: (
        c1.get_dbaas_service_pg(name=running_on_n3[0])["state"] != "running"))
    final = wait_for("the lost node's operation to end", 30,
                     lambda: (o := c1.get_operation(id=op["id"]))["state"] != "pending" and o)
    assert final["state"] == "failure", final
    assert "n3" in final.get("message", ""), final
    # A change to its services is refused with the node named; reads still answer.
    with pytest.raises(Exception) as e:
        c1.update_dbaas_service_pg(name=lost_name, termination_protection=True)
    assert "n3" in str(e.value)
    assert time.monotonic() - killed < 35
    # The other nodes keep serving, and their APIs answer.
    for host in HOSTS[:2]:
        assert login(on_host(uri, host)) == ("app", "defaultdb")
    assert listing(n1) == listing(n2)

    # The node comes back: its clusters start again and it serves every pool within 30 s.
    n3.start()
    back = time.monotonic()
    wait_for("the pool on the returned node", 30, lambda: login(on_host(uri, HOSTS[2])))
    assert time.monotonic() - back < 30
    # Its running service is served again.
    wait_for("the returned node's service running", 30, lambda: (
        c1.get_dbaas_service_pg(name=running_on_n3[0])["state"] == "running"))
    wait_op(c1, op)


def test_service_host_names_every_uri(tmp_path):
    """`--service-host`: the name that reaches every node is written into every URI, and the
    certificates name it, so `verify-full` works through it."""
    with PgbayServer("svchost", env={"PGBAY_SERVICE_HOST": "localhost"}) as node:
        c = node.client()
        svc = provision(c, unique("sh"), plan="hobbyist-2")
        ok(c, c.create_dbaas_postgres_user(service_name=svc.name, username="app"))
        ok(c, c.create_dbaas_pg_connection_pool(
            service_name=svc.name, name="p", database_name="defaultdb", mode="session",
            size=1, username="app"))
        doc = c.get_dbaas_service_pg(name=svc.name)
        pool_uri = find_pool(doc, "p")["connection-uri"]
        for uri in [doc["uri"], pool_uri] + doc["connection-info"]["uri"]:
            assert uri.split("@", 1)[1].startswith("localhost:"), uri
        ca = tmp_path / "ca.pem"
        ca.write_text(c.get_dbaas_ca_certificate()["certificate"])
        for uri in (doc["uri"], pool_uri):
            verified = uri.replace("sslmode=require", "sslmode=verify-full") + f"&sslrootcert={ca}"
            with psycopg.connect(verified, connect_timeout=3) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.skipif(shutil.which("pgbackrest") is None, reason="pgbackrest is not installed")
def test_a_lost_nodes_service_is_rebuilt_on_a_live_node_from_its_backups():
    """Two nodes sharing a store and a backup repository, `--rebuild-lost-after 5`: a service
    of the second node, whose WAL is archived, is rebuilt on the first once the second has been
    dead for longer (pgbay and clusters killed), with every archived row, on the same ports."""
    store = StorePostgres()
    window = PortWindow()
    # Traversable by the services' OS users (pytest's tmp_path is not).
    shared = Path(tempfile.mkdtemp(prefix="pgbay-test-shared-repo-"))
    os.chmod(shared, 0o755)
    repo = shared / "backups"
    nodes = []
    try:
        for i, host in enumerate(HOSTS[:2], start=1):
            env = node_env(store, f"r{i}")
            env.update(PGBAY_BACKUP_REPO=str(repo), PGBAY_REBUILD_LOST_AFTER="5")
            n = PgbayServer(f"rnode{i}", env=env, public_host=host, ports=window)
            nodes.append(n)
            n.start()
        a, b = nodes
        cb = b.client()
        svc = provision(cb, unique("moved"), plan="hobbyist-2")
        doc = cb.get_dbaas_service_pg(name=svc.name)
        assert placed_on(doc) == "r2", doc["node-states"]
        ok(cb, cb.create_dbaas_postgres_user(service_name=svc.name, username="app"))
        ok(cb, cb.create_dbaas_pg_connection_pool(
            service_name=svc.name, name="p", database_name="defaultdb", mode="transaction",
            size=2, username="app"))
        wait_for("a backup", 120, lambda: cb.get_dbaas_service_pg(name=svc.name)["backups"],
                 every=1.0)
        with psycopg.connect(svc.uri, autocommit=True) as conn:
            conn.execute("CREATE TABLE t AS SELECT generate_series(1, 1000) AS n")
            conn.execute("GRANT SELECT ON t TO app")
            lsn = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
            # More than one WAL segment after the rows (the admin may not pg_switch_wal): the
            # segment holding them is complete and archived.
            conn.execute("CREATE TABLE filler AS SELECT repeat('x', 1000) AS x "
                         "FROM generate_series(1, 20000)")
            wait_for("the rows' WAL archived", 60, lambda: conn.execute(
                "SELECT last_archived_wal >= %s FROM pg_stat_archiver", (lsn,)).fetchone()[0])
        kill_node(b)
        ca = a.client()
        doc = wait_for("the service rebuilt on the live node", 120, lambda: (
            d := ca.get_dbaas_service_pg(name=svc.name),
            d["state"] == "running" and placed_on(d) == "r1" and d)[1], every=0.5)
        assert component_port(doc, "pg") == svc.pg_port
        assert component_port(doc, "pgbouncer") == svc.bouncer_port
        pool_uri = find_pool(doc, "p")["connection-uri"]
        # Shown `running` only once the live node's pooler serves it: the pool answers at once.
        with psycopg.connect(on_host(pool_uri, HOSTS[0]), connect_timeout=3) as conn:
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (1000,)
        # The node comes back: the service stays where it was rebuilt, its old copy stopped.
        b.start()
        doc = b.client().get_dbaas_service_pg(name=svc.name)
        assert placed_on(doc) == "r1" and doc["state"] == "running"
        assert not b.postmaster_pids()
    finally:
        for n in nodes:
            n.close()
        window.release()
        store.stop()
        shutil.rmtree(shared, ignore_errors=True)
