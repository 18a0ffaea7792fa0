"""Connection pools: defaults, connection URI, update, every limit of every field, 404/409.

All tests share one service and a few objects made once for the module (a 40-character database,
1- and 63-character users (63 bytes: PostgreSQL's identifier limit)); every test uses pool names of its own.
"""

import uuid

import pytest
from exoscale.api.exceptions import ExoscaleAPIException

from conftest import (
    api_error,
    check_error_response,
    find_pool,
    ok,
    reveal,
    signed,
    unique,
)


def padded(prefix: str, length: int) -> str:
    base = f"{prefix}{uuid.uuid4().hex}"
    return (base + "x" * length)[:length]


@pytest.fixture(scope="module")
def objs(client, service):
    """Database and users the pools of this module point at."""
    o = {
        "db": unique("pooldb"),
        "db40": padded("d", 40),
        "user": unique("pooluser"),
        "user63": padded("u", 63),
        "user1": "w",
    }
    for db in (o["db"], o["db40"]):
        ok(client, client.create_dbaas_pg_database(service_name=service.name, database_name=db))
    for u in (o["user"], o["user63"], o["user1"]):
        ok(client, client.create_dbaas_postgres_user(service_name=service.name, username=u))
    return o


def pools(client, service) -> list[dict]:
    return client.get_dbaas_service_pg(name=service.name)["connection-pools"]


def get_pool(client, service, name) -> dict:
    pool = find_pool(client.get_dbaas_service_pg(name=service.name), name)
    assert pool is not None, f"pool {name} not listed"
    return pool


def expected_uri(client, service, user, name) -> str:
    password = reveal(client, service.name, user)
    return (f"postgres://{user}:{password}@127.0.0.1:{service.bouncer_port}/{name}"
            "?sslmode=require")


def create(client, service, **fields) -> dict:
    op = client.create_dbaas_pg_connection_pool(service_name=service.name, **fields)
    assert op["state"] == "success", f"quick work completes within the request: {op}"
    return ok(client, op)


def delete(client, service, name) -> None:
    ok(client, client.delete_dbaas_pg_connection_pool(
        service_name=service.name, connection_pool_name=name))


def test_pool_defaults(client, service, objs):
    name = unique("pool")
    create(client, service, name=name, database_name=objs["db"])
    pool = get_pool(client, service, name)
    assert pool == {
        "name": name,
        "database": objs["db"],
        "mode": "transaction",
        "size": 10,
        "username": service.admin_user,
        "connection-uri": expected_uri(client, service, service.admin_user, name),
    }


def test_pool_explicit_fields(client, service, objs):
    name = unique("pool")
    create(client, service, name=name, database_name=objs["db"], mode="session", size=5,
           username=objs["user"])
    pool = get_pool(client, service, name)
    assert pool["database"] == objs["db"]
    assert pool["mode"] == "session" and pool["size"] == 5
    assert pool["username"] == objs["user"]
    assert pool["connection-uri"] == expected_uri(client, service, objs["user"], name)


def test_pools_share_the_service_pooler_port(client, service, objs):
    a, b = unique("porta"), unique("portb")
    create(client, service, name=a, database_name=objs["db"])
    create(client, service, name=b, database_name="defaultdb", username=objs["user"])
    svc = client.get_dbaas_service_pg(name=service.name)
    for p in (find_pool(svc, a), find_pool(svc, b)):
        assert f"@127.0.0.1:{service.bouncer_port}/{p['name']}?" in p["connection-uri"]
    bouncer = [c for c in svc["components"] if c["component"] == "pgbouncer"]
    assert bouncer[0]["port"] == service.bouncer_port


INSIDE = {
    "name-1": {"name": "1"},
    "name-63": {"name": "63"},
    "database-name-40": {"database_name": "db40"},
    "username-1": {"username": "user1"},
    "username-63": {"username": "user63"},
    "size-1": {"size": 1},
    "size-10000": {"size": 10000},
    "mode-session": {"mode": "session"},
    "mode-transaction": {"mode": "transaction"},
    "mode-statement": {"mode": "statement"},
}


def resolve(fields: dict, objs: dict) -> dict:
    """Turn the symbolic values of INSIDE into this run's names."""
    out = dict(fields)
    if out.get("name") == "1":
        out["name"] = "z"
    elif out.get("name") == "63":
        out["name"] = padded("p", 63)
    for k in ("database_name", "username"):
        if k in out:
            out[k] = objs[out[k]]
    return out


