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
    return {"ops": [], "databases": [], "users": {}, "pools": {}}


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
        assert reveal(client, s1["name"], user) == password
    for name, expected in state["pools"].items():
        assert find_pool(svc, name) == expected, f"committed pool {name} lost or changed"
    for op_id in state["ops"]:
        op = client.get_operation(id=op_id)
        assert op["state"] == "success", f"operation {op_id} after restart: {op}"

    # The cluster runs, and holds what the API says it holds.
    pg_dbs = psql_ok(s1["uri"], "SELECT datname FROM pg_database")
    for db in svc["databases"]:
        assert db in pg_dbs, f"database {db} listed by the API but missing in PostgreSQL"
    pg_users = psql_ok(s1["uri"], "SELECT rolname FROM pg_roles")
    for user in user_names(svc):
        assert user in pg_users, f"user {user} listed by the API but missing in PostgreSQL"
    for user, password in state["users"].items():
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
        "connection-uri": (f"postgres://{user}:{state['users'][user]}@127.0.0.1:"
                           f"{s1['bouncer_port']}/{pool}?sslmode=require"),
    }

    crash_server.start()
    check_everything_committed(crash_server.client(), state)


def test_kill9_during_provisioning_and_mutations(crash_server, state, s1):
    if not crash_server.running():
        crash_server.start()
    c = crash_server.client()

    s2 = unique("crash2")
    op_s2 = c.create_dbaas_service_pg(name=s2, plan="hobbyist-2")
    assert op_s2["state"] == "pending", op_s2

    # A stream of database creations on s1, cut by the crash: every acknowledged one counts.
    acked: list[tuple[str, str]] = []
    stop = threading.Event()

    def burst():
        bc = crash_server.client()
        i = 0
        while not stop.is_set():
            name = f"burst{i}-{unique('b')}"
            try:
                op = bc.create_dbaas_pg_database(service_name=s1["name"], database_name=name)
            except Exception:  # the server died under us: the end of the burst
                return
            if op.get("state") == "success":
                acked.append((name, op["id"]))
            i += 1

    t = threading.Thread(target=burst, daemon=True)
    t.start()
    deadline = time.monotonic() + 60
    while len(acked) < 3 and t.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(acked) >= 3, "database creations did not succeed before the crash"
    crash_server.kill9()
    stop.set()
    t.join(timeout=60)
    assert not t.is_alive()

    for name, op_id in acked:
        state["databases"].append(name)
        state["ops"].append(op_id)

    crash_server.start()
    c = crash_server.client()

    # The interrupted provisioning ends, one way or the other.
    final = wait_op(c, op_s2, timeout=OPERATION_TIMEOUT)
    assert final["state"] in {"success", "failure"}, final
    if final["state"] == "success":
        svc = wait_service_running(c, s2)
        assert psql_ok(svc["uri"], "SELECT current_user") == [urlsplit(svc["uri"]).username]
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
