"""A client's segment held behind an earlier segment's answers, when one side goes away.

In transaction pooling, a Bind of a statement whose Close sits in an earlier segment, already
ended with Sync but not answered yet, is held by the pooler until that answer is in (it stalls,
`names::waits`). Each test pipelines, in one write, segment 1 (a slow `pg_sleep` of the named
statement s1, then Close of s1, Sync) and segment 2 (Bind of s1, Execute, Sync) on a transaction
pool of size 1, waits until the server runs the sleep (segment 2's Bind is held then), and takes
one side away: the client, or the server's backend. The pool must not hand out the connection in
the middle of that work, nor hang, and must serve the next client cleanly.
"""

from __future__ import annotations

import ssl
import time

import psycopg
import pytest

from conftest import find_pool, ok, unique, wait_for
from test_notify_budget import RawClient, parse_error
from test_protocol_differential import _wire

DEADLINE = 30.0
# Segment 2: what waits for segment 1's CloseComplete of s1.
HELD = [("B", "", "s1", 0), ("E", "", 0), ("S",)]


@pytest.fixture
def pool(client, service):
    """A transaction pool of size 1 (its uri) and a direct admin connection to its database."""
    name = unique("stall")
    ok(client, client.create_dbaas_pg_connection_pool(
        service_name=service.name, name=name, database_name="defaultdb", mode="transaction",
        size=1, username=service.admin_user))
    uri = find_pool(client.get_dbaas_service_pg(name=service.name), name)["connection-uri"]
    try:
        with psycopg.connect(service.uri_for(dbname="defaultdb"), autocommit=True) as admin:
            yield uri, admin
    finally:
        ok(client, client.delete_dbaas_pg_connection_pool(
            service_name=service.name, connection_pool_name=name))


def backend_pid(raw: RawClient) -> int:
    data = [body for kind, body in raw.query("select pg_backend_pid()") if kind == b"D"]
    return int(data[0][6:])


def stall(raw: RawClient, admin, pid: int, before: list[tuple], seconds: int, salt: str) -> None:
    """Sends `before`, the slow segment 1 and the held segment 2 in one write; returns once the
    server runs the sleep."""
    slow = [("P", "s1", f"select pg_sleep({seconds})"), ("B", "", "s1", 0), ("E", "", 0),
            ("C", "S", "s1"), ("S",)]
    raw.sock.sendall(_wire(before + slow + HELD, salt))
    wait_for("the server to run the sleep", DEADLINE, lambda: admin.execute(
        "select wait_event = 'PgSleep' from pg_stat_activity where pid = %s", (pid,)
    ).fetchone() == (True,), every=0.05)


def test_a_client_that_leaves_while_held_leaves_nothing_behind(pool, service):
    """The client leaves while segment 2 is held and its transaction (BEGIN, an INSERT, the
    sleep) runs: the connection is not lent to the next client in the middle of it (that client
    would see the row, and its commit would keep it). The next client is served with a clean
    session (not the departed one's setting, name or statements), and the row is never
    committed."""
    uri, admin = pool
    table = unique("stall").replace("-", "_")
    salt = unique("left")
    admin.execute(f"create table {table} (v int)")
    raw = RawClient(uri)
    try:
        raw.query("set application_name = 'departed'")
        pid = backend_pid(raw)
        work = [("P", "", "begin"), ("B", "", "", 0), ("E", "", 0),
                ("P", "", f"insert into {table} values (1)"), ("B", "", "", 0), ("E", "", 0)]
        stall(raw, admin, pid, work, 3, salt)
    finally:
        raw.close()
    with psycopg.connect(uri, autocommit=True, connect_timeout=10) as other:
        assert other.execute("select 1").fetchone() == (1,)
        assert other.execute("show application_name").fetchone() != ("departed",)
        assert other.execute(f"select count(*) from {table}").fetchone() == (0,)
        assert other.execute("select count(*) from pg_prepared_statements where statement like %s",
                             (f"%{salt}%",)).fetchone() == (0,)
        res = other.pgconn.describe_prepared(b"s1")
        assert res.error_field(psycopg.pq.DiagnosticField.SQLSTATE) == b"26000"
    # The departed client's backend ends (or idles outside a transaction): its row never was.
    wait_for("the departed client's transaction to end", DEADLINE, lambda: admin.execute(
        "select count(*) = 0 from pg_stat_activity where pid = %s and state <> 'idle'", (pid,)
    ).fetchone()[0])
    assert admin.execute(f"select count(*) from {table}").fetchone() == (0,)


def test_a_backend_that_dies_while_held_ends_the_client_and_not_the_pool(pool):
    """The pool's backend is terminated while segment 2 is held: the client gets errors of
    class 57P01/08 (today PostgreSQL's FATAL 57P01, then the pooler's FATAL 08006 "server
    connection lost"), then the connection closes: no hang, and no ReadyForQuery for segments
    never answered. A new client is served on a new backend."""
    uri, admin = pool
    raw = RawClient(uri)
    kinds, errors, closed = [], [], False
    try:
        pid = backend_pid(raw)
        stall(raw, admin, pid, [], 20, unique("died"))
        assert admin.execute("select pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            try:
                kind, body = raw._recv_msg()
            except (EOFError, ssl.SSLError, ConnectionError):
                closed = True
                break
            except TimeoutError:
                continue
            kinds.append(kind)
            if kind == b"E":
                errors.append(parse_error(body))
    finally:
        raw.close()
    assert closed, f"connection still open after {DEADLINE}s; got {kinds} {errors}"
    codes = [e["C"] for e in errors]
    assert codes and all(c == "57P01" or c.startswith("08") for c in codes), errors
    assert b"Z" not in kinds, kinds
    with psycopg.connect(uri, autocommit=True, connect_timeout=10) as other:
        assert other.execute("select 1").fetchone() == (1,)
        assert other.execute("select pg_backend_pid()").fetchone() != (pid,)