@pytest.mark.parametrize("fields", INSIDE.values(), ids=INSIDE.keys())
def test_create_inside_limits(client, service, objs, fields):
    fields = resolve(fields, objs)
    body = {"name": unique("in"), "database_name": objs["db"], **fields}
    create(client, service, **body)
    pool = get_pool(client, service, body["name"])
    assert pool["database"] == body["database_name"]
    assert pool["mode"] == body.get("mode", "transaction")
    assert pool["size"] == body.get("size", 10)
    user = body.get("username", service.admin_user)
    assert pool["username"] == user
    assert pool["connection-uri"] == expected_uri(client, service, user, body["name"])
    delete(client, service, body["name"])
    assert find_pool(client.get_dbaas_service_pg(name=service.name), body["name"]) is None


OUTSIDE = {
    "name-empty": ({"name": ""}, "name"),
    "name-64": ({"name": "n" * 64}, "name"),
    "name-integer": ({"name": 123}, "name"),
    "name-null": ({"name": None}, "name"),
    "name-missing": ({"_drop": "name"}, "name"),
    "database-name-empty": ({"database_name": ""}, "database-name"),
    "database-name-41": ({"database_name": "d" * 41}, "database-name"),
    "database-name-integer": ({"database_name": 5}, "database-name"),
    "database-name-missing": ({"_drop": "database_name"}, "database-name"),
    "username-empty": ({"username": ""}, "username"),
    "username-65": ({"username": "u" * 65}, "username"),
    "username-64-bytes": ({"username": "é" * 32}, "username"),
    "name-64-bytes": ({"name": "é" * 32}, "name"),
    "username-integer": ({"username": 7}, "username"),
    "size-0": ({"size": 0}, "size"),
    "size-negative": ({"size": -1}, "size"),
    "size-10001": ({"size": 10001}, "size"),
    "size-huge": ({"size": 2**63}, "size"),
    "size-string": ({"size": "ten"}, "size"),
    "size-numeric-string": ({"size": "10"}, "size"),
    "size-float": ({"size": 10.5}, "size"),
    "size-bool": ({"size": True}, "size"),
    "mode-capitalised": ({"mode": "Transaction"}, "mode"),
    "mode-empty": ({"mode": ""}, "mode"),
    "mode-unknown": ({"mode": "pooled"}, "mode"),
    "mode-integer": ({"mode": 1}, "mode"),
}


@pytest.mark.parametrize("fields,named", OUTSIDE.values(), ids=OUTSIDE.keys())
def test_create_outside_limits(client, service, objs, fields, named):
    name = unique("out")
    body = {"name": name, "database_name": objs["db"]}
    fields = dict(fields)
    drop = fields.pop("_drop", None)
    body.update(fields)
    if drop:
        body.pop(drop)
    before = pools(client, service)
    with api_error(400, named):
        client.create_dbaas_pg_connection_pool(service_name=service.name, **body)
    assert pools(client, service) == before
    assert find_pool(client.get_dbaas_service_pg(name=service.name), name) is None


def test_create_malformed_json(server, client, service, objs):
    before = pools(client, service)
    path = f"/dbaas-postgres/{service.name}/connection-pool"
    r = signed(server, "POST", path, b'{"name": "mal", "database-name": "defaultdb",')
    check_error_response(r, 400)
    r = signed(server, "POST", path, b'{"name": "mal", "database-name": "defaultdb", "size": NaN}')
    check_error_response(r, 400)
    assert pools(client, service) == before


def test_update_pool(client, service, objs):
    name = unique("upd")
    create(client, service, name=name, database_name=objs["db"])
    op = client.update_dbaas_pg_connection_pool(
        service_name=service.name, connection_pool_name=name,
        mode="statement", size=3, username=objs["user"], database_name="defaultdb")
    assert op["state"] == "success", op
    ok(client, op)
    assert get_pool(client, service, name) == {
        "name": name,
        "database": "defaultdb",
        "mode": "statement",
        "size": 3,
        "username": objs["user"],
        "connection-uri": expected_uri(client, service, objs["user"], name),
    }
    # A partial update changes only the given field.
    ok(client, client.update_dbaas_pg_connection_pool(
        service_name=service.name, connection_pool_name=name, size=10000))
    pool = get_pool(client, service, name)
    assert (pool["size"], pool["mode"], pool["username"]) == (10000, "statement", objs["user"])
    ok(client, client.update_dbaas_pg_connection_pool(
        service_name=service.name, connection_pool_name=name, size=1, database_name=objs["db40"],
        username=objs["user63"]))
    pool = get_pool(client, service, name)
    assert (pool["size"], pool["database"], pool["username"]) == (1, objs["db40"], objs["user63"])


