"""Databases and users of a service: real objects in its PostgreSQL, limits, 404/409, passwords."""

import threading
import uuid

import psycopg
import pytest

from exoscale.api.exceptions import ExoscaleAPIException

from conftest import (
    api_error,
    assert_password_refused,
    check_error_response,
    ok,
    psql_ok,
    reveal,
    signed,
    unique,
    user_names,
)


def padded(prefix: str, length: int) -> str:
    """A name unique to this run, exactly `length` characters long."""
    base = f"{prefix}{uuid.uuid4().hex}"
    return (base + "x" * length)[:length]


def databases(client, service) -> list[str]:
    return client.get_dbaas_service_pg(name=service.name)["databases"]


def pg_databases(service) -> list[str]:
    return psql_ok(service.uri, "SELECT datname FROM pg_database")


def pg_roles(service) -> list[str]:
    return psql_ok(service.uri, "SELECT rolname FROM pg_roles")


def login(service, user, password, dbname="defaultdb") -> list[str]:
    return psql_ok(service.uri_for(user=user, password=password, dbname=dbname),
                   "SELECT current_user, current_database()")


# --------------------------------------------------------------------------------------------
# Databases


def test_database_life_cycle(client, service):
    name = unique("db")
    op = client.create_dbaas_pg_database(service_name=service.name, database_name=name)
    final = ok(client, op)
    assert op["state"] == "success", "quick work completes within the request"
    assert final["reference"]["command"]
    assert name in databases(client, service)
    assert name in pg_databases(service)
    assert any(line.startswith(f"{name}|") for line in psql_ok(service.uri, r"\l"))
    assert login(service, service.admin_user, service.admin_password, dbname=name) == [
        f"{service.admin_user}|{name}"
    ]

    ok(client, client.delete_dbaas_pg_database(service_name=service.name, database_name=name))
    assert name not in databases(client, service)
    assert name not in pg_databases(service)
    with api_error(404, name):
        client.delete_dbaas_pg_database(service_name=service.name, database_name=name)


@pytest.mark.parametrize("length", [1, 40])
def test_database_name_inside_limits(client, service, length):
    name = padded("d", length) if length > 1 else "q"
    ok(client, client.create_dbaas_pg_database(service_name=service.name, database_name=name))
    assert name in databases(client, service)
    assert name in pg_databases(service)
    ok(client, client.delete_dbaas_pg_database(service_name=service.name, database_name=name))
    assert name not in databases(client, service)


@pytest.mark.parametrize(
    "fields",
    [
        {"database_name": ""},
        {"database_name": "d" * 41},
        {"database_name": 123},
        {"database_name": None},
        {"lc_collate": "C"},  # database-name missing
    ],
    ids=["empty", "41-chars", "integer", "null", "missing"],
)
def test_database_name_outside_limits(client, service, fields):
    before = databases(client, service)
    with api_error(400, "database-name"):
        client.create_dbaas_pg_database(service_name=service.name, **fields)
    assert databases(client, service) == before
    assert "d" * 41 not in pg_databases(service)


def test_database_locale(client, service):
    name = unique("cdb")
    ok(client, client.create_dbaas_pg_database(service_name=service.name, database_name=name,
                                               lc_collate="C", lc_ctype="C"))
    rows = psql_ok(service.uri, "SELECT datcollate, datctype FROM pg_database"
                                f" WHERE datname = '{name}'")
    assert rows == ["C|C"]


@pytest.mark.parametrize(
    "fields,named",
    [
        ({"lc_collate": "C" * 129}, "lc-collate"),
        ({"lc_ctype": "C" * 129}, "lc-ctype"),
        ({"lc_collate": 7}, "lc-collate"),
        ({"lc_collate": "xx_NOPE.bogus"}, "lc-collate"),
    ],
    ids=["collate-129", "ctype-129", "collate-integer", "collate-unknown"],
)
def test_database_locale_refused(client, service, fields, named):
    name = unique("ldb")
    before = databases(client, service)
    with api_error(400, named):
        client.create_dbaas_pg_database(service_name=service.name, database_name=name, **fields)
    assert databases(client, service) == before
    assert name not in pg_databases(service)


def test_database_malformed_json(server, client, service):
    before = databases(client, service)
    r = signed(server, "POST", f"/dbaas-postgres/{service.name}/database", b'{"database-name": ')
    check_error_response(r, 400)
    assert databases(client, service) == before


def test_duplicate_database_conflicts(client, service):
    name = unique("dup")
    ok(client, client.create_dbaas_pg_database(service_name=service.name, database_name=name))
    with api_error(409, name):
        client.create_dbaas_pg_database(service_name=service.name, database_name=name)
    with api_error(409, "defaultdb"):
        client.create_dbaas_pg_database(service_name=service.name, database_name="defaultdb")
    assert databases(client, service).count(name) == 1


