"""Durability: `kill -9` of pgbay right after and during mutations, then a new `serve` on the same
data dir and port range. Nothing committed is lost, no operation stays pending, clusters run,
pooler ports do not move. Also: SIGTERM stops the clusters, and the next `serve` starts them.

The tests of this module share one pgbay server of their own (it gets killed), in file order.
"""

import threading
import time
from urllib.parse import urlsplit

import pytest

from conftest import (
    OPERATION_TIMEOUT,
    PgbayServer,
    api_error,
    port_accepts,
    component_port,
    find_pool,
    ok,
    psql_ok,
    reveal,
    unique,
    uri_with,
    user_names,
    wait_op,
    wait_service_running,
)


@pytest.fixture(scope="module")
def crash_server():
    srv = PgbayServer("crash")
    try:
        srv.start()
        yield srv
    finally:
        srv.close()


@pytest.fixture(scope="module")
def state():
    """What the tests of this module committed, to be found again after each restart."""
    return {"ops": [], "databases": [], "users": {}, "pools": {}, "services": {}}


@pytest.fixture(scope="module")
def s1(crash_server, state):
    c = crash_server.client()
    name = unique("crash")
    op = c.create_dbaas_service_pg(name=name, plan="hobbyist-2")
    ok(c, op)
    state["ops"].append(op["id"])
    svc = c.get_dbaas_service_pg(name=name)
    state["s1"] = {
        "name": name,
        "uri": svc["uri"],
        "pg_port": component_port(svc, "pg"),
        "bouncer_port": component_port(svc, "pgbouncer"),
    }
    return state["s1"]


def check_everything_committed(client, state) -> None:
    """Every committed object and operation of `state` is there, and real in PostgreSQL."""
    s1 = state["s1"]
    svc = wait_service_running(client, s1["name"])
    assert component_port(svc, "pg") == s1["pg_port"]
    assert component_port(svc, "pgbouncer") == s1["bouncer_port"], "pooler port moved"
    assert svc["uri"] == s1["uri"]

    for db in state["databases"]:
        assert db in svc["databases"], f"committed database {db} lost"
    for user, password in state["users"].items():
        assert user in user_names(svc), f"committed user {user} lost"
        if password is not None:
            assert reveal(client, s1["name"], user) == password
    for name, expected in state["pools"].items():
        pool = find_pool(svc, name)
        assert pool is not None, f"committed pool {name} lost"
        uri = pool.pop("connection-uri")
        assert pool == expected, f"committed pool {name} changed"
        password = reveal(client, s1["name"], expected["username"])
        assert uri == (f"postgres://{expected['username']}:{password}@127.0.0.1:"
                       f"{s1['bouncer_port']}/{name}?sslmode=require")
    for op_id in state["ops"]:
        op = client.get_operation(id=op_id)
        assert op["state"] == "success", f"operation {op_id} after restart: {op}"

    gone = state.get("gone", {})
    for db in gone.get("databases", []):
        assert db not in svc["databases"], f"deleted database {db} came back"
    for user in gone.get("users", []):
        assert user not in user_names(svc), f"deleted user {user} came back"
    for pool in gone.get("pools", []):
        assert find_pool(svc, pool) is None, f"deleted pool {pool} came back"

    # Every other committed service runs, at its URI.
    for name, uri in state["services"].items():
        other = wait_service_running(client, name)
        assert other["uri"] == uri
        assert psql_ok(uri, "SELECT current_user") == [urlsplit(uri).username]

    # The cluster runs, and holds what the API says it holds.
    pg_dbs = psql_ok(s1["uri"], "SELECT datname FROM pg_database")
    for db in svc["databases"]:
        assert db in pg_dbs, f"database {db} listed by the API but missing in PostgreSQL"
    pg_users = psql_ok(s1["uri"], "SELECT rolname FROM pg_roles")
    for user in user_names(svc):
        assert user in pg_users, f"user {user} listed by the API but missing in PostgreSQL"
    for db in gone.get("databases", []):
        assert db not in pg_dbs, f"deleted database {db} still in PostgreSQL"
    for user in gone.get("users", []):
        assert user not in pg_users, f"deleted user {user} still in PostgreSQL"
    for user, password in state["users"].items():
        if password is not None:
            assert psql_ok(uri_with(s1["uri"], user=user, password=password),
                           "SELECT current_user") == [user]