UPDATE_OUTSIDE = {
    "size-0": ({"size": 0}, "size"),
    "size-10001": ({"size": 10001}, "size"),
    "size-string": ({"size": "ten"}, "size"),
    "mode-unknown": ({"mode": "pooled"}, "mode"),
    "database-name-41": ({"database_name": "d" * 41}, "database-name"),
    "database-name-empty": ({"database_name": ""}, "database-name"),
    "username-65": ({"username": "u" * 65}, "username"),
    "username-empty": ({"username": ""}, "username"),
}


@pytest.mark.parametrize("fields,named", UPDATE_OUTSIDE.values(), ids=UPDATE_OUTSIDE.keys())
def test_update_outside_limits(client, service, objs, fields, named):
    name = unique("updout")
    create(client, service, name=name, database_name=objs["db"], size=4, mode="session")
    before = get_pool(client, service, name)
    with api_error(400, named):
        client.update_dbaas_pg_connection_pool(
            service_name=service.name, connection_pool_name=name, **fields)
    assert get_pool(client, service, name) == before


def test_duplicate_pool_conflicts(client, service, objs):
    name = unique("duppool")
    create(client, service, name=name, database_name=objs["db"], size=2)
    with api_error(409, name):
        client.create_dbaas_pg_connection_pool(
            service_name=service.name, name=name, database_name="defaultdb", size=9)
    pool = get_pool(client, service, name)
    assert (pool["database"], pool["size"]) == (objs["db"], 2)


def test_missing_pool_is_404(client, service, objs):
    name = unique("nopool")
    with api_error(404, name):
        client.update_dbaas_pg_connection_pool(
            service_name=service.name, connection_pool_name=name, size=2)
    with api_error(404, name):
        client.delete_dbaas_pg_connection_pool(
            service_name=service.name, connection_pool_name=name)
    assert find_pool(client.get_dbaas_service_pg(name=service.name), name) is None


@pytest.mark.parametrize("missing", ["database_name", "username"])
def test_pool_on_missing_object_refused(client, service, objs, missing):
    """A pool naming a database or user that does not exist is refused with 404 (missing object)
    or 400 (invalid field), the message naming it; nothing is created."""
    name, ghost = unique("ghostpool"), unique("ghost")
    body = {"name": name, "database_name": objs["db"], missing: ghost}
    before = pools(client, service)
    with pytest.raises(ExoscaleAPIException) as info:
        client.create_dbaas_pg_connection_pool(service_name=service.name, **body)
    resp = info.value.response
    assert resp is not None and resp.status_code in (400, 404), resp
    check_error_response(resp, resp.status_code, ghost)
    assert pools(client, service) == before
    # Same for an update of an existing pool.
    other = unique("ghostupd")
    create(client, service, name=other, database_name=objs["db"])
    before = get_pool(client, service, other)
    with pytest.raises(ExoscaleAPIException) as info:
        client.update_dbaas_pg_connection_pool(
            service_name=service.name, connection_pool_name=other, **{missing: ghost})
    resp = info.value.response
    assert resp is not None and resp.status_code in (400, 404), resp
    check_error_response(resp, resp.status_code, ghost)
    assert get_pool(client, service, other) == before


def test_delete_pool(client, service, objs):
    name = unique("del")
    create(client, service, name=name, database_name=objs["db"])
    op = client.delete_dbaas_pg_connection_pool(
        service_name=service.name, connection_pool_name=name)
    assert op["state"] == "success", op
    ok(client, op)
    assert find_pool(client.get_dbaas_service_pg(name=service.name), name) is None
    with api_error(404, name):
        client.delete_dbaas_pg_connection_pool(service_name=service.name, connection_pool_name=name)