def test_concurrent_duplicate_database(server, service):
    """Racing creations of one name: exactly one wins, the others get 409, one database exists."""
    name = unique("race")
    results = []

    def create():
        c = server.client()
        try:
            results.append(c.create_dbaas_pg_database(service_name=service.name,
                                                      database_name=name)["state"])
        except ExoscaleAPIException as e:
            results.append(e.response.status_code if e.response is not None else repr(e))

    threads = [threading.Thread(target=create) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(results, key=str) == sorted(["success", 409, 409, 409], key=str), results
    client = server.client()
    assert databases(client, service).count(name) == 1
    assert name in pg_databases(service)


def test_missing_database_is_404(client, service):
    name = unique("nodb")
    with api_error(404, name):
        client.delete_dbaas_pg_database(service_name=service.name, database_name=name)


# --------------------------------------------------------------------------------------------
# Users


def test_user_life_cycle(client, service):
    name = unique("user")
    op = client.create_dbaas_postgres_user(service_name=service.name, username=name)
    assert op["state"] == "success", op
    ok(client, op)
    svc = client.get_dbaas_service_pg(name=service.name)
    assert name in user_names(svc)
    password = reveal(client, service.name, name)
    assert len(password) >= 8
    assert name in pg_roles(service)
    assert login(service, name, password) == [f"{name}|defaultdb"]

    ok(client, client.delete_dbaas_postgres_user(service_name=service.name, username=name))
    assert name not in user_names(client.get_dbaas_service_pg(name=service.name))
    assert name not in pg_roles(service)
    with api_error(404, name):
        client.reveal_dbaas_postgres_user_password(service_name=service.name, username=name)
    with api_error(404, name):
        client.delete_dbaas_postgres_user(service_name=service.name, username=name)


def test_generated_passwords_differ(client, service):
    a, b = unique("gen"), unique("gen")
    ok(client, client.create_dbaas_postgres_user(service_name=service.name, username=a))
    ok(client, client.create_dbaas_postgres_user(service_name=service.name, username=b))
    assert reveal(client, service.name, a) != reveal(client, service.name, b)


def test_admin_password_revealed(client, service):
    svc = client.get_dbaas_service_pg(name=service.name)
    password = reveal(client, service.name, service.admin_user)
    assert service.admin_user == "avnadmin"
    assert f"avnadmin:{password}@" in svc["uri"]
    assert login(service, "avnadmin", password) == ["avnadmin|defaultdb"]


def test_driver_connects_with_service_uri(client, service):
    """A driver (psycopg, libpq) takes the service `uri` as it is: TLS required, admin user."""
    svc = client.get_dbaas_service_pg(name=service.name)
    with psycopg.connect(svc["uri"], connect_timeout=10) as conn:
        row = conn.execute(
            "SELECT current_user, current_database(), ssl FROM pg_stat_ssl"
            " WHERE pid = pg_backend_pid()").fetchone()
    assert row == (service.admin_user, "defaultdb", True)


@pytest.mark.parametrize("length", [1, 63])
def test_username_inside_limits(client, service, length):
    # 63 characters of ASCII are 63 bytes: PostgreSQL keeps the whole name.
    name = padded("u", length) if length > 1 else "k"
    ok(client, client.create_dbaas_postgres_user(service_name=service.name, username=name))
    assert name in user_names(client.get_dbaas_service_pg(name=service.name))
    password = reveal(client, service.name, name)
    assert login(service, name, password)[0].split("|")[0] == name
    ok(client, client.delete_dbaas_postgres_user(service_name=service.name, username=name))
    assert name not in user_names(client.get_dbaas_service_pg(name=service.name))


@pytest.mark.parametrize(
    "fields",
    [
        {"username": ""},
        {"username": "u" * 65},
        {"username": 42},
        {"username": None},
        {"allow_replication": False},  # username missing
    ],
    ids=["empty", "65-chars", "integer", "null", "missing"],
)
def test_username_outside_limits(client, service, fields):
    before = user_names(client.get_dbaas_service_pg(name=service.name))
    with api_error(400, "username"):
        client.create_dbaas_postgres_user(service_name=service.name, **fields)
    assert user_names(client.get_dbaas_service_pg(name=service.name)) == before
    assert "u" * 63 not in pg_roles(service)


@pytest.mark.parametrize("name", ["t" * 64, "é" * 32], ids=["64-ascii", "32-two-byte"])
def test_usernames_over_63_bytes_are_refused(client, service, name):
    """PostgreSQL keeps 63 bytes of a name: a longer one would be cut to another role's name, so
    it is refused, naming the field and the byte limit, and nothing reaches PostgreSQL."""
    before = user_names(client.get_dbaas_service_pg(name=service.name))
    with api_error(400, "username", "63 bytes"):
        client.create_dbaas_postgres_user(service_name=service.name, username=name)
    assert user_names(client.get_dbaas_service_pg(name=service.name)) == before
    roles = pg_roles(service)
    assert name not in roles and name.encode()[:63].decode(errors="ignore") not in roles


def test_duplicate_user_conflicts(client, service):
    name = unique("dupu")
    ok(client, client.create_dbaas_postgres_user(service_name=service.name, username=name))
    password = reveal(client, service.name, name)
    with api_error(409, name):
        client.create_dbaas_postgres_user(service_name=service.name, username=name)
    with api_error(409, "avnadmin"):
        client.create_dbaas_postgres_user(service_name=service.name, username="avnadmin")
    # The refused duplicate did not touch the existing user's password.
    assert reveal(client, service.name, name) == password
    assert reveal(client, service.name, "avnadmin") == service.admin_password
    assert user_names(client.get_dbaas_service_pg(name=service.name)).count(name) == 1


def test_missing_user_is_404(client, service):
    name = unique("nouser")
    with api_error(404, name):
        client.reveal_dbaas_postgres_user_password(service_name=service.name, username=name)
    with api_error(404, name):
        client.reset_dbaas_postgres_user_password(service_name=service.name, username=name)
    with api_error(404, name):
        client.delete_dbaas_postgres_user(service_name=service.name, username=name)


# --------------------------------------------------------------------------------------------
# Passwords


@pytest.fixture
def user(client, service):
    name = unique("pw")
    ok(client, client.create_dbaas_postgres_user(service_name=service.name, username=name))
    return name


def test_reset_without_body_generates_password(client, service, user):
    old = reveal(client, service.name, user)
    op = client.reset_dbaas_postgres_user_password(service_name=service.name, username=user)
    ok(client, op)
    new = reveal(client, service.name, user)
    assert new != old and len(new) >= 8
    assert login(service, user, new) == [f"{user}|defaultdb"]
    assert_password_refused(service.uri_for(user=user, password=old))


def test_reset_with_empty_object_generates_password(server, client, service, user):
    old = reveal(client, service.name, user)
    r = signed(server, "PUT", f"/dbaas-postgres/{service.name}/user/{user}/password/reset", {})
    assert r.status_code == 200, r.text
    ok(client, r.json())
    new = reveal(client, service.name, user)
    assert new != old
    assert login(service, user, new) == [f"{user}|defaultdb"]
    assert_password_refused(service.uri_for(user=user, password=old))


@pytest.mark.parametrize("length", [8, 256])
def test_reset_sets_given_password(client, service, user, length):
    old = reveal(client, service.name, user)
    wanted = ("Pw" + uuid.uuid4().hex * 8)[:length]
    ok(client, client.reset_dbaas_postgres_user_password(
        service_name=service.name, username=user, password=wanted))
    assert reveal(client, service.name, user) == wanted
    assert login(service, user, wanted) == [f"{user}|defaultdb"]
    assert_password_refused(service.uri_for(user=user, password=old))


@pytest.mark.parametrize(
    "password", ["short7!", "", "p" * 257, 12345678], ids=["7-chars", "empty", "257-chars", "int"]
)
def test_reset_refuses_invalid_password(client, service, user, password):
    old = reveal(client, service.name, user)
    with api_error(400, "password"):
        client.reset_dbaas_postgres_user_password(
            service_name=service.name, username=user, password=password)
    assert reveal(client, service.name, user) == old
    assert login(service, user, old) == [f"{user}|defaultdb"]


# --------------------------------------------------------------------------------------------
# Objects in use by a pool


def test_database_and_user_in_use_by_pool_conflict(client, service):
    db, user, pool = unique("useddb"), unique("useduser"), unique("usedpool")
    ok(client, client.create_dbaas_pg_database(service_name=service.name, database_name=db))
    ok(client, client.create_dbaas_postgres_user(service_name=service.name, username=user))
    ok(client, client.create_dbaas_pg_connection_pool(
        service_name=service.name, name=pool, database_name=db, username=user))

    with api_error(409, (db, pool)):
        client.delete_dbaas_pg_database(service_name=service.name, database_name=db)
    with api_error(409, (user, pool)):
        client.delete_dbaas_postgres_user(service_name=service.name, username=user)
    svc = client.get_dbaas_service_pg(name=service.name)
    assert db in svc["databases"] and user in user_names(svc)
    assert db in pg_databases(service) and user in pg_roles(service)

    ok(client, client.delete_dbaas_pg_connection_pool(
        service_name=service.name, connection_pool_name=pool))
    ok(client, client.delete_dbaas_pg_database(service_name=service.name, database_name=db))
    ok(client, client.delete_dbaas_postgres_user(service_name=service.name, username=user))
    svc = client.get_dbaas_service_pg(name=service.name)
    assert db not in svc["databases"] and user not in user_names(svc)