def test_kill9_right_after_mutations(crash_server, state, s1):
    c = crash_server.client()
    db, user, pool = unique("cdb"), unique("cuser"), unique("cpool")

    op = c.create_dbaas_pg_database(service_name=s1["name"], database_name=db)
    ok(c, op)
    state["ops"].append(op["id"])
    state["databases"].append(db)

    op = c.create_dbaas_postgres_user(service_name=s1["name"], username=user)
    ok(c, op)
    state["ops"].append(op["id"])
    state["users"][user] = reveal(c, s1["name"], user)

    # Objects made and deleted again before the crash stay deleted.
    gone_db, gone_user, gone_pool = unique("gonedb"), unique("goneuser"), unique("gonepool")
    ok(c, c.create_dbaas_pg_database(service_name=s1["name"], database_name=gone_db))
    ok(c, c.create_dbaas_postgres_user(service_name=s1["name"], username=gone_user))
    ok(c, c.create_dbaas_pg_connection_pool(service_name=s1["name"], name=gone_pool,
                                            database_name=gone_db, username=gone_user))
    ok(c, c.delete_dbaas_pg_connection_pool(service_name=s1["name"],
                                            connection_pool_name=gone_pool))
    ok(c, c.delete_dbaas_pg_database(service_name=s1["name"], database_name=gone_db))
    ok(c, c.delete_dbaas_postgres_user(service_name=s1["name"], username=gone_user))
    state["gone"] = {"databases": [gone_db], "users": [gone_user], "pools": [gone_pool]}

    op = c.create_dbaas_pg_connection_pool(service_name=s1["name"], name=pool,
                                           database_name=db, username=user, mode="session",
                                           size=7)
    # The crash comes the moment create-pool has answered.
    crash_server.kill9()
    assert op["state"] == "success", op
    state["ops"].append(op["id"])
    state["pools"][pool] = {
        "name": pool,
        "database": db,
        "mode": "session",
        "size": 7,
        "username": user,
    }

    crash_server.start()
    check_everything_committed(crash_server.client(), state)


class Burst(threading.Thread):
    """Creates databases, users and pools on a service in a loop until the server dies under it,
    recording every creation that the server acknowledged."""

    def __init__(self, srv: PgbayServer, service: str) -> None:
        super().__init__(daemon=True)
        self.srv, self.service = srv, service
        self.acked = {"ops": [], "databases": [], "users": {}, "pools": {}}
        self.count = 0
        self.error: Exception | None = None
        # The creation that was on the wire when the server died: (kind, name, body).
        self.in_flight: tuple[str, str, dict] | None = None

    def run(self) -> None:
        c = self.srv.client()
        try:
            while True:
                tag = unique("b")
                db, user, pool = f"bdb-{tag}", f"bu-{tag}", f"bp-{tag}"
                self.in_flight = ("database", db, {"database_name": db})
                op = c.create_dbaas_pg_database(service_name=self.service, database_name=db)
                self._ack(op)
                self.acked["databases"].append(db)
                self.in_flight = ("user", user, {"username": user})
                op = c.create_dbaas_postgres_user(service_name=self.service, username=user)
                self._ack(op)
                self.acked["users"][user] = None
                self.acked["users"][user] = reveal(c, self.service, user)
                body = {"name": pool, "database_name": db, "username": user, "size": 3,
                        "mode": "statement"}
                self.in_flight = ("pool", pool, body)
                op = c.create_dbaas_pg_connection_pool(service_name=self.service, **body)
                self._ack(op)
                self.acked["pools"][pool] = {"name": pool, "database": db, "mode": "statement",
                                             "size": 3, "username": user}
        except Exception as e:  # the server died under us: the end of the burst
            self.error = e

    def _ack(self, op: dict) -> None:
        assert op["state"] == "success", op
        self.in_flight = None
        self.acked["ops"].append(op["id"])
        self.count += 1


