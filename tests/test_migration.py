"""Migration of a PostgreSQL server that runs elsewhere into a new service (issue 19): the
document's `migration` object at create, copied by dump, and `GET /dbaas-migration-status`.

The source is a real PostgreSQL this file starts (initdb + pg_ctl in a temp dir, as the
`postgres` OS user when the tests run as root, SCRAM logins on 127.0.0.1)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import (
    api_error,
    provision,
    psql_ok,
    spare_port,
    unique,
)

PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))[-1].parent
SOURCE_PASSWORD = "source-Pw-7d1e4c"
MIGRATION_TIMEOUT = 240.0


class SourcePg:
    """A PostgreSQL server the test starts as the migration source; stopped by `close`."""

    def __init__(self, wal_level: str = "logical") -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="migrate-src-"))
        self.port = spare_port()
        self.data = self.dir / "data"
        pwfile = self.dir / "pw"
        pwfile.write_text(SOURCE_PASSWORD)
        os.chmod(pwfile, 0o600)
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--pwfile", str(pwfile),
                  "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                  "--locale=C.UTF-8")
        pwfile.unlink()
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} "
                f"-c wal_level={wal_level}")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-o", opts,
                  "-w", "-t", "60", "start")

    def _run(self, prog: str, *args: str) -> None:
        cmd = [str(PG_BIN / prog), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"{prog} failed: {r.stderr}"

    def uri(self, db: str = "postgres", password: str = SOURCE_PASSWORD) -> str:
        return f"postgresql://postgres:{password}@127.0.0.1:{self.port}/{db}?sslmode=disable"

    def migration(self, **kw) -> dict:
        m = {"host": "127.0.0.1", "port": self.port, "username": "postgres",
             "password": SOURCE_PASSWORD, "ssl": False, "method": "dump"}
        m.update(kw)
        return m

    def close(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def source():
    src = SourcePg()
    try:
        psql_ok(src.uri(), "CREATE DATABASE shop")
        psql_ok(src.uri(), "CREATE DATABASE extra")
        psql_ok(src.uri(), "CREATE DATABASE ignored")
        psql_ok(src.uri("shop"), """
            CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, email text);
            CREATE INDEX customers_name ON customers (name);
            CREATE TABLE orders (id bigint PRIMARY KEY, customer int REFERENCES customers (id),
                                 amount numeric(12,2), note text);
            CREATE INDEX orders_customer ON orders (customer);
            CREATE SEQUENCE invoice_seq START 1000;
            SELECT setval('invoice_seq', 4242);
            INSERT INTO customers (name, email)
                SELECT 'customer ' || g, 'c' || g || '@example.com' FROM generate_series(1, 2000) g;
            INSERT INTO orders
                SELECT g, 1 + g % 2000, (g * 7 % 100000) / 100.0, md5(g::text)
                FROM generate_series(1, 100000) g;
            CREATE VIEW big_orders AS SELECT * FROM orders WHERE amount > 900;
        """)
        psql_ok(src.uri("extra"), "CREATE TABLE notes (id int PRIMARY KEY, body text);"
                                  "INSERT INTO notes VALUES (1, 'hello'), (2, 'world')")
        psql_ok(src.uri("ignored"), "CREATE TABLE secret (x int)")
        yield src
    finally:
        src.close()


def wait_migration(client, name: str, until=("done", "failed")) -> dict:
    """Polls the migration status until it is one of `until`, with a deadline."""
    deadline = time.monotonic() + MIGRATION_TIMEOUT
    while True:
        st = client.get_dbaas_migration_status(name=name)
        if st["status"] in until or st["status"] == "failed":
            return st
        assert time.monotonic() < deadline, f"migration of {name} still {st}"
        time.sleep(0.5)


TABLE_DIGEST = ("SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
                "FROM {} t")


def test_dump_migration_copies_every_database_completely(server, client, source):
    name = unique("mig")
    svc = provision(client, name, migration=source.migration(**{"ignore-dbs": "ignored"}))
    st = wait_migration(client, name)
    assert st["status"] == "done", st
    assert st["method"] == "dump" and "error" not in st, st
    assert sorted((d["dbname"], d["status"]) for d in st["details"]) == [
        ("extra", "done"), ("shop", "done")], st
    assert SOURCE_PASSWORD not in str(st)

    dbs = client.get_dbaas_service_pg(name=name)["databases"]
    assert {"shop", "extra", "defaultdb"} <= set(dbs) and "ignored" not in dbs, dbs

    shop_src, shop_dst = source.uri("shop"), svc.uri_for(dbname="shop")
    for table in ("customers", "orders"):
        q = TABLE_DIGEST.format(table)
        assert psql_ok(shop_dst, q) == psql_ok(shop_src, q), table
    assert psql_ok(shop_dst, "SELECT count(*) FROM orders") == ["100000"]
    assert psql_ok(shop_dst, "SELECT last_value FROM invoice_seq") == ["4242"]
    assert psql_ok(shop_dst, "SELECT nextval('customers_id_seq')") == ["2001"]
    idx = "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1"
    assert psql_ok(shop_dst, idx) == psql_ok(shop_src, idx)
    assert psql_ok(shop_dst, "SELECT count(*) FROM big_orders") == psql_ok(
        shop_src, "SELECT count(*) FROM big_orders")
    # Ownership is the service's admin; the admin can write and alter what arrived.
    owners = psql_ok(shop_dst, "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'")
    assert owners == [svc.admin_user]
    psql_ok(shop_dst, "INSERT INTO orders VALUES (100001, 1, 1, 'after'); ALTER TABLE orders ADD c int")
    assert psql_ok(svc.uri_for(dbname="extra"), "SELECT body FROM notes ORDER BY id") == ["hello", "world"]
    # The admin stays a tenant: no superuser came with the data.
    assert psql_ok(shop_dst, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user") == ["f"]
    assert SOURCE_PASSWORD not in server.log_text()


def test_migration_of_one_database_by_dbname(client, source):
    name = unique("mig1")
    svc = provision(client, name, migration=source.migration(dbname="extra"))
    st = wait_migration(client, name)
    assert st["status"] == "done", st
    assert [d["dbname"] for d in st["details"]] == ["extra"]
    assert psql_ok(svc.uri_for(dbname="extra"), "SELECT count(*) FROM notes") == ["2"]


@pytest.mark.parametrize("case", ["password", "unreachable", "database"])
def test_failed_migration_names_the_cause_and_the_service_stays_usable(server, client, source, case):
    name = unique("migbad")
    closed = spare_port()
    migration = {
        "password": source.migration(password="wrong-password"),
        "unreachable": source.migration(port=closed),
        "database": source.migration(dbname="nosuchdb"),
    }[case]
    svc = provision(client, name, migration=migration)
    st = wait_migration(client, name)
    assert st["status"] == "failed", st
    words = {
        "password": ["password authentication failed", f"127.0.0.1:{source.port}"],
        "unreachable": [f"127.0.0.1:{closed}", "refused"],
        "database": ['"nosuchdb" does not exist'],
    }[case]
    for w in words:
        assert w in st["error"], (w, st)
    assert "wrong-password" not in str(st) and "wrong-password" not in server.log_text()
    assert psql_ok(svc.uri, "SELECT 1") == ["1"]
    assert client.get_dbaas_service_pg(name=name)["state"] == "running"


def test_migration_input_is_checked(client):
    bad = [
        ({"host": "h", "port": 5432, "method": "copy"}, "migration.method"),
        ({"host": "h", "port": 5432, "sslmode": "x"}, "migration.sslmode"),
        ({"host": "h"}, "migration.port"),
        ({"port": 5432}, "migration.host"),
        ({"host": "h", "port": 70000}, "migration.port"),
        ("postgres://h", "migration"),
    ]
    for body, field in bad:
        name = unique("migin")
        with api_error(400, field):
            client.create_dbaas_service_pg(name=name, plan="startup-4", migration=body)
        with api_error(404):
            client.get_dbaas_service_pg(name=name)


def test_status_of_a_service_without_migration_is_404(client, service):
    with api_error(404, "no migration"):
        client.get_dbaas_migration_status(name=service.name)
    with api_error(404, "not found"):
        client.get_dbaas_migration_status(name=unique("nosuch"))


def wait_rows(uri: str, sql: str, want: list[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while (got := psql_ok(uri, sql)) != want:
        assert time.monotonic() < deadline, f"{sql}: {got} != {want}"
        time.sleep(0.2)


def test_replication_migration_follows_the_source_until_stopped(server, client, source):
    psql_ok(source.uri(), "CREATE DATABASE live")
    live = source.uri("live")
    psql_ok(live, "CREATE TABLE events (id serial PRIMARY KEY, v text);"
                  "CREATE INDEX events_v ON events (v);"
                  "INSERT INTO events (v) SELECT 'v' || g FROM generate_series(1, 5000) g")
    name = unique("migrep")
    svc = provision(client, name, migration=source.migration(method="replication", dbname="live"))
    st = wait_migration(client, name, until=("syncing",))
    assert st["status"] == "syncing", st
    assert st["method"] == "replication" and "error" not in st, st
    assert st["details"] == [{"dbname": "live", "method": "replication", "status": "syncing"}], st
    dst = svc.uri_for(dbname="live")
    digest = TABLE_DIGEST.format("events")
    assert psql_ok(dst, digest) == psql_ok(live, digest)
    # Changes written to the source after the copy keep arriving.
    psql_ok(live, "INSERT INTO events (v) SELECT 'w' || g FROM generate_series(1, 300) g;"
                  "UPDATE events SET v = 'changed' WHERE id <= 10; DELETE FROM events WHERE id = 11")
    wait_rows(dst, digest, psql_ok(live, digest))
    # The subscription is pgbay's; the tenant's admin stays a tenant and owns the tables.
    assert psql_ok(dst, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user") == ["f"]
    assert psql_ok(dst, "SELECT tableowner FROM pg_tables WHERE tablename = 'events'") == [svc.admin_user]

    op = client.stop_dbaas_pg_migration(name=name)
    from conftest import ok
    ok(client, op)
    st = client.get_dbaas_migration_status(name=name)
    assert st["status"] == "done", st
    assert st["details"] == [{"dbname": "live", "method": "replication", "status": "done"}], st
    # Replication is gone on both sides: no subscription, no slot, no publication.
    assert psql_ok(dst, "SELECT count(*) FROM pg_subscription") == ["0"]
    assert psql_ok(live, "SELECT count(*) FROM pg_replication_slots") == ["0"]
    assert psql_ok(live, "SELECT count(*) FROM pg_publication") == ["0"]
    # Sequences were synchronised once: the service continues where the source was.
    assert psql_ok(dst, "SELECT last_value FROM events_id_seq") == psql_ok(
        live, "SELECT last_value FROM events_id_seq")
    assert psql_ok(dst, "INSERT INTO events (v) VALUES ('on service') RETURNING id")[0] == "5301"
    # Rows written to the source after the stop do not arrive.
    psql_ok(live, "INSERT INTO events (v) VALUES ('after stop')")
    assert psql_ok(dst, "SELECT count(*) FROM events WHERE v = 'after stop'") == ["0"]
    with api_error(409, "no replication to stop"):
        client.stop_dbaas_pg_migration(name=name)
    assert SOURCE_PASSWORD not in server.log_text()


def test_replication_from_a_source_that_cannot_falls_back_to_dump(client):
    src = SourcePg(wal_level="replica")
    try:
        psql_ok(src.uri(), "CREATE DATABASE app")
        psql_ok(src.uri("app"), "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 100) g")
        name = unique("migfb")
        svc = provision(client, name, migration=src.migration(method="replication"))
        st = wait_migration(client, name)
        assert st["status"] == "done", st
        assert st["method"] == "dump", st
        assert "wal_level of the source is replica" in st["error"], st
        assert st["details"] == [{"dbname": "app", "method": "dump", "status": "done"}], st
        assert psql_ok(svc.uri_for(dbname="app"), "SELECT count(*) FROM t") == ["100"]
    finally:
        src.close()


def test_migration_started_by_update(client, source):
    name = unique("migput")
    svc = provision(client, name)
    op = client.update_dbaas_service_pg(name=name, migration=source.migration(dbname="extra"))
    from conftest import ok
    ok(client, op)
    st = wait_migration(client, name)
    assert st["status"] == "done", st
    assert psql_ok(svc.uri_for(dbname="extra"), "SELECT count(*) FROM notes") == ["2"]
    with api_error(400, "migration.method"):
        client.update_dbaas_service_pg(name=name, migration={"host": "h", "port": 1, "method": "x"})


def test_deleting_a_replicating_service_leaves_no_slot_on_the_source(client, source):
    psql_ok(source.uri(), "CREATE DATABASE gone")
    psql_ok(source.uri("gone"), "CREATE TABLE t (id int PRIMARY KEY)")
    name = unique("migdel")
    provision(client, name, migration=source.migration(method="replication", dbname="gone"))
    assert wait_migration(client, name, until=("syncing",))["status"] == "syncing"
    assert psql_ok(source.uri("gone"), "SELECT count(*) FROM pg_replication_slots") == ["1"]
    from conftest import ok
    ok(client, client.delete_dbaas_service_pg(name=name))
    assert psql_ok(source.uri("gone"), "SELECT count(*) FROM pg_replication_slots") == ["0"]
    assert psql_ok(source.uri("gone"), "SELECT count(*) FROM pg_publication") == ["0"]


def check(client, service: str, **body) -> dict:
    from conftest import ok
    op = ok(client, client.create_dbaas_task_migration_check(service=service, **body))
    assert op["reference"]["command"] == "get-dbaas-task", op
    return client.get_dbaas_task(service=service, id=op["reference"]["id"])


def test_migration_check_names_each_problem(server, client, source, service):
    task = check(client, service.name, source_service_uri=source.uri(), method="replication")
    assert task["success"] is True, task
    assert task["task-type"] == "migration_check" and "all checks passed" in task["result"], task

    task = check(client, service.name, source_service_uri=source.uri(password="wrong-password"))
    assert task["success"] is False, task
    assert "password authentication failed" in task["result"], task
    assert "wrong-password" not in str(task) and "wrong-password" not in server.log_text()

    closed = spare_port()
    task = check(client, service.name,
                 source_service_uri=f"postgres://postgres:x@127.0.0.1:{closed}/postgres")
    assert task["success"] is False and f"port {closed} failed" in task["result"], task

    task = check(client, service.name, source_service_uri=source.uri("nosuchdb"))
    assert task["success"] is False and '"nosuchdb" does not exist' in task["result"], task

    # TLS asked of a source that has none.
    task = check(client, service.name, source_service_uri=source.uri().replace(
        "sslmode=disable", "sslmode=require"))
    assert task["success"] is False and "SSL" in task["result"], task

    replica = SourcePg(wal_level="replica")
    try:
        task = check(client, service.name, source_service_uri=replica.uri(), method="replication")
        assert task["success"] is False, task
        assert "wal_level of the source is replica" in task["result"], task
    finally:
        replica.close()

    with api_error(400, "source-service-uri"):
        client.create_dbaas_task_migration_check(service=service.name, source_service_uri="mysql://x")
    with api_error(400, "method"):
        client.create_dbaas_task_migration_check(service=service.name,
                                                 source_service_uri=source.uri(), method="copy")
    with api_error(404, "not found"):
        client.get_dbaas_task(service=service.name, id="00000000-0000-0000-0000-000000000000")


def test_cli_create_with_migrate_from(server, client, source):
    from test_cli import pgbay, fails
    name = unique("migcli")
    # The password comes from PGPASSWORD, so the URI on the command line carries none.
    uri = f"postgres://postgres@127.0.0.1:{source.port}/extra"
    pgbay(server, "service", "create", name, "--plan", "startup-4", "--migrate-from", uri,
          PGPASSWORD=SOURCE_PASSWORD)
    st = wait_migration(client, name)
    assert st["status"] == "done" and [d["dbname"] for d in st["details"]] == ["extra"], st
    svc = client.get_dbaas_service_pg(name=name)
    assert "extra" in svc["databases"]
    err = fails(server, "service", "create", unique("migcli"), "--plan", "startup-4",
                "--migrate-from", "mysql://x")
    assert "--migrate-from" in err, err
