"""Migrating an existing PostgreSQL into a new service (issue 19, method `dump`): every database
of the source arrives complete (row counts and a checksum of every table, indexes, a sequence),
owned by the service's admin; `GET /dbaas-migration-status/{name}` says how it went, per
database; a wrong password or an unreachable source ends in a failed migration whose status
names the cause, the service itself usable; bad `migration` fields are a 400 naming them. The
source's password appears in no status and no log line.
"""

import socket
import time

import psycopg
import pytest

from conftest import PgbayServer, ok, signed, unique
from pg_source import SourcePostgres

TABLES = ("customers", "orders", "items")


@pytest.fixture(scope="module")
def source():
    src = SourcePostgres("migsrc")
    try:
        with src.connect(autocommit=True) as c:
            c.execute("CREATE DATABASE shop")
            c.execute("CREATE DATABASE skipped")
        with src.connect("shop", autocommit=True) as c:
            c.execute("CREATE SEQUENCE order_no START 1000")
            c.execute("CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL)")
            c.execute("CREATE TABLE orders (id bigint PRIMARY KEY DEFAULT nextval('order_no'), "
                      "customer int REFERENCES customers, total numeric(10,2))")
            c.execute("CREATE TABLE items (order_id bigint, sku text, qty int)")
            c.execute("CREATE INDEX items_sku ON items (sku)")
            c.execute("INSERT INTO customers SELECT g, 'c' || g FROM generate_series(1, 1000) g")
            c.execute("INSERT INTO orders (customer, total) "
                      "SELECT 1 + g % 1000, g * 1.5 FROM generate_series(1, 20000) g")
            c.execute("INSERT INTO items SELECT 1000 + g % 20000, 'sku' || (g % 97), g % 5 "
                      "FROM generate_series(1, 100000) g")
        yield src
    finally:
        src.stop()


@pytest.fixture(scope="module")
def node():
    srv = PgbayServer("migration")
    try:
        srv.start()
        yield srv
    finally:
        srv.close()


def fingerprint(conn: psycopg.Connection) -> dict:
    out = {}
    for t in TABLES:
        out[t] = conn.execute(
            f"SELECT count(*), md5(coalesce(string_agg(x::text, ',' ORDER BY x::text), '')) "
            f"FROM {t} x").fetchone()
    return out


def wait_migration(node, name, timeout=180.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        r = signed(node, "GET", f"/dbaas-migration-status/{name}")
        assert r.status_code == 200, r.text
        st = r.json()
        if st["status"] in ("done", "failed"):
            return st
        assert time.monotonic() < deadline, f"migration still {st} after {timeout}s"
        time.sleep(0.5)


def create_with_migration(node, name, migration) -> None:
    c = node.client()
    ok(c, c.create_dbaas_service_pg(name=name, plan="startup-4", migration=migration))


def test_a_dump_migration_arrives_complete(node, source):
    name = unique("mig")
    create_with_migration(node, name, {
        "host": source.host, "port": 5432, "username": source.SUPERUSER,
        "password": source.password, "method": "dump", "ignore-dbs": "skipped"})
    st = wait_migration(node, name)
    assert st["status"] == "done", st
    assert st["method"] == "dump"
    assert {d["dbname"]: d["status"] for d in st["details"]} == {"shop": "done"}, st
    svc = node.client().get_dbaas_service_pg(name=name)
    assert "shop" in svc["databases"] and "skipped" not in svc["databases"]
    uri = svc["uri"].replace("/defaultdb?", "/shop?")
    with source.connect("shop") as s, psycopg.connect(uri) as t:
        assert fingerprint(t) == fingerprint(s)
        # Indexes and the sequence came along; everything belongs to the service's admin.
        assert t.execute("SELECT count(*) FROM pg_indexes WHERE indexname = 'items_sku'"
                         ).fetchone() == (1,)
        assert t.execute("SELECT last_value FROM order_no").fetchone() == \
            s.execute("SELECT last_value FROM order_no").fetchone()
        owners = {r[0] for r in t.execute(
            "SELECT tableowner FROM pg_tables WHERE schemaname = 'public'").fetchall()}
        assert owners == {"avnadmin"}, owners
        t.execute("INSERT INTO orders (customer, total) VALUES (1, 1)")  # writable
    assert source.password not in str(st)
    assert source.password not in node.log_text()


def test_a_wrong_password_fails_the_migration_not_the_service(node, source):
    name = unique("migpw")
    create_with_migration(node, name, {
        "host": source.host, "port": 5432, "username": source.SUPERUSER,
        "password": "not-the-password"})
    st = wait_migration(node, name)
    assert st["status"] == "failed", st
    assert "password authentication failed" in st["error"], st
    svc = node.client().get_dbaas_service_pg(name=name)
    assert svc["state"] == "running"
    with psycopg.connect(svc["uri"]) as c:
        assert c.execute("SELECT 1").fetchone() == (1,)


def test_an_unreachable_source_is_named_in_the_status(node):
    # A port held by a socket that does not listen: connections to it are refused.
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    port = held.getsockname()[1]
    try:
        name = unique("migdown")
        create_with_migration(node, name, {"host": "127.0.0.1", "port": port,
                                           "username": "x", "password": "y"})
        st = wait_migration(node, name)
    finally:
        held.close()
    assert st["status"] == "failed", st
    assert f"127.0.0.1" in st["error"] and str(port) in st["error"], st


@pytest.mark.parametrize("migration,field", [
    ({"host": "h", "port": 5432, "method": "logical"}, "migration.method"),
    ({"host": "h", "port": 5432, "method": "replication"}, "migration.method"),
    ({"host": "h", "port": 0}, "migration.port"),
    ({"port": 5432}, "migration.host"),
    ({"host": "h", "port": 5432, "colour": "red"}, "migration.colour"),
])
def test_bad_migration_fields_are_refused_naming_them(node, migration, field):
    name = unique("migbad")
    r = signed(node, "POST", f"/dbaas-postgres/{name}",
               {"plan": "hobbyist-2", "migration": migration})
    assert r.status_code == 400, r.text
    assert field in r.json()["message"], r.text
    assert signed(node, "GET", f"/dbaas-postgres/{name}").status_code == 404


def test_a_service_without_migration_has_no_status(node):
    c = node.client()
    name = unique("nomig")
    ok(c, c.create_dbaas_service_pg(name=name, plan="hobbyist-2"))
    r = signed(node, "GET", f"/dbaas-migration-status/{name}")
    assert r.status_code == 404 and "no migration" in r.json()["message"], r.text


def test_the_command_line_migrates_from_a_uri_in_its_environment(node, source):
    from test_cli import pgbay

    name = unique("migcli")
    uri = (f"postgres://{source.SUPERUSER}:{source.password}@localhost:5432/postgres"
           f"?host={source.host}")
    pgbay(node, "service", "create", name, "--plan", "startup-4", PGBAY_MIGRATE_FROM=uri)
    st = wait_migration(node, name)
    assert st["status"] == "done", st
    svc = node.client().get_dbaas_service_pg(name=name)
    with source.connect("shop") as s, \
            psycopg.connect(svc["uri"].replace("/defaultdb?", "/shop?")) as t:
        assert fingerprint(t) == fingerprint(s)