def settle_in_flight(client, service: str, in_flight, state) -> None:
    """The creation cut by the crash either happened (listed, and real) or did not happen at all:
    then creating it again succeeds. It never lingers half-made."""
    if in_flight is None:
        return
    kind, name, body = in_flight
    svc = client.get_dbaas_service_pg(name=service)
    if kind == "database":
        if name not in svc["databases"]:
            ok(client, client.create_dbaas_pg_database(service_name=service, **body))
        state["databases"].append(name)
    elif kind == "user":
        if name not in user_names(svc):
            ok(client, client.create_dbaas_postgres_user(service_name=service, **body))
        state["users"][name] = reveal(client, service, name)
    else:
        if find_pool(svc, name) is None:
            ok(client, client.create_dbaas_pg_connection_pool(service_name=service, **body))
        state["pools"][name] = {"name": name, "database": body["database_name"],
                                "mode": body["mode"], "size": body["size"],
                                "username": body["username"]}


def test_kill9_during_provisioning_and_mutations(crash_server, state, s1):
    if not crash_server.running():
        crash_server.start()
    c = crash_server.client()

    # A stream of creations on s1, cut by the crash: every acknowledged one counts.
    burst = Burst(crash_server, s1["name"])
    burst.start()
    deadline = time.monotonic() + 60
    while burst.count < 2 and burst.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert burst.count >= 2, f"creations did not succeed before the crash: {burst.error!r}"

    s2 = unique("crash2")
    op_s2 = c.create_dbaas_service_pg(name=s2, plan="hobbyist-2")
    assert op_s2["state"] == "pending", op_s2
    assert c.get_dbaas_service_pg(name=s2)["state"] == "rebuilding"
    # One more acknowledged creation, so that the crash also lands in the middle of the burst.
    seen = burst.count
    while burst.count == seen and burst.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    crash_server.kill9()
    burst.join(timeout=60)
    assert not burst.is_alive()

    for k in ("ops", "databases"):
        state[k].extend(burst.acked[k])
    state["users"].update(burst.acked["users"])
    state["pools"].update(burst.acked["pools"])

    crash_server.start()
    c = crash_server.client()

    settle_in_flight(c, s1["name"], burst.in_flight, state)

    # The interrupted provisioning ends, one way or the other.
    final = wait_op(c, op_s2, timeout=OPERATION_TIMEOUT)
    assert final["state"] in {"success", "failure"}, final
    if final["state"] == "success":
        svc = wait_service_running(c, s2)
        state["services"][s2] = svc["uri"]
        state["ops"].append(op_s2["id"])
    else:
        assert final.get("reason"), final

    check_everything_committed(c, state)

    # Nothing else is pending either.
    for op_id in state["ops"] + [op_s2["id"]]:
        assert c.get_operation(id=op_id)["state"] != "pending"


def test_sigterm_stops_clusters_and_serve_restarts_them(crash_server, state, s1):
    if not crash_server.running():
        crash_server.start()
    assert crash_server.postmaster_pids(), "no cluster running under the data dir"
    rc = crash_server.stop()
    assert rc == 0, f"pgbay did not exit cleanly on SIGTERM (exit code {rc})"
    deadline = time.monotonic() + 30
    while crash_server.postmaster_pids() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert crash_server.postmaster_pids() == [], "clusters still running after SIGTERM"

    crash_server.start()
    check_everything_committed(crash_server.client(), state)


def test_kill9_right_after_service_delete(crash_server, state, s1):
    """A deleted service stays deleted: the next `serve` does not bring its cluster back."""
    if not crash_server.running():
        crash_server.start()
    c = crash_server.client()
    name = next(iter(state["services"]), None)
    if name is None:  # the interrupted provisioning failed: make a service to delete
        name = unique("crash3")
        ok(c, c.create_dbaas_service_pg(name=name, plan="hobbyist-2"))
        state["services"][name] = c.get_dbaas_service_pg(name=name)["uri"]
    pg_port = urlsplit(state["services"][name]).port
    assert port_accepts(pg_port)

    op = c.delete_dbaas_service_pg(name=name)
    crash_server.kill9()
    del state["services"][name]
    ok_state = op["state"]
    crash_server.start()
    c = crash_server.client()
    final = wait_op(c, op)
    assert (ok_state, final["state"]) == ("success", "success"), final

    with api_error(404, name):
        c.get_dbaas_service_pg(name=name)
    assert name not in [s["name"] for s in c.list_dbaas_services()["dbaas-services"]]
    deadline = time.monotonic() + 30
    while port_accepts(pg_port) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not port_accepts(pg_port), "the deleted service's cluster runs again"
    check_everything_committed(c, state)
