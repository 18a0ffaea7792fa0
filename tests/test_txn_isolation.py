"""No session state crosses clients in transaction mode (issue 15).

Each test is one repro of the attack: a client leaves something on the pool's only server
connection (a transaction pool of size 1, so every client runs on that one connection, in turn),
then four other clients (psycopg, psycopg2, psql) must not see it. Tracked settings stay with the
client that set them; everything else is reset before the connection serves anyone else.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import struct
import subprocess
import threading
import time
from urllib.parse import urlsplit

import psycopg
import psycopg2
import pytest

from conftest import PgbayServer, find_pool, ok, provision, psql_ok, unique
from test_console import pool_row, show, wait_until
from test_notify_budget import RawClient, _msg, parse_error

OTHERS = 4


@pytest.fixture(scope="module")
def svc(client):
    s = provision(client, unique("iso"))
    ok(client, client.create_dbaas_pg_database(service_name=s.name, database_name="app"))
    ok(client, client.create_dbaas_postgres_user(service_name=s.name, username="appuser"))
    with psycopg.connect(s.uri_for(dbname="app"), autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS leak")
        conn.execute("GRANT USAGE, CREATE ON SCHEMA leak TO appuser")
        conn.execute("GRANT CREATE ON DATABASE app TO appuser")
        # A role the pool's user may SET ROLE to (no superuser needed).
        conn.execute("CREATE ROLE isorole NOLOGIN")
        conn.execute("GRANT isorole TO appuser")
    return s


@pytest.fixture
def pool_uri(client, svc):
    name = unique("iso")
    ok(client, client.create_dbaas_pg_connection_pool(
        service_name=svc.name, name=name, database_name="app", mode="transaction", size=1,
        username="appuser"))
    pool = find_pool(client.get_dbaas_service_pg(name=svc.name), name)
    return pool["connection-uri"]


def one(conn, sql):
    return conn.execute(sql).fetchone()[0]


def others_see(uri: str, sql: str) -> list[str]:
    """What OTHERS fresh clients of the pool read with `sql` (one value each): psycopg (extended
    protocol), psycopg2 (simple), psql, psycopg again. All run on the pool's one connection."""
    seen = []
    with psycopg.connect(uri, autocommit=True) as c:
        seen.append(str(one(c, sql)))
    c2 = psycopg2.connect(uri)
    try:
        c2.autocommit = True
        with c2.cursor() as cur:
            cur.execute(sql)
            seen.append(str(cur.fetchone()[0]))
    finally:
        c2.close()
    seen.append(psql_ok(uri, sql)[0])
    with psycopg.connect(uri, autocommit=True) as c:
        seen.append(str(one(c, sql)))
    assert len(seen) == OTHERS
    return seen


def same_backend(uri: str, conn) -> None:
    """The setter and a newcomer ran on the same server connection (the repro is real)."""
    with psycopg.connect(uri, autocommit=True) as c:
        assert one(c, "SELECT pg_backend_pid()") == one(conn, "SELECT pg_backend_pid()")


def test_set_role_stays_with_its_client(pool_uri):
    with psycopg.connect(pool_uri, autocommit=True) as a:
        a.execute("SET ROLE isorole")
        same_backend(pool_uri, a)
        assert others_see(pool_uri, "SELECT current_user") == ["appuser"] * OTHERS
        # Carried with its client, like the tracked settings.
        assert one(a, "SELECT current_user") == "isorole"


def test_set_config_role_in_a_select_list(pool_uri):
    with psycopg.connect(pool_uri, autocommit=True) as a:
        assert one(a, "SELECT 1, set_config('role', 'isorole', false)") == 1
        assert others_see(pool_uri, "SELECT current_user") == ["appuser"] * OTHERS


def test_set_session_authorization(svc, client):
    """The repro, on a pool of the service's admin user: the admin is not a superuser (see
    test_isolation.py) and no pool user can be one, so PostgreSQL refuses it (42501) and nothing
    reaches the next clients. (Were it run, the pooler's session reset undoes it too: `RESET
    SESSION AUTHORIZATION` is part of its `RESET_SQL`.)"""
    name = unique("isoadm")
    ok(client, client.create_dbaas_pg_connection_pool(
        service_name=svc.name, name=name, database_name="app", mode="transaction", size=1,
        username=svc.admin_user))
    uri = find_pool(client.get_dbaas_service_pg(name=svc.name), name)["connection-uri"]
    with psycopg.connect(uri, autocommit=True) as a:
        with pytest.raises(psycopg.errors.InsufficientPrivilege,
                           match="permission denied to set session authorization"):
            a.execute("SET SESSION AUTHORIZATION appuser")
        assert others_see(uri, "SELECT session_user") == [svc.admin_user] * OTHERS
        assert one(a, "SELECT session_user") == svc.admin_user


@pytest.mark.parametrize("setting, value", [("enable_seqscan", "off")])
def test_untracked_settings_are_reset(pool_uri, setting, value):
    # An unknown custom setting reads as NULL, or '' once some session defined it.
    read = f"SELECT coalesce(nullif(current_setting('{setting}', true), ''), 'unset')"
    with psycopg.connect(pool_uri, autocommit=True) as a:
        default = one(a, read)
        with a.transaction():
            a.execute(f"SET {setting} = '{value}'")
            assert one(a, read) == value
        a.execute(f"SET {setting} = '{value}'")
        assert others_see(pool_uri, read) == [default] * OTHERS
        # Not carried: an untracked setting lasts until the end of the transaction (README).
        assert one(a, read) == default


TENANT = "SELECT coalesce(nullif(current_setting('app.tenant', true), ''), 'unset')"


@pytest.mark.parametrize("how", ["set", "set-in-block", "set_config-prepared",
                                 "set_config-name-bound", "options"])
def test_a_custom_setting_stays_with_its_client(pool_uri, how):
    """A custom setting (`app.tenant`, as row-level security policies read it) follows the
    client that set it from transaction to transaction, however it was set, and reaches no
    other client of the pool's one server connection (each of which finds it unset)."""
    options = "-c app.tenant=acme" if how == "options" else ""
    with psycopg.connect(pool_uri, autocommit=True, options=options) as a:
        if how == "set":
            a.execute("SET app.tenant = 'acme'")
        elif how == "set-in-block":
            with a.transaction():
                a.execute("SELECT 1")
                a.execute("SET SESSION App.Tenant TO acme")
        elif how == "set_config-prepared":
            # Sent often enough to be prepared by psycopg, run with a parameter each time.
            for i in range(8):
                tenant = "acme" if i == 7 else f"t{i}"
                got = a.execute("SELECT set_config('app.tenant', %s, false)", (tenant,))
                assert got.fetchone()[0] == tenant
                assert one(a, TENANT) == tenant
        elif how == "set_config-name-bound":
            # The name too is a parameter (bound on the server by psycopg), unnamed the first
            # times, then prepared.
            for i in range(8):
                tenant = "acme" if i == 7 else f"t{i}"
                got = a.execute("SELECT set_config(%s, %s, false)", ("App.Tenant", tenant))
                assert got.fetchone()[0] == tenant
                assert one(a, TENANT) == tenant
        same_backend(pool_uri, a)
        for _ in range(2):
            assert others_see(pool_uri, TENANT) == ["unset"] * OTHERS
            assert one(a, TENANT) == "acme"
        # Undone as on a connection of its own: RESET, then a SET LOCAL that ends with its block.
        a.execute("RESET app.tenant")
        with a.transaction():
            a.execute("SET LOCAL app.tenant = 'other'")
            assert one(a, TENANT) == "other"
        assert one(a, TENANT) == "unset"
        assert others_see(pool_uri, TENANT) == ["unset"] * OTHERS


def test_a_rolled_back_custom_setting_is_not_kept(pool_uri):
    with psycopg.connect(pool_uri, autocommit=True) as a:
        a.execute("SET app.tenant = 'acme'")
        a.execute("BEGIN")
        a.execute("SET app.tenant = 'rolled-back'")
        a.execute("ROLLBACK")
        assert one(a, TENANT) == "acme"
        # RESET ALL (and DISCARD ALL) give it back its default, as PostgreSQL does.
        a.execute("RESET ALL")
        assert one(a, TENANT) == "unset"


def custom_val(conn, name):
    """Custom setting `name` as `conn` reads it ('unset' for none or empty)."""
    read = "SELECT coalesce(nullif(current_setting(%s, true), ''), 'unset')"
    return conn.execute(read, (name,)).fetchone()[0]


def refused_65th(conn, sql, *args, **kw):
    """`sql` is refused as the client's 65th custom setting, app.s64 (54000)."""
    with pytest.raises(psycopg.errors.ProgramLimitExceeded, match=r"at most 64.*app\.s64"):
        conn.execute(sql, *args, **kw)


def test_a_custom_setting_past_the_64th_is_refused_and_nothing_is_lost(pool_uri):
    """A client carries at most 64 custom settings: a statement that would set a 65th is
    refused before it runs (54000, naming it; an open block fails, as on PostgreSQL's own
    error), instead of running and being reset at its transaction's end; the 64 stay."""
    with psycopg.connect(pool_uri, autocommit=True) as a:
        a.execute("; ".join(f"SET app.s{i} = 'v{i}'" for i in range(32)))
        for i in range(32, 64):
            a.execute(f"SET app.s{i} = 'v{i}'")
        refused_65th(a, "SET app.s64 = 'v64'")
        refused_65th(a, "SELECT 1; SET app.s0 = 'again'; SET app.s64 = 'x'")
        refused_65th(a, "SELECT set_config('app.s64', %s, false)", ("x",), prepare=True)
        # In a block: it fails, as PostgreSQL's own error would, and rolls back what came first.
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            with a.transaction():
                a.execute("SET app.s1 = 'in-block'")
                a.execute("SET SESSION app.s64 = 'x'")
        # Neither the refused statements nor the failed block changed anything, and the 64 are
        # still the client's after other clients had the pool's connection.
        unset = "SELECT coalesce(nullif(current_setting('app.s5', true), ''), 'unset')"
        assert others_see(pool_uri, unset) == ["unset"] * OTHERS
        for i in (0, 1, 63):
            assert custom_val(a, f"app.s{i}") == f"v{i}"
        assert custom_val(a, "app.s64") == "unset"
        # A setting for the transaction alone is no 65th. A RESET leaves the name set (empty,
        # as PostgreSQL keeps it): the 65th stays refused, the 64 can be set again.
        with a.transaction():
            a.execute("SET LOCAL app.s64 = 'local'")
            assert custom_val(a, "app.s64") == "local"
        assert custom_val(a, "app.s64") == "unset"
        a.execute("RESET app.s0")
        assert custom_val(a, "app.s0") == "unset"
        refused_65th(a, "SET app.s64 = 'v64'")
        a.execute("SET app.s0 = 'again'")
        assert custom_val(a, "app.s0") == "again"
        assert custom_val(a, "app.s63") == "v63"


def test_a_custom_setting_past_the_64th_is_refused_at_its_bind(pool_uri):
    """A 65th custom setting the pooler can only see at the Bind — its name a bound parameter
    of set_config (psycopg binds on the server), or a statement prepared while the client had
    room — is refused there (54000, naming it), before it runs: an open block fails, the
    refused Bind's segment is skipped to its Sync, and nothing is lost; the client's statements
    still work after it."""
    from psycopg import pq

    def exec_prepared(conn, name):
        res = conn.pgconn.exec_prepared(name, [])
        return res.status, res.error_field(pq.DiagnosticField.SQLSTATE)

    bound = "SELECT set_config(%s, 'x', false)"
    with psycopg.connect(pool_uri, autocommit=True) as a:
        # Prepared (Parse and Sync only: nothing runs) while the client has room.
        res = a.pgconn.prepare(b"late", b"SELECT set_config('app.s64', 'late', false)")
        assert res.status == pq.ExecStatus.COMMAND_OK, res.error_message
        res = a.pgconn.prepare(b"fine", b"SELECT set_config('app.s0', 'again', false)")
        assert res.status == pq.ExecStatus.COMMAND_OK, res.error_message
        a.execute("; ".join(f"SET app.s{i} = 'v{i}'" for i in range(64)))
        # The name as a bound parameter, unnamed and prepared.
        refused_65th(a, bound, ("app.s64",))
        refused_65th(a, bound, ("APP.S64",), prepare=True)
        # A name the client has is no 65th.
        a.execute(bound, ("app.s1",))
        assert custom_val(a, "app.s1") == "x"
        # The statement prepared while there was room, bound now.
        assert exec_prepared(a, b"late") == (pq.ExecStatus.FATAL_ERROR, b"54000")
        assert exec_prepared(a, b"fine") == (pq.ExecStatus.TUPLES_OK, None)
        # In a block: it fails, and rolls back what came first.
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            with a.transaction():
                a.execute("SET app.s2 = 'in-block'")
                a.execute(bound, ("app.s64",))
        assert a.pgconn.transaction_status == pq.TransactionStatus.IDLE
        # In a block failed before it, the server refuses the Bind as it refuses any (25P02).
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            with a.transaction():
                with pytest.raises(psycopg.errors.DivisionByZero):
                    a.execute("SELECT 1/0")
                a.execute(bound, ("app.s64",))
        assert a.pgconn.transaction_status == pq.TransactionStatus.IDLE
        # Nothing of the refused ones ran or stayed; the 64 are the client's, also after other
        # clients had the pool's connection.
        unset = "SELECT coalesce(nullif(current_setting('app.s5', true), ''), 'unset')"
        assert others_see(pool_uri, unset) == ["unset"] * OTHERS
        assert custom_val(a, "app.s64") == "unset"
        assert [custom_val(a, f"app.s{i}") for i in (0, 1, 2, 63)] == ["again", "x", "v2", "v63"]
        # The client's unnamed statement and its named ones work after the refusals.
        assert a.execute("SELECT %s::int + 1", (41,)).fetchone()[0] == 42
        assert exec_prepared(a, b"fine") == (pq.ExecStatus.TUPLES_OK, None)


@pytest.mark.parametrize("setting, value", [
    ("bytea_output", "escape"), ("client_min_messages", "error"), ("xmloption", "document"),
    ("plan_cache_mode", "force_generic_plan"),
])
def test_output_settings_stay_with_their_client(pool_uri, setting, value):
    """Settings that change how results read (a driver parses them) follow their client like
    search_path does, and reach no one else."""
    with psycopg.connect(pool_uri, autocommit=True) as probe:
        default = one(probe, f"SHOW {setting}")
    assert default != value
    a = psycopg2.connect(pool_uri)
    try:
        a.autocommit = True
        with a.cursor() as cur:
            cur.execute(f"SET {setting} = '{value}'")
        assert others_see(pool_uri, f"SHOW {setting}") == [default] * OTHERS
        with a.cursor() as cur:
            cur.execute(f"SHOW {setting}")
            assert cur.fetchone()[0] == value
            if setting == "bytea_output":
                cur.execute("SELECT 'ab'::bytea::text")
                assert cur.fetchone()[0] == "ab"
    finally:
        a.close()


@pytest.mark.parametrize("sql", [
    "select 1; set search_path to leak",
    "create schema if not exists leak; set search_path to leak",
    "select 1, set_config('search_path', 'leak', false)",
    "DO $$ BEGIN PERFORM set_config('search_path', 'leak', false); END $$",
])
def test_tracked_settings_set_past_the_first_word(pool_uri, sql):
    with psycopg.connect(pool_uri, autocommit=True) as probe:
        default = one(probe, "SHOW search_path")
    # psycopg2 sends the text as it is (simple protocol), as the attack did.
    a = psycopg2.connect(pool_uri)
    try:
        a.autocommit = True
        with a.cursor() as cur:
            cur.execute(sql)
        assert others_see(pool_uri, "SHOW search_path") == [default] * OTHERS
        with a.cursor() as cur:
            cur.execute("SHOW search_path")
            assert cur.fetchone()[0] == "leak"
    finally:
        a.close()


def test_statement_timeout_does_not_cancel_other_clients(pool_uri):
    with psycopg.connect(pool_uri, autocommit=True) as a:
        a.execute("select 1; set statement_timeout = 1")
        assert others_see(pool_uri, "SELECT 'ok' FROM pg_sleep(0.05)") == ["ok"] * OTHERS
        with pytest.raises(psycopg.errors.QueryCanceled):
            a.execute("SELECT pg_sleep(0.05)")


HELD_LOCKS = ("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
              "AND pid = pg_backend_pid()")


def test_temporary_tables_are_dropped_when_their_client_leaves(pool_uri):
    with psycopg.connect(pool_uri, autocommit=True) as a:
        a.execute("CREATE TEMP TABLE secret (v text)")
    assert others_see(
        pool_uri, "SELECT coalesce(to_regclass('pg_temp.secret')::text, 'none')"
    ) == ["none"] * OTHERS


def test_session_advisory_locks_are_released_when_their_client_leaves(pool_uri):
    with psycopg.connect(pool_uri, autocommit=True) as a:
        a.execute("SELECT pg_advisory_lock(4242)")
    assert others_see(pool_uri, HELD_LOCKS) == ["0"] * OTHERS


def test_held_cursors_are_closed_when_their_client_leaves(pool_uri):
    a = psycopg2.connect(pool_uri)
    try:
        a.autocommit = True
        with a.cursor() as cur:
            cur.execute("select 1; DECLARE leaky CURSOR WITH HOLD FOR SELECT 'secret'")
    finally:
        a.close()
    assert others_see(pool_uri, "SELECT count(*) FROM pg_cursors") == ["0"] * OTHERS


def _pool_of_one(client, svc, mode: str = "transaction") -> tuple[str, str]:
    """A pool of one server connection (transaction mode unless `mode`): (name, URI)."""
    name = unique("pin")
    ok(client, client.create_dbaas_pg_connection_pool(
        service_name=svc.name, name=name, database_name="app", mode=mode, size=1,
        username="appuser"))
    return name, find_pool(client.get_dbaas_service_pg(name=svc.name), name)["connection-uri"]


def _served_once_let_go(svc, name: str, uri: str, sql: str, let_go) -> list:
    """Runs `sql` with psql, another client of the pool of one `name`: it waits for the pool's
    connection while the first client keeps it, and is served once `let_go()` has run."""
    seen = []
    other = threading.Thread(target=lambda: seen.append(psql_ok(uri, sql)))
    other.start()
    try:
        wait_until(lambda: pool_row(svc, name)["cl_waiting"] == 1,
                   what="the other client to wait for the pool's one connection")
        assert seen == []
        let_go()
    finally:
        other.join(30)
    return seen


@pytest.mark.parametrize("driver,mode", [
    ("psycopg", "transaction"), ("psycopg2", "transaction"), ("psycopg2", "statement")])
def test_a_held_cursor_keeps_its_server_connection_until_closed(client, svc, driver, mode):
    """Django's QuerySet.iterator() in autocommit: a named cursor WITH HOLD, declared in one
    transaction and fetched in chunks in the next ones, each on the server connection that
    holds it, as on a direct connection (a transaction pooler that moves the client between
    connections answers 34000 "cursor does not exist"); once closed, the connection is the
    pool's again and nothing of it is left. In statement mode too (each statement its own
    transaction there)."""
    name, uri = _pool_of_one(client, svc, mode)
    if driver == "psycopg":
        a = psycopg.connect(uri, autocommit=True)
        cur = a.cursor("chunks", withhold=True)
    else:
        a = psycopg2.connect(uri)
        a.autocommit = True
        cur = a.cursor("chunks", withhold=True)
    try:
        cur.execute("SELECT g FROM generate_series(1, 10) g")
        got = []
        while rows := cur.fetchmany(3):
            got += [r[0] for r in rows]
        assert got == list(range(1, 11))
        # Other transactions of the same client in between, on the same connection.
        with a.cursor() as plain:
            plain.execute("SELECT count(*) FROM pg_cursors WHERE name = 'chunks'")
            assert plain.fetchone()[0] == 1
        seen = _served_once_let_go(svc, name, uri, "SELECT count(*) FROM pg_cursors", cur.close)
        assert seen == [["0"]]
        # The client goes on, its connection shared again.
        with a.cursor() as plain:
            plain.execute("SELECT 7")
            assert plain.fetchone()[0] == 7
    finally:
        a.close()


def test_a_session_advisory_lock_keeps_its_server_connection_until_unlocked(client, svc):
    """ActiveRecord's migration lock: pg_try_advisory_lock in one transaction,
    pg_advisory_unlock in a later one, which finds the lock (true, not a WARNING and false)."""
    name, uri = _pool_of_one(client, svc)
    with psycopg.connect(uri, autocommit=True) as a:
        assert one(a, "SELECT pg_try_advisory_lock(4243)") is True
        a.execute("SELECT 1")
        assert one(a, HELD_LOCKS) == 1

        def unlock():
            assert one(a, "SELECT pg_advisory_unlock(4243)") is True

        assert _served_once_let_go(svc, name, uri, HELD_LOCKS, unlock) == [["0"]]
        assert one(a, "SELECT 8") == 8


def test_a_temporary_table_keeps_its_server_connection_until_dropped(client, svc):
    name, uri = _pool_of_one(client, svc)
    with psycopg.connect(uri, autocommit=True) as a:
        a.execute("CREATE TEMP TABLE scratch (v int)")
        a.execute("INSERT INTO scratch VALUES (1), (2)")
        assert one(a, "SELECT sum(v) FROM scratch") == 3
        seen = _served_once_let_go(
            svc, name, uri, "SELECT coalesce(to_regclass('pg_temp.scratch')::text, 'none')",
            lambda: a.execute("DROP TABLE scratch"))
        assert seen == [["none"]]
        # What else the client left on its session is reset once the connection is let go.
        a.execute("SET enable_seqscan = off")
        assert others_see(uri, "SHOW enable_seqscan") == ["on"] * OTHERS


def test_a_client_that_keeps_its_connection_is_let_go_when_its_pool_is_removed(client, svc):
    """An idle client that keeps its server connection (a session lock) does not hold up the
    removal of its pool: it is told at once, and what it held is reset."""
    name, uri = _pool_of_one(client, svc)
    a = psycopg.connect(uri, autocommit=True)
    try:
        a.execute("SELECT pg_advisory_lock(4244)")
        ok(client, client.delete_dbaas_pg_connection_pool(
            service_name=svc.name, connection_pool_name=name))
        readable, _, _ = select.select([a.fileno()], [], [], 30)
        assert readable, "the idle client was not told of its pool's removal"
        with pytest.raises(psycopg.OperationalError) as info:
            a.execute("SELECT 1")
        assert name in str(info.value)
    finally:
        a.close()
    locks = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4244"
    assert psql_ok(svc.uri_for(dbname="app"), locks) == ["0"]


def test_a_client_that_keeps_its_connection_is_told_when_the_server_is_lost(client, svc):
    """A client that kept its connection for a session lock, whose server backend is then
    terminated, loses the lock: its session ends (the server's FATAL, then closed), as a direct
    connection's does, instead of going on as if it still held the lock on a new connection."""
    name, uri = _pool_of_one(client, svc)
    holder = psycopg.connect(svc.uri_for(dbname="app"), autocommit=True)
    raw = RawClient(uri)
    try:
        assert raw.query("SELECT pg_advisory_lock(4247)")[-1] == (b"Z", b"I")
        pid = int(next(b for k, b in raw.query("SELECT pg_backend_pid()") if k == b"D")[6:])
        assert one(holder, f"SELECT pg_terminate_backend({pid})") is True
        _, error, closed = raw.drain(quiet=30)
        assert closed, "the session went on without the lock it held"
        assert error is not None and error.get("C") in ("57P01", "08006"), error
    finally:
        raw.close()
        holder.close()
    # The pool serves the next client on a new connection.
    assert psql_ok(uri, "SELECT 5") == ["5"]


def test_a_rolled_back_held_cursor_keeps_nothing(client, svc):
    """A cursor WITH HOLD declared in a block that rolls back is gone with it: the connection
    is the pool's again at once."""
    name, uri = _pool_of_one(client, svc)
    with psycopg.connect(uri) as a:
        a.execute("DECLARE gone CURSOR WITH HOLD FOR SELECT 1")
        a.rollback()
        assert others_see(uri, "SELECT count(*) FROM pg_cursors") == ["0"] * OTHERS


LISTENING = "SELECT count(*) FROM pg_listening_channels()"


@pytest.mark.parametrize("sql", [
    'LISTEN U&"ch\\0061n"',
    "select 1; LISTEN chan",
    "/* c */ LISTEN chan; select 1",
])
def test_listen_forms_never_reach_the_pooled_connection(pool_uri, sql):
    # Simple protocol (psycopg2) and extended protocol (psycopg: Parse).
    a = psycopg2.connect(pool_uri)
    try:
        a.autocommit = True
        with a.cursor() as cur:
            with pytest.raises(psycopg2.errors.FeatureNotSupported) as e:
                cur.execute(sql)
            assert "LISTEN/UNLISTEN must be alone" in str(e.value)
            cur.execute("SELECT 7")
            assert cur.fetchone()[0] == 7
    finally:
        a.close()
    with psycopg.connect(pool_uri, autocommit=True) as b:
        with pytest.raises(psycopg.errors.FeatureNotSupported) as e:
            b.execute(sql)
        assert "LISTEN/UNLISTEN must be alone" in str(e.value)
        assert one(b, "SELECT 7") == 7
    assert others_see(pool_uri, LISTENING) == ["0"] * OTHERS


def test_long_listen_channel_is_served_by_the_pooler(pool_uri):
    channel = "c" * 100
    for execute in ("simple", "extended"):
        with psycopg.connect(pool_uri, autocommit=True) as a:
            if execute == "simple":
                a.pgconn.exec_(f"LISTEN {channel}".encode())
            else:
                a.execute(f"LISTEN {channel}")
            assert others_see(pool_uri, LISTENING) == ["0"] * OTHERS
            # PostgreSQL truncates the name to 63 bytes: so does the pooler.
            with psycopg.connect(pool_uri, autocommit=True) as sender:
                sender.execute(f"NOTIFY {'c' * 63}, 'hi {execute}'")
            n = next(a.notifies(timeout=5.0, stop_after=1))
            assert (n.channel, n.payload) == ("c" * 63, f"hi {execute}")


def _extended(sql: bytes, end: bytes | None = b"S") -> bytes:
    """Parse, Bind and Execute of `sql` as the unnamed statement and portal, then `end` (Sync,
    Flush, or nothing)."""
    return (_msg(b"P", b"\0" + sql + b"\0\0\0") + _msg(b"B", b"\0\0" + b"\0\0" * 3)
            + _msg(b"E", b"\0\0\0\0\0") + (_msg(end, b"") if end else b""))


def test_listen_through_parse_completes_with_its_own_tag(pool_uri):
    """LISTEN and UNLISTEN sent with Parse/Bind/Execute (the server runs a stand-in that does
    nothing) complete with PostgreSQL's command tags."""
    raw = RawClient(pool_uri)
    try:
        data = b"".join(_extended(sql, None)
                        for sql in (b"LISTEN tagged", b"UNLISTEN tagged", b"UNLISTEN *"))
        raw.sock.sendall(data + _msg(b"S", b""))
        tags = [body for kind, body in raw.until_ready() if kind == b"C"]
        assert tags == [b"LISTEN\0", b"UNLISTEN\0", b"UNLISTEN\0"]
    finally:
        raw.close()


@pytest.mark.parametrize("sql", [b"LISTEN snap_ch", b"UNLISTEN snap_ch", b"DEALLOCATE ALL"])
def test_statements_the_pooler_serves_take_no_snapshot(pool_uri, sql):
    """A LISTEN, UNLISTEN or DEALLOCATE sent with Parse inside a transaction block (the server
    runs a stand-in) is no query to PostgreSQL: the block's isolation level can still be set."""
    raw = RawClient(pool_uri)
    try:
        assert raw.query("BEGIN")[-1] == (b"Z", b"T")
        raw.sock.sendall(_extended(sql))
        assert [k for k, _ in raw.until_ready()] == [b"1", b"2", b"C", b"Z"]
        raw.sock.sendall(_extended(b"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"))
        got = raw.until_ready()
        assert [k for k, _ in got] == [b"1", b"2", b"C", b"Z"], [
            parse_error(b) for k, b in got if k == b"E"]
        assert raw.query("SHOW transaction_isolation")[1] == (b"D", b"\0\x01\0\0\0\x0cserializable")
    finally:
        raw.close()


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_listen_in_a_failed_block_and_after_discard_all(pool_uri, protocol):
    """As on a direct connection: a LISTEN in a failed transaction block fails (25P02) and
    listens to nothing; `DISCARD ALL` drops the client's channels. The client then hears only
    the channel it listens to afterwards."""
    with psycopg.connect(pool_uri, autocommit=True) as a, \
            psycopg.connect(pool_uri, autocommit=True) as sender:
        def run(sql):
            if protocol == "extended":
                a.execute(sql)
                return
            res = a.pgconn.exec_(sql.encode())
            sqlstate = res.error_field(psycopg.pq.DiagnosticField.SQLSTATE)
            if sqlstate:
                raise psycopg.errors.lookup(sqlstate.decode())(res.error_message.decode())

        run("BEGIN")
        with pytest.raises(psycopg.errors.DivisionByZero):
            run("SELECT 1/0")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            run("LISTEN failed_ch")
        run("ROLLBACK")
        run("LISTEN gone_ch")
        run("DISCARD ALL")
        sender.execute("NOTIFY failed_ch, 'no'")
        sender.execute("NOTIFY gone_ch, 'no'")
        run("LISTEN kept_ch")
        sender.execute("NOTIFY kept_ch, 'yes'")
        got = [(n.channel, n.payload) for n in a.notifies(timeout=5.0, stop_after=1)]
        assert got == [("kept_ch", "yes")]


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_unlisten_all_in_a_failed_block_drops_nothing(pool_uri, protocol):
    """`UNLISTEN *` in a failed transaction block fails (25P02) and the client keeps its
    channels, as on a direct connection."""
    channel = unique("kept").replace("-", "_")
    raw = RawClient(pool_uri)
    try:
        def run(sql: str) -> list:
            if protocol == "simple":
                return raw.query(sql)
            raw.sock.sendall(_extended(sql.encode()))
            return raw.until_ready()

        run(f"LISTEN {channel}")
        run("BEGIN")
        run("SELECT 1/0")
        got = run("UNLISTEN *")
        assert [parse_error(b)["C"] for k, b in got if k == b"E"] == ["25P02"]
        got = run("ROLLBACK")
        with psycopg.connect(pool_uri, autocommit=True) as sender:
            sender.execute(f"NOTIFY {channel}, 'still'")
        while not any(k == b"A" for k, _ in got):
            got.append(raw._recv_msg())  # RawClient's 10 s timeout bounds the wait
        assert next(b for k, b in got if k == b"A")[4:].split(b"\0")[:2] == [channel.encode(), b"still"]
    finally:
        raw.close()


@pytest.mark.parametrize("form", ["queries", "one segment"])
def test_listen_pipelined_behind_a_failing_statement(pool_uri, form):
    """A LISTEN sent in the same write as the statement that fails waits for that answer, and
    listens to nothing, as PostgreSQL: behind a Query that fails the block it is refused
    (25P02); behind a failing Execute of its own segment the server skips it (no answer). The
    client then hears only the channel it listens to afterwards."""
    raw = RawClient(pool_uri)
    try:
        if form == "queries":
            raw.sock.sendall(_msg(b"Q", b"BEGIN; SELECT 1/0\0") + _msg(b"Q", b"LISTEN piped_ch\0"))
            got = raw.until_ready() + raw.until_ready()
            assert [parse_error(b)["C"] for k, b in got if k == b"E"] == ["22012", "25P02"]
            assert [b for k, b in got if k == b"Z"] == [b"E", b"E"]
            raw.query("ROLLBACK")
        else:
            raw.sock.sendall(_extended(b"SELECT 1/0", None) + _extended(b"LISTEN piped_ch"))
            got = raw.until_ready()
            assert [k for k, _ in got] == [b"1", b"E", b"Z"]
            assert parse_error(got[1][1])["C"] == "22012"
        with psycopg.connect(pool_uri, autocommit=True) as sender:
            sender.execute("NOTIFY piped_ch, 'no'")
            got = raw.query("LISTEN later_ch")
            sender.execute("NOTIFY later_ch, 'yes'")
        while not any(k == b"A" and b"later_ch" in b for k, b in got):
            got.append(raw._recv_msg())  # RawClient's 10 s timeout bounds the wait
        notes = [b[4:].split(b"\0")[:2] for k, b in got if k == b"A"]
        assert notes == [[b"later_ch", b"yes"]]
    finally:
        raw.close()


def _payloads(got: list) -> list[bytes]:
    """The payloads of the NotificationResponses among `got` ((type, body) messages), in order."""
    return [b[4:].split(b"\0")[1] for k, b in got if k == b"A"]


@pytest.mark.parametrize("form", ["queries", "one segment", "named earlier", "unnamed earlier"])
def test_a_notify_pipelined_behind_discard_all_is_not_heard(pool_uri, svc, form):
    """`DISCARD ALL` drops the client's channels: a NOTIFY the client sends right behind it in
    the same write (two Queries, one extended-protocol segment, or an Execute of a `DISCARD ALL`
    the client parsed in an earlier segment, named or unnamed) commits after it and is not
    heard, side by side with a direct connection (session fuzz seed 1668: through the pool the
    NOTIFY reached the server before the pool's listener had dropped the client's channels).
    The client's messages after a `DISCARD ALL` wait for its answer and for the listener."""
    channel = unique("disc").replace("-", "_")

    def heard(uri: str) -> list:
        raw = RawClient(uri)
        try:
            raw.query(f"LISTEN {channel}")
            if form == "queries":
                raw.sock.sendall(_msg(b"Q", b"DISCARD ALL\0")
                                 + _msg(b"Q", f"NOTIFY {channel}, 'after'\0".encode()))
                got = raw.until_ready() + raw.until_ready()
            elif form.endswith("earlier"):
                name = b"disc" if form == "named earlier" else b""
                raw.sock.sendall(_msg(b"P", name + b"\0DISCARD ALL\0\0\0") + _msg(b"S", b""))
                got = raw.until_ready()
                raw.sock.sendall(_msg(b"B", b"\0" + name + b"\0" + b"\0\0" * 3)
                                 + _msg(b"E", b"\0\0\0\0\0") + _msg(b"S", b"")
                                 + _msg(b"Q", f"NOTIFY {channel}, 'after'\0".encode()))
                got += raw.until_ready() + raw.until_ready()
            else:
                raw.sock.sendall(_extended(b"DISCARD ALL", None)
                                 + _extended(f"NOTIFY {channel}, 'after'".encode()))
                got = raw.until_ready()
            assert not [parse_error(b) for k, b in got if k == b"E"], got
            got += raw.query(f"LISTEN {channel}_marker")
            with psycopg.connect(svc.uri_for(dbname="app"), autocommit=True) as sender:
                sender.execute(f"NOTIFY {channel}_marker, 'm'")
            while not any(k == b"A" and b"_marker" in b for k, b in got):
                got.append(raw._recv_msg())  # RawClient's 10 s timeout bounds the wait
            return _payloads(got)
        finally:
            raw.close()

    direct = heard(svc.uri_for(dbname="app"))
    assert direct == [b"m"], direct
    assert heard(pool_uri) == direct


def _still_hears(raw, svc, channel: str, got: list) -> tuple:
    """The errors, command tags and ReadyForQuery among `got`, and the payloads of the
    notifications the listening `raw` gets once another session sends `NOTIFY channel,
    'still'` (waiting for the first)."""
    answers = [(k, parse_error(b)["C"] if k == b"E" else b) for k, b in got
               if k in (b"E", b"C", b"Z")]
    with psycopg.connect(svc.uri_for(dbname="app"), autocommit=True) as sender:
        sender.execute(f"NOTIFY {channel}, 'still'")
    while not any(k == b"A" for k, _ in got):
        got.append(raw._recv_msg())  # RawClient's 10 s timeout bounds the wait
    return answers, _payloads(got)


def test_a_discard_all_refused_in_a_block_keeps_the_channels_and_what_follows_runs(pool_uri, svc):
    """A `DISCARD ALL` inside a transaction block fails (25001) and drops nothing: what the
    listening client pipelined behind it (waiting for its answer) runs, and the client still
    hears its channel, side by side with a direct connection."""
    channel = unique("keep").replace("-", "_")

    def heard(uri: str) -> tuple:
        raw = RawClient(uri)
        try:
            raw.query(f"LISTEN {channel}")
            raw.query("BEGIN")
            raw.sock.sendall(_msg(b"Q", b"DISCARD ALL\0") + _msg(b"Q", b"ROLLBACK\0"))
            got = raw.until_ready() + raw.until_ready()
            return _still_hears(raw, svc, channel, got)
        finally:
            raw.close()

    direct = heard(svc.uri_for(dbname="app"))
    assert direct == ([(b"E", "25001"), (b"Z", b"E"), (b"C", b"ROLLBACK\0"), (b"Z", b"I")],
                      [b"still"]), direct
    assert heard(pool_uri) == direct


def test_a_discard_all_in_a_segment_the_server_skips_keeps_the_channels(pool_uri, svc):
    """A listening client's `DISCARD ALL` sent with Parse/Bind/Execute after an error in the
    same segment: the server skips it, so the client keeps its channels, and its Sync, which
    would otherwise wait behind the `DISCARD ALL`'s answer, goes on (before, the pooler held the
    Sync for an answer the server would send only after it: the client waited forever)."""
    channel = unique("skip").replace("-", "_")

    def heard(uri: str) -> tuple:
        raw = RawClient(uri)
        try:
            raw.query(f"LISTEN {channel}")
            # A Bind of a statement that does not exist: 26000, the segment is skipped.
            raw.sock.sendall(_msg(b"B", b"\0nosuch\0" + b"\0\0" * 3))
            got = [raw._recv_msg()]
            raw.sock.sendall(_extended(b"DISCARD ALL"))
            got += raw.until_ready()
            return _still_hears(raw, svc, channel, got)
        finally:
            raw.close()

    direct = heard(svc.uri_for(dbname="app"))
    assert direct == ([(b"E", "26000"), (b"Z", b"I")], [b"still"]), direct
    assert heard(pool_uri) == direct


@pytest.mark.parametrize("verb", ["LISTEN", "UNLISTEN"])
@pytest.mark.parametrize("then", ["CLOSE no_such_cursor", "SAVEPOINT a", "ROLLBACK", "SELECT 1"])
def test_an_extended_listen_holds_only_if_its_segment_commits(pool_uri, svc, verb, then):
    """Outside a transaction block, PostgreSQL runs an extended-protocol segment's statements
    in one transaction up to its Sync: a LISTEN or UNLISTEN there holds only if that
    transaction commits, not when a later statement of the segment fails (a cursor that does not
    exist, a SAVEPOINT outside a block) or rolls it back. Side by side with a direct connection
    (session fuzz seeds 1475 and 1490: through the pool the LISTEN held)."""
    channel = unique("seg").replace("-", "_")

    def heard(uri: str) -> list:
        raw = RawClient(uri)
        try:
            if verb == "UNLISTEN":
                raw.query(f"LISTEN {channel}")
            raw.sock.sendall(_extended(f"{verb} {channel}".encode(), None)
                             + _extended(then.encode()))
            answers = [k for k, _ in raw.until_ready() if k != b"N"]
            with psycopg.connect(svc.uri_for(dbname="app"), autocommit=True) as sender:
                sender.execute(f"NOTIFY {channel}, 'n'")
            # Heard or not: a marker on a channel the client listens to afterwards comes
            # after it (one sender, one order).
            got = raw.query(f"LISTEN {channel}_marker")
            with psycopg.connect(svc.uri_for(dbname="app"), autocommit=True) as sender:
                sender.execute(f"NOTIFY {channel}_marker, 'm'")
            while not any(k == b"A" and b"_marker" in b for k, b in got):
                got.append(raw._recv_msg())  # RawClient's 10 s timeout bounds the wait
            return answers, _payloads(got)
        finally:
            raw.close()

    pooled, direct = heard(pool_uri), heard(svc.uri_for(dbname="app"))
    holds = then == "SELECT 1"
    assert direct[1] == ([b"m"] if holds == (verb == "UNLISTEN") else [b"n", b"m"]), direct
    assert pooled == direct


@pytest.mark.parametrize("form", ["queries", "one segment"])
def test_a_notify_right_behind_its_listen_is_heard(pool_uri, form):
    """A NOTIFY the client commits right behind its own LISTEN, in the same write (two Queries,
    or one extended-protocol transaction: NOTIFY, then LISTEN) is heard, as on a direct
    connection: nothing after the LISTEN goes to the server before the pool's listener
    listens."""
    channel = unique("heard").replace("-", "_")
    raw = RawClient(pool_uri)
    try:
        if form == "queries":
            raw.sock.sendall(_msg(b"Q", f"LISTEN {channel}\0".encode())
                             + _msg(b"Q", f"NOTIFY {channel}, 'own'\0".encode()))
            got = raw.until_ready() + raw.until_ready()
        else:
            raw.sock.sendall(_extended(f"SELECT pg_notify('{channel}', 'own')".encode(), None)
                             + _extended(f"LISTEN {channel}".encode()))
            got = raw.until_ready()
        while not any(k == b"A" for k, _ in got):
            got.append(raw._recv_msg())  # RawClient's 10 s timeout bounds the wait
        note = next(b for k, b in got if k == b"A")
        assert note[4:].split(b"\0")[:2] == [channel.encode(), b"own"]
    finally:
        raw.close()


@pytest.mark.parametrize("then", ["UNLISTEN {}", "UNLISTEN *", "DISCARD ALL"])
def test_a_notify_right_before_its_unlisten_is_heard_and_nothing_after(pool_uri, svc, then):
    """A NOTIFY the client commits right before its own UNLISTEN (or `DISCARD ALL`), in the
    same write, is heard, as on a direct connection; one another session commits after the
    client saw its UNLISTEN complete is not (session fuzz seed 347: the pool lost the first).
    The pool's listener delivers what was committed before it unsubscribes the client, and the
    client's answer waits for the unsubscribe."""
    channel = unique("gone").replace("-", "_")
    raw = RawClient(pool_uri)
    try:
        raw.query(f"LISTEN {channel}")
        raw.sock.sendall(_msg(b"Q", f"NOTIFY {channel}, 'own'\0".encode())
                         + _msg(b"Q", then.format(channel).encode() + b"\0"))
        got = raw.until_ready() + raw.until_ready()
        assert not [parse_error(b) for k, b in got if k == b"E"], got
        while not any(k == b"A" for k, _ in got):
            got.append(raw._recv_msg())  # RawClient's 10 s timeout bounds the wait
        assert [b[4:].split(b"\0")[:2] for k, b in got if k == b"A"] == [[channel.encode(), b"own"]]
        with psycopg.connect(svc.uri_for(dbname="app"), autocommit=True) as other:
            other.execute(f"NOTIFY {channel}, 'after'")
        # A query's answer comes after any notification the pool had for the client then.
        assert [k for k, _ in raw.query("SELECT 1")] == [b"T", b"D", b"C", b"Z"]
    finally:
        raw.close()


@pytest.mark.parametrize("then", ["UNLISTEN {}", "UNLISTEN *"])
def test_unlisten_while_the_pools_listener_is_gone_is_answered_and_holds(pool_uri, svc, then):
    """An UNLISTEN sent right after the pool's listening connection was terminated is answered
    (while the listener notices the loss, or reconnects, it unsubscribes the client without the
    round trip it makes when connected), and holds once the listener is back: it listens again
    to its other clients' channels only, so that a NOTIFY of the channel reaches the client no
    more, and one of another client's channel still reaches that client."""
    admin = svc.uri_for(dbname="app")
    channel, kept = unique("gone").replace("-", "_"), unique("kept").replace("-", "_")

    def listeners() -> list[int]:
        with psycopg.connect(admin, autocommit=True) as conn:
            return [r[0] for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgbay listener'")]

    raw, other = RawClient(pool_uri), RawClient(pool_uri)
    try:
        before = set(listeners())  # other pools' listeners
        raw.query(f"LISTEN {channel}")
        other.query(f"LISTEN {kept}")
        (pid,) = set(listeners()) - before
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        got = raw.query(then.format(channel))  # RawClient's 10 s timeout bounds the wait
        assert [k for k, _ in got] == [b"C", b"Z"], got

        def arrived(within: float) -> bool:
            # Something to read for `other` (its buffer, its TLS record, or its socket).
            sock = other.sock
            pending = getattr(sock, "pending", None)
            return bool(other.buf or (pending and pending())
                        or select.select([sock], [], [], within)[0])

        # The listener is back, listening to the other client's channel: a NOTIFY of it
        # reaches that client (sent again while the listener reconnects).
        deadline = time.monotonic() + 20
        while True:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f"NOTIFY {kept}, 'back'")
            if arrived(0.5):
                break
            assert time.monotonic() < deadline, "the pool's listener did not come back"
        assert pid not in listeners()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"NOTIFY {channel}, 'after'")
            conn.execute(f"NOTIFY {kept}, 'marker'")
        # The other client gets its channel's notifications, the marker last (one sender,
        # one order); more than one 'back' may have been sent.
        while True:
            kind, body = other._recv_msg()  # RawClient's 10 s timeout bounds the wait
            assert kind == b"A", (kind, body)
            note = body[4:].split(b"\0")[:2]
            if note == [kept.encode(), b"marker"]:
                break
            assert note == [kept.encode(), b"back"], note
        # The first had reached the listener before the marker, and a query's answer comes
        # after what the pool had for the client then.
        assert [k for k, _ in raw.query("SELECT 1")] == [b"T", b"D", b"C", b"Z"]
    finally:
        raw.close()
        other.close()


def test_a_commit_the_stopped_listener_never_confirms_drops_what_it_unlistened(pool_uri, svc):
    """A block's UNLISTEN holds at its COMMIT, and PostgreSQL reads what was committed during
    the block after it: a client that UNLISTENs one of its two channels in a block hears only
    the other's notification committed meanwhile. Through the pool, the COMMIT's answer waits
    for the pool's listener to unsubscribe the client; here the listener's server is stopped
    (SIGSTOP), so it waits until the 5 s deadline (`relay::listen_wait::CONFIRM`), and then the
    notification of the channel it unlistened, queued for it, is dropped, the other delivered.
    Once the listener's server goes on, the client is served as before."""
    admin = svc.uri_for(dbname="app")
    gone, kept = unique("gone").replace("-", "_"), unique("kept").replace("-", "_")

    def listeners() -> set[int]:
        with psycopg.connect(admin, autocommit=True) as conn:
            return {r[0] for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgbay listener'")}

    raw, other = RawClient(pool_uri), RawClient(pool_uri)
    try:
        before = listeners()  # other pools' listeners
        raw.query(f"LISTEN {gone}")
        raw.query(f"LISTEN {kept}")
        other.query(f"LISTEN {kept}")
        (pid,) = listeners() - before
        raw.query("BEGIN")
        got = raw.query(f"UNLISTEN {gone}")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"NOTIFY {gone}, 'gone'")
            conn.execute(f"NOTIFY {kept}, 'kept'")
        # The listener hands each notification to every subscriber at once, in order: once the
        # other client has 'kept', both are queued for the client in its block.
        assert _payloads([other._recv_msg()]) == [b"kept"]  # RawClient's 10 s timeout
        os.kill(pid, signal.SIGSTOP)
        try:
            start = time.monotonic()
            got += raw.query("COMMIT")  # RawClient's 10 s timeout bounds the wait
            waited = time.monotonic() - start
            assert [k for k, _ in got if k != b"A"] == [b"C", b"Z"] * 2, got
            assert 4.9 <= waited < 10, waited
            while not _payloads(got):
                got.append(raw._recv_msg())  # RawClient's 10 s timeout bounds the wait
        finally:
            os.kill(pid, signal.SIGCONT)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"NOTIFY {kept}, 'back'")
        while b"back" not in _payloads(got):
            got.append(raw._recv_msg())  # RawClient's 10 s timeout bounds the wait
        # A query's answer comes after what the pool had for the client then.
        got += raw.query("SELECT 1")
        assert [k for k, _ in got[-4:]] == [b"T", b"D", b"C", b"Z"]
        assert _payloads(got) == [b"kept", b"back"]
    finally:
        raw.close()
        other.close()


def _answered(raw: RawClient, form: str, sql: str) -> list:
    """`sql` sent as a Query (`form` "simple") or as Parse/Bind/Execute/Sync: its answers up to
    ReadyForQuery, none of them an error."""
    if form == "simple":
        got = raw.query(sql)
    else:
        raw.sock.sendall(_extended(sql.encode()))
        got = raw.until_ready()
    assert not [parse_error(b) for k, b in got if k == b"E"], (sql, got)
    return got


@pytest.mark.parametrize("via", ["direct", "pool"])
@pytest.mark.parametrize("form", ["simple", "extended", "one segment"])
def test_listen_in_a_block_counts_at_commit(pool_uri, svc, via, form):
    """PostgreSQL applies a LISTEN/UNLISTEN run inside a transaction block when the block
    commits, and forgets it when it rolls back; through the pool as on a direct connection
    (`via`), whether each statement is a Query, a Parse/Bind/Execute/Sync of its own, or the
    LISTEN sent in one segment with its BEGIN (pgjdbc without autocommit). A `ROLLBACK TO`
    forgets what came after its savepoint."""
    uri = svc.uri_for(dbname="app") if via == "direct" else pool_uri
    ch = [unique("blk").replace("-", "_") + f"_{i}" for i in range(7)]
    raw = RawClient(uri)
    notes = []

    def run(sql: str) -> None:
        notes.extend(b for k, b in _answered(raw, form, sql) if k == b"A")

    def block(stmt: str, end: str) -> None:
        if form == "one segment":
            raw.sock.sendall(_extended(b"BEGIN", None) + _extended(stmt.encode()))
            got = raw.until_ready()
            assert [k for k, _ in got if k != b"A"] == [b"1", b"2", b"C"] * 2 + [b"Z"], got
            assert got[-1] == (b"Z", b"T")
            notes.extend(b for k, b in got if k == b"A")
        else:
            run("BEGIN")
            run(stmt)
        run(end)

    try:
        block(f"LISTEN {ch[0]}", "ROLLBACK")    # never listened
        block(f"LISTEN {ch[1]}", "COMMIT")      # listened
        block(f"UNLISTEN {ch[1]}", "ROLLBACK")  # still listened
        run(f"LISTEN {ch[2]}")
        block(f"UNLISTEN {ch[2]}", "COMMIT")    # no longer listened
        run(f"LISTEN {ch[3]}")
        block("UNLISTEN *", "ABORT")            # still listened
        for sql in ("BEGIN", f"LISTEN {ch[4]}", "SAVEPOINT s1", f"LISTEN {ch[5]}",
                    "SAVEPOINT s2", f"UNLISTEN {ch[3]}", "ROLLBACK TO s2", "RELEASE s2",
                    f"LISTEN {ch[6]}", "ROLLBACK TO SAVEPOINT s1", "COMMIT"):
            run(sql)                            # ch[4] listened; ch[5], ch[6] not; ch[3] kept
        with psycopg.connect(svc.uri_for(dbname="app"), autocommit=True) as sender:
            for c in (ch[0], ch[2], ch[5], ch[6], ch[1], ch[3], ch[4]):
                sender.execute(f"NOTIFY {c}, 'n'")
        while len(notes) < 3:
            kind, body = raw._recv_msg()  # RawClient's 10 s timeout bounds the wait
            if kind == b"A":
                notes.append(body)
        heard = [b[4:].split(b"\0")[0].decode() for b in notes]
        assert heard == [ch[1], ch[3], ch[4]], heard
    finally:
        raw.close()


@pytest.mark.parametrize("pipelined", [True, False])
def test_copy_data_after_a_failed_copy_holds_no_connection(pool_uri, pipelined):
    """A COPY FROM STDIN that fails before it starts (unknown table) while the client's data is
    on its way: PostgreSQL ignores the CopyData/CopyDone/CopyFail that follow. Whether they came
    in the same write as the COPY or after its error, the client is at rest and the pool's only
    connection must serve the next client."""
    a = RawClient(pool_uri)
    b = RawClient(pool_uri)
    try:
        copy = _msg(b"Q", b"COPY no_such_table FROM STDIN\0")
        data = _msg(b"d", b"1\n") + _msg(b"c", b"")
        if pipelined:
            a.sock.sendall(copy + data)
        else:
            a.sock.sendall(copy)
        got = a.until_ready()
        assert [k for k, _ in got] == [b"E", b"Z"]
        assert parse_error(got[0][1])["C"] == "42P01" and got[-1][1] == b"I"
        if not pipelined:
            a.sock.sendall(data + _msg(b"f", b"late\0") + _msg(b"H", b""))
        # Answered within RawClient's 10 s timeout, not left waiting for A's connection: B
        # (which may come first), then C, which logs in well after A's messages arrived.
        assert [k for k, _ in b.query("SELECT 1")] == [b"T", b"D", b"C", b"Z"]
        c = RawClient(pool_uri)
        try:
            assert [k for k, _ in c.query("SELECT 1")] == [b"T", b"D", b"C", b"Z"]
        finally:
            c.close()
        assert [k for k, _ in a.query("SELECT 2")] == [b"T", b"D", b"C", b"Z"]
    finally:
        a.close()
        b.close()


def _unsynced_insert(table: str, value: str) -> bytes:
    """An unnamed Parse, Bind and Execute of an INSERT, then Flush: no Sync, so the server runs
    it in an implicit transaction that stays open."""
    return _extended(f"INSERT INTO {table} VALUES ('{value}')".encode(), b"H")


def _segment_table(svc) -> str:
    table = f"leak.{unique('seg').replace('-', '_')}"
    with psycopg.connect(svc.uri_for(dbname="app"), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (v text)")
        conn.execute(f"GRANT ALL ON {table} TO appuser")
    return table


def test_a_segment_without_sync_is_not_committed_for_a_client_that_left(pool_uri, svc):
    """A client runs an INSERT with the extended protocol and leaves before its Sync: on a direct
    connection the server rolls it back. The pool's connection must not carry that open
    transaction to the next client, whose Sync would commit it."""
    table = _segment_table(svc)
    raw = RawClient(pool_uri)
    raw.sock.sendall(_unsynced_insert(table, "left"))
    assert [raw._recv_msg()[0] for _ in range(3)] == [b"1", b"2", b"C"]
    raw.close()
    assert others_see(pool_uri, f"SELECT count(*) FROM {table}") == ["0"] * OTHERS
    with psycopg.connect(svc.uri_for(dbname="app"), autocommit=True) as conn:
        assert one(conn, f"SELECT count(*) FROM {table}") == 0


def test_a_segment_after_a_query_keeps_its_connection_until_sync(client, svc):
    """A Query, then an extended-protocol INSERT without Sync, pipelined: every answer is in
    once the INSERT's CommandComplete is, but the server is still in the INSERT's implicit
    transaction. The connection stays the client's until its Sync; another client waits, and
    then sees the row committed, never uncommitted."""
    name = unique("seg")
    ok(client, client.create_dbaas_pg_connection_pool(
        service_name=svc.name, name=name, database_name="app", mode="transaction", size=1,
        username="appuser"))
    uri = find_pool(client.get_dbaas_service_pg(name=svc.name), name)["connection-uri"]
    table = _segment_table(svc)
    raw = RawClient(uri)
    try:
        raw.sock.sendall(_msg(b"Q", b"SELECT 1\0") + _unsynced_insert(table, "pipelined"))
        assert [raw._recv_msg()[0] for _ in range(7)] == [b"T", b"D", b"C", b"Z", b"1", b"2", b"C"]
        seen = []
        other = threading.Thread(target=lambda: seen.append(psql_ok(
            uri, f"SELECT string_agg(v, ',') FROM {table}")))
        other.start()
        try:
            wait_until(lambda: pool_row(svc, name)["cl_waiting"] == 1,
                       what="the other client to wait for the pool's connection")
            assert seen == []
            raw.sock.sendall(_msg(b"S", b""))
            assert raw.until_ready() == [(b"Z", b"I")]
        finally:
            other.join(30)
        assert seen == [["pipelined"]], seen
    finally:
        raw.close()


def _raw_cancel(uri: str, pid: int, secret: int) -> None:
    """A CancelRequest for `pid` with `secret`, in plaintext as libpq sends it; returns once
    the pooler closed the connection (it has handled the request)."""
    u = urlsplit(uri)
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        s.sendall(struct.pack("!IIii", 16, 80877102, pid, secret))
        assert s.recv(1) == b""


def test_cancel_ends_a_wait_for_the_pools_connection(client, svc):
    """Ctrl-C in psql, or a driver's query timeout, while the query waits for the pool's only
    connection: the cancel (libpq's, which returns once the pooler handled it) answers that query
    with PostgreSQL's 57014 at once, instead of running it once the connection is free, and the
    session goes on. A cancel while the client is idle does nothing, not even to its next wait.
    The client holding the connection is not touched."""
    name = unique("cw")
    ok(client, client.create_dbaas_pg_connection_pool(
        service_name=svc.name, name=name, database_name="app", mode="transaction", size=1,
        username="appuser"))
    uri = find_pool(client.get_dbaas_service_pg(name=svc.name), name)["connection-uri"]
    with psycopg.connect(uri) as holder, psycopg.connect(uri, autocommit=True) as waiter:
        holder_pid = one(holder, "SELECT pg_backend_pid()")  # holds it: a transaction is open
        outcome = []

        def query():
            try:
                outcome.append(one(waiter, "SELECT pg_backend_pid()"))
            except psycopg.Error as e:
                outcome.append(e)

        for cancel_while_waiting in (True, False):
            outcome.clear()
            if not cancel_while_waiting:
                waiter.cancel()
            t = threading.Thread(target=query)
            t.start()
            try:
                wait_until(lambda: pool_row(svc, name)["cl_waiting"] == 1,
                           what="the query to wait for the pool's connection")
                if cancel_while_waiting:
                    # A cancel with the wrong key (the pooler closes it once handled) ends nothing.
                    _raw_cancel(uri, waiter.info.backend_pid, 12345)
                    assert pool_row(svc, name)["cl_waiting"] == 1 and outcome == []
                    waiter.cancel()
                    t.join(10)
                    assert len(outcome) == 1 and isinstance(outcome[0], psycopg.errors.QueryCanceled), outcome
                    assert outcome[0].diag.message_primary == "canceling statement due to user request"
                    assert pool_row(svc, name)["cl_waiting"] == 0
                    assert one(holder, "SELECT pg_backend_pid()") == holder_pid
                else:
                    assert outcome == []
                    holder.commit()
                    t.join(10)
                    assert outcome == [holder_pid], outcome
            finally:
                t.join(30)


@pytest.mark.parametrize("mode,refused", [("transaction", "discard all"),
                                          ("transaction", "vacuum"), ("session", "discard all")])
def test_the_portal_a_failed_query_leaves_is_never_run(client, svc, mode, refused):
    """PostgreSQL 15.18 crashes (a segmentation fault; the server restarts and every session
    ends) when a client executes the unnamed portal that a statement refused inside a
    transaction block (`DISCARD ALL`, `VACUUM`: 25001) left behind, once another message reused
    its memory. Through the pool the client's Execute of the unnamed portal, with no Bind of it
    since its last simple Query, is answered as for a portal that does not exist (34000), and
    the server's other sessions live on."""
    name = unique("portal")
    ok(client, client.create_dbaas_pg_connection_pool(
        service_name=svc.name, name=name, database_name="app", mode=mode, size=1,
        username="appuser"))
    pool_uri = find_pool(client.get_dbaas_service_pg(name=svc.name), name)["connection-uri"]
    with psycopg.connect(svc.uri_for(dbname="app"), autocommit=True) as bystander:
        pid = one(bystander, "SELECT pg_backend_pid()")
        raw = RawClient(pool_uri)
        try:
            raw.query("BEGIN")
            assert [parse_error(b)["C"] for k, b in raw.query(refused) if k == b"E"] == ["25001"]
            raw.sock.sendall(_msg(b"P", b"s2\0/*t-0000051d*/ select 'a'::text\0\0\0")
                             + _msg(b"S", b""))
            got = raw.until_ready()
            assert [parse_error(b)["C"] for k, b in got if k == b"E"] == ["25P02"]
            raw.sock.sendall(_msg(b"E", b"\0\0\0\0\0") + _msg(b"S", b""))
            got = raw.until_ready()
            assert [(k, parse_error(b)["C"] if k == b"E" else b) for k, b in got] == [
                (b"E", "34000"), (b"Z", b"E")]
            assert [k for k, _ in raw.query("ROLLBACK")] == [b"C", b"Z"]
        finally:
            raw.close()
        assert one(bystander, "SELECT pg_backend_pid()") == pid


@pytest.fixture(scope="module")
def timeouts_server():
    """A pgbay of its own, started with PGBAY_IDLE_TRANSACTION_TIMEOUT=1 and
    PGBAY_QUERY_WAIT_TIMEOUT=5 (env twins of the serve flags)."""
    env = {"PGBAY_IDLE_TRANSACTION_TIMEOUT": "1", "PGBAY_QUERY_WAIT_TIMEOUT": "5"}
    with PgbayServer("idletx", env=env) as srv:
        yield srv


def test_idle_transaction_timeout_frees_the_pool(timeouts_server):
    """A client idle in a transaction holds the pool's only connection: after the timeout it is
    disconnected (FATAL 08P01, PgBouncer's message) and the next client is served."""
    api = timeouts_server.client()
    s = provision(api, unique("idletx"))
    name = unique("idletx")
    ok(api, api.create_dbaas_pg_connection_pool(
        service_name=s.name, name=name, database_name="defaultdb", mode="transaction", size=1,
        username=s.admin_user))
    uri = find_pool(api.get_dbaas_service_pg(name=s.name), name)["connection-uri"]
    idle = psycopg.connect(uri)
    try:
        idle.execute("SELECT 1")  # psycopg opened a transaction: the client now holds the server
        # Served, not refused by query_wait_timeout (5 s) as it would be if `idle` kept the server.
        with psycopg.connect(uri, autocommit=True, connect_timeout=10) as other:
            assert one(other, "SELECT 5") == 5
        with pytest.raises(psycopg.OperationalError) as e:
            idle.execute("SELECT 1")
        assert "idle transaction timeout" in str(e.value)
    finally:
        idle.close()


def test_idle_transaction_timeout_covers_a_segment_without_sync(timeouts_server):
    """An extended-protocol segment left without Sync is a transaction on the server ("idle in
    transaction" there): the client holding it is timed out as one, and the pool is free again."""
    api = timeouts_server.client()
    s = provision(api, unique("idleseg"))
    name = unique("idleseg")
    ok(api, api.create_dbaas_pg_connection_pool(
        service_name=s.name, name=name, database_name="defaultdb", mode="transaction", size=1,
        username=s.admin_user))
    uri = find_pool(api.get_dbaas_service_pg(name=s.name), name)["connection-uri"]
    raw = RawClient(uri)
    try:
        raw.sock.sendall(_msg(b"P", b"\0SELECT 1\0\0\0") + _msg(b"B", b"\0\0" + b"\0\0" * 3)
                         + _msg(b"E", b"\0\0\0\0\0") + _msg(b"H", b""))
        assert [raw._recv_msg()[0] for _ in range(4)] == [b"1", b"2", b"D", b"C"]
        kind, body = raw._recv_msg()
        assert kind == b"E" and parse_error(body)["C"] == "08P01", parse_error(body)
        assert "idle transaction timeout" in parse_error(body)["M"]
    finally:
        raw.close()
    with psycopg.connect(uri, autocommit=True, connect_timeout=10) as other:
        assert one(other, "SELECT 5") == 5


@pytest.mark.parametrize("via", ["direct", "pool"])
@pytest.mark.parametrize("form", ["simple", "extended", "one segment"])
@pytest.mark.parametrize("unlisten", ["UNLISTEN {}", "UNLISTEN *"])
def test_notifications_of_a_block_are_read_after_it(pool_uri, svc, via, form, unlisten):
    """PostgreSQL sends a session its notifications only outside a transaction block, and
    reads the ones committed during the block once it ended, when its UNLISTENs hold: a
    client that UNLISTENs in a block hears neither its own NOTIFY of that block (session fuzz
    seed 4203: the pool delivered it) nor another session's committed during it, and hears
    nothing inside the block; after a ROLLBACK it hears the other session's. Through the pool
    as on a direct connection (`via`); `form` as in `test_listen_in_a_block_counts_at_commit`
    ("one segment": the UNLISTEN and the NOTIFY in one segment with no block, which commits
    at its Sync)."""
    uri = svc.uri_for(dbname="app") if via == "direct" else pool_uri
    ch = unique("blkn").replace("-", "_")
    raw = RawClient(uri)
    notes = []

    def run(sql: str) -> list:
        heard = _payloads(_answered(raw, form, sql))
        notes.extend(heard)
        return heard

    def notify(payload: str) -> None:
        with psycopg.connect(svc.uri_for(dbname="app"), autocommit=True) as other:
            other.execute(f"NOTIFY {ch}, '{payload}'")

    try:
        run(f"LISTEN {ch}")
        if form == "one segment":
            raw.sock.sendall(_extended(unlisten.format(ch).encode(), None)
                             + _extended(f"NOTIFY {ch}, 'own'".encode()))
            got = raw.until_ready()
            notes.extend(_payloads(got))
        else:
            run("BEGIN")
            notify("during")
            # Nothing inside the block, though the other session's NOTIFY is committed (the
            # sleep is the window a wrong delivery would use; nothing to wait for).
            assert run("SELECT pg_sleep(0.2)") == []
            run(unlisten.format(ch))
            run(f"NOTIFY {ch}, 'own'")
            run("COMMIT")
        notify("after")
        # The queries' answers come after whatever the pool had for the client then.
        run("SELECT pg_sleep(0.2)")
        run("SELECT 1")
        assert notes == []
        if form == "one segment":
            return
        # Rolled back: the UNLISTEN never held, and what was committed meanwhile is heard
        # after the block, nothing inside it.
        run(f"LISTEN {ch}")
        run("BEGIN")
        run(unlisten.format(ch))
        notify("kept")
        assert run("SELECT pg_sleep(0.2)") == []
        run(f"NOTIFY {ch}, 'dropped'")
        run("ROLLBACK")
        while not notes:
            kind, body = raw._recv_msg()  # RawClient's 10 s timeout bounds the wait
            notes.extend(_payloads([(kind, body)]))
        run("SELECT 1")
        assert notes == [b"kept"]
    finally:
        raw.close()


@pytest.mark.parametrize("via", ["direct", "pool"])
@pytest.mark.parametrize("form", ["simple", "extended"])
def test_a_sessions_own_notification_comes_before_its_ready_for_query(pool_uri, svc, via, form):
    """PostgreSQL delivers a listening session its own notifications before the ReadyForQuery
    that ends the transaction that sent them (NotificationResponse between CommandComplete and
    ReadyForQuery), so a driver that reads them after its query finds them there. Through the
    pool as on a direct connection: a NOTIFY, a `pg_notify(...)` and a NOTIFY in a block (heard
    in the COMMIT's answer, nothing before); a NOTIFY to a channel the client does not listen
    to is not heard, and another session's is heard (after, in its own time)."""
    uri = svc.uri_for(dbname="app") if via == "direct" else pool_uri
    ch = unique("ownn").replace("-", "_")
    raw = RawClient(uri)
    try:
        _answered(raw, form, f"LISTEN {ch}")

        def kinds(got: list) -> list[bytes]:
            return [k for k, _ in got]

        got = _answered(raw, form, f"NOTIFY {ch}, 'own'")
        assert _payloads(got) == [b"own"] and kinds(got)[-2:] == [b"A", b"Z"], got
        got = _answered(raw, form, f"SELECT pg_notify('{ch}', 'fn')")
        assert _payloads(got) == [b"fn"] and kinds(got)[-2:] == [b"A", b"Z"], got
        _answered(raw, form, "BEGIN")
        assert _payloads(_answered(raw, form, f"NOTIFY {ch}, 'block'")) == []
        got = _answered(raw, form, "COMMIT")
        assert _payloads(got) == [b"block"] and kinds(got)[-2:] == [b"A", b"Z"], got
        assert _payloads(_answered(raw, form, f"NOTIFY {ch}_other, 'x'")) == []
        with psycopg.connect(svc.uri_for(dbname="app"), autocommit=True) as other:
            other.execute(f"NOTIFY {ch}, 'theirs'")
        heard = []
        while not heard:
            kind, body = raw._recv_msg()  # RawClient's 10 s timeout bounds the wait
            heard.extend(_payloads([(kind, body)]))
        assert heard == [b"theirs"]
    finally:
        raw.close()


def test_psycopg_hears_its_own_notify_when_its_execute_returns(pool_uri, svc):
    """psycopg calls its notify handlers for the notifications that come with a query's
    answers: through the pool its own NOTIFY is heard by the time `execute` returns, as on a
    direct connection."""
    for uri in (svc.uri_for(dbname="app"), pool_uri):
        ch = unique("ownp").replace("-", "_")
        with psycopg.connect(uri, autocommit=True, connect_timeout=10) as c:
            heard = []
            c.add_notify_handler(lambda n: heard.append(n.payload))
            c.execute(f"LISTEN {ch}")
            c.execute(f"NOTIFY {ch}, 'mine'")
            assert heard == ["mine"], uri
            with c.transaction():
                c.execute("SELECT pg_notify(%s, 'in a block')", (ch,))
                assert heard == ["mine"]
            assert heard == ["mine", "in a block"], uri


def _listeners(svc) -> set[int]:
    """The pids of the `pgbay listener` backends (the pools' listening connections)."""
    with psycopg.connect(svc.uri_for(dbname="app"), autocommit=True) as conn:
        return {r[0] for r in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgbay listener'")}


def _listening(pool_uri, svc, label: str) -> tuple[str, RawClient, int]:
    """A new channel, a raw client of the pool that LISTENs to it, and the pid of the pool's
    listening connection (the `pgbay listener` backend that was not there before)."""
    ch = unique(label).replace("-", "_")
    before = _listeners(svc)
    raw = RawClient(pool_uri)
    try:
        raw.query(f"LISTEN {ch}")
        (pid,) = _listeners(svc) - before
    except BaseException:
        raw.close()
        raise
    return ch, raw, pid


def _answered_before_the_deadline(got: list, start: float) -> None:
    """`got`, received since `start`, is a NOTIFY's answer (a notification heard meanwhile may
    come with it), well before the 5 s the pooler waits for its listener at most."""
    waited = time.monotonic() - start
    assert [k for k, _ in got if k != b"A"] == [b"C", b"Z"], got
    assert waited < 4, waited


def _hears_again(raw: RawClient, ch: str) -> None:
    """Waits until the pool's listener is back and listens to `ch`: a NOTIFY reaches `raw`."""
    deadline = time.monotonic() + 20
    heard = []
    while b"back" not in heard:
        assert time.monotonic() < deadline, "the pool's listener did not come back"
        heard.extend(_payloads(raw.query(f"NOTIFY {ch}, 'back'")))


@contextlib.contextmanager
def _logins_refused(svc):
    """An admin connection to the service, with new logins of the pools' role refused (so that
    a pool's listener cannot connect again) until the block ends."""
    with psycopg.connect(svc.uri_for(dbname="app"), autocommit=True) as admin:
        admin.execute("ALTER ROLE appuser NOLOGIN")
        try:
            yield admin
        finally:
            admin.execute("ALTER ROLE appuser LOGIN")


def test_a_notify_while_the_pools_listener_is_gone_is_answered_at_once(pool_uri, svc):
    """A listening client's NOTIFY waits for a round trip of the pool's listener before its
    ReadyForQuery (so that its own notification comes first, as from PostgreSQL). Sent right
    after the listener's connection was terminated, while the listener notices the loss and
    connects again, the NOTIFY is answered at once (the listener is away) or once the new
    connection has made its round trip, not at the wait's 5 s deadline; the client's session
    goes on, and the client hears its channel again through the new connection."""
    ch, raw, pid = _listening(pool_uri, svc, "ownaway")
    try:
        with psycopg.connect(svc.uri_for(dbname="app"), autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        start = time.monotonic()
        got = raw.query(f"NOTIFY {ch}, 'away'")  # RawClient's 10 s timeout bounds the wait
        _answered_before_the_deadline(got, start)
        # The session goes on (a notification heard meanwhile may come with the answer).
        assert [k for k, _ in raw.query("SELECT 1") if k != b"A"] == [b"T", b"D", b"C", b"Z"]
        # The listener comes back and listens to the channel again: a NOTIFY reaches the client.
        _hears_again(raw, ch)
        assert pid not in _listeners(svc)
    finally:
        raw.close()


def test_a_notify_while_the_pools_listener_cannot_connect_is_answered_at_once(
        pool_uri, svc, server):
    """While the pool's listener cannot connect (its role may not log in for a while), a
    listening client's NOTIFY has nothing to wait for (no notification can be read meanwhile)
    and is answered at once, not at the 5 s deadline; once the role may log in again, the
    listener listens again and the client hears its channel."""
    ch, raw, pid = _listening(pool_uri, svc, "ownnologin")
    try:
        raw.query("SELECT 1")  # the pool's connection is open before logins are refused
        pool = urlsplit(pool_uri).path.lstrip("/")

        def failures() -> int:
            return sum(f"pool={pool} " in line for line in server.log_text().splitlines()
                       if "LISTEN connection failed" in line)

        failed = failures()
        with _logins_refused(svc) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            wait_until(lambda: failures() > failed, timeout=20,
                       what="the listener's failed reconnection in pgbay's log")
            start = time.monotonic()
            got = raw.query(f"NOTIFY {ch}, 'away'")  # RawClient's 10 s timeout bounds the wait
            _answered_before_the_deadline(got, start)
        _hears_again(raw, ch)
    finally:
        raw.close()


def _received_unread(pid: int) -> int:
    """The bytes waiting unread in the connection (TCP or Unix socket) of the backend `pid`."""
    out = subprocess.run(["ss", "-Hnptx", "state", "established"], capture_output=True,
                         text=True, check=True).stdout
    (line,) = [ln for ln in out.splitlines() if f"pid={pid}," in ln]
    return int(line.split()[1])


def test_a_listen_pipelined_behind_a_query_completes_once_the_listener_listens(pool_uri, svc):
    """A LISTEN sent right behind a query whose answers are still coming (tokio-postgres sends
    its next statement as soon as an error arrives, before the ReadyForQuery) waits for those
    answers, then for the pool's listener like any LISTEN: it completes only once the listener
    listens, so that a NOTIFY another session commits after it completed is heard. (It used to
    complete with the query's answers: the driver matrix's tokio-postgres program lost its
    notification in about one run of fifteen.)"""
    ch = unique("behind").replace("-", "_")
    raw = RawClient(pool_uri)
    try:
        raw.query("SELECT 1")  # the pool's connection is open before logins are refused
        with _logins_refused(svc):
            raw.sock.sendall(_msg(b"Q", b"SELECT pg_sleep(0.1)\0")
                             + _msg(b"Q", f"LISTEN {ch}\0".encode()))
            # The listener cannot connect: the LISTEN is not answered meanwhile (nor, held
            # with it, the answers before it).
            assert not select.select([raw.sock], [], [], 1.5)[0]
        # Once the listener listens (RawClient's 10 s timeout): the query's answers, then the
        # LISTEN's.
        got = raw.until_ready()
        assert [k for k, _ in got] == [b"T", b"D", b"C", b"Z"], got
        got = raw.until_ready()
        assert got == [(b"C", b"LISTEN\0"), (b"Z", b"I")], got
        with psycopg.connect(pool_uri, autocommit=True) as other:
            other.execute(f"NOTIFY {ch}, 'heard'")
        kind, body = raw._recv_msg()
        assert kind == b"A" and _payloads([(kind, body)]) == [b"heard"], (kind, body)
    finally:
        raw.close()


def test_a_notify_in_flight_when_the_pools_listener_is_lost_is_answered_at_the_loss(
        pool_uri, svc):
    """A listening client's NOTIFY waits for a round trip of the pool's listener. When the
    listener's connection is lost with that round trip on its way (and its role may not log in
    again for a while), the notifications it had not read are lost with it: the NOTIFY is
    answered at the loss, not at the 5 s deadline; the client hears its channel again once the
    listener is back."""
    ch, raw, pid = _listening(pool_uri, svc, "ownlost")
    try:
        raw.query("SELECT 1")  # the pool's connection is open before logins are refused
        with _logins_refused(svc):
            os.kill(pid, signal.SIGSTOP)
            try:
                assert _received_unread(pid) == 0
                start = time.monotonic()
                raw.sock.sendall(_msg(b"Q", f"NOTIFY {ch}, 'lost'".encode() + b"\0"))
                # The listener's round trip reaches the stopped server, which never answers it.
                wait_until(lambda: _received_unread(pid) > 0, timeout=4,
                           what="the listener's round trip in its server's socket")
                os.kill(pid, signal.SIGTERM)  # ends the connection once the server goes on
            finally:
                os.kill(pid, signal.SIGCONT)
            got = raw.until_ready()  # RawClient's 10 s timeout bounds the wait
            _answered_before_the_deadline(got, start)
        _hears_again(raw, ch)
    finally:
        raw.close()


def test_a_notify_while_the_pools_listener_is_stopped_is_answered_at_its_deadline(pool_uri, svc):
    """With the pool's listening connection's server stopped (SIGSTOP), a listening client's
    NOTIFY is answered at the listener's 5 s deadline without its notification (which no one
    could have read yet), and the notification is not lost: it reaches the client once the
    listener's server goes on. The client is served as before meanwhile and after."""
    ch, raw, pid = _listening(pool_uri, svc, "ownstop")
    try:
        os.kill(pid, signal.SIGSTOP)
        try:
            start = time.monotonic()
            got = raw.query(f"NOTIFY {ch}, 'late'")  # RawClient's 10 s timeout bounds the wait
            waited = time.monotonic() - start
            assert [k for k, _ in got] == [b"C", b"Z"], got
            assert 4.9 <= waited < 10, waited
            assert [k for k, _ in raw.query("SELECT 1")] == [b"T", b"D", b"C", b"Z"]
        finally:
            os.kill(pid, signal.SIGCONT)
        heard = []
        while not heard:
            heard.extend(_payloads([raw._recv_msg()]))  # RawClient's 10 s timeout bounds it
        assert heard == [b"late"]
        got = raw.query("SELECT 1")
        assert [k for k, _ in got] == [b"T", b"D", b"C", b"Z"], got
    finally:
        raw.close()


def test_a_repeated_set_is_answered_without_a_server_connection(pool_uri):
    """A Query that SETs a carried parameter to the value the client's session already has
    changes nothing in PostgreSQL (the value stays, nothing is reported): the pool answers it as
    PostgreSQL does (CommandComplete `SET`, ReadyForQuery idle) without a server connection,
    also while another client's transaction holds the pool's only one. Another value still
    goes to the server and waits for the connection, and the session has what was set last."""
    holder, raw = RawClient(pool_uri), RawClient(pool_uri)

    def kinds(got: list) -> list[bytes]:
        return [k for k, _ in got]

    def waiting_for_an_answer(within: float) -> bool:
        pending = getattr(raw.sock, "pending", None)
        return not (raw.buf or (pending and pending())
                    or select.select([raw.sock], [], [], within)[0])

    try:
        assert kinds(raw.query("SET search_path = leak, public")) == [b"C", b"Z"]
        holder.query("BEGIN")
        holder.query("SELECT 1")  # the pool's only connection is held from here
        got = raw.query("SET search_path = leak, public")  # RawClient's 10 s timeout
        assert got == [(b"C", b"SET\0"), (b"Z", b"I")], got
        got = raw.query("set search_path to leak,public;")
        assert got == [(b"C", b"SET\0"), (b"Z", b"I")], got
        # Another value needs the server: no answer while the connection is held.
        raw.sock.sendall(_msg(b"Q", b"SET search_path = public\0"))
        assert waiting_for_an_answer(0.5)
        holder.query("COMMIT")
        assert kinds(raw.until_ready()) == [b"C", b"Z"]
        got = raw.query("SHOW search_path")
        assert [b for k, b in got if k == b"D"] == [b"\x00\x01\x00\x00\x00\x06public"], got
        # The new value repeated is answered by the pool, and what the session has stays.
        holder.query("BEGIN")
        holder.query("SELECT 1")
        assert raw.query("SET search_path = public") == [(b"C", b"SET\0"), (b"Z", b"I")]
        holder.query("COMMIT")
        got = raw.query("SHOW search_path")
        assert [b for k, b in got if k == b"D"] == [b"\x00\x01\x00\x00\x00\x06public"], got
    finally:
        raw.close()
        holder.close()


def test_a_repeated_custom_set_is_answered_without_a_server_connection(pool_uri):
    """The same for a custom setting: a plain SET of the value the client carries is answered
    by the pool while another client holds its only connection; the value is the client's."""
    holder, raw = RawClient(pool_uri), RawClient(pool_uri)
    try:
        assert [k for k, _ in raw.query("SET app.tenant = 'Acme'")] == [b"C", b"Z"]
        holder.query("BEGIN")
        holder.query("SELECT 1")  # the pool's only connection is held from here
        got = raw.query("set App.Tenant to 'Acme';")  # RawClient's 10 s timeout
        assert got == [(b"C", b"SET\0"), (b"Z", b"I")], got
        holder.query("COMMIT")
        got = raw.query(TENANT)
        assert [b for k, b in got if k == b"D"] == [b"\x00\x01\x00\x00\x00\x04Acme"], got
    finally:
        raw.close()
        holder.close()


def _unread_by_pgbay(pool_port: int, client_port: int) -> int | None:
    """Bytes the pooler has not read yet from the client connection at `client_port` (the
    Recv-Q of its end of the connection, from `ss`), None when `ss` does not list it."""
    out = subprocess.run(["ss", "-Htn", "state", "established",
                          f"( sport = :{pool_port} and dport = :{client_port} )"],
                         capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]) if out else None


def test_bytes_sent_across_a_transactions_end_are_counted_once(client, svc):
    """SHOW STATS total_received counts each byte a client sent once, also the part of its next
    Query that arrived while the server was still answering the previous one (the relay read it
    then, and the next transaction takes it over)."""
    name, uri = _pool_of_one(client, svc)

    def received() -> int:
        return [r for r in show(svc, "STATS") if r["database"] == name][0]["total_received"]

    waiting = ("SELECT count(*) FROM pg_stat_activity "
               "WHERE wait_event_type = 'Lock' AND query LIKE '%4246%'")
    holder = psycopg.connect(svc.uri_for(dbname="app"), autocommit=True)
    raw = RawClient(uri)
    try:
        holder.execute("SELECT pg_advisory_lock(4246)")
        before = received()
        first = _msg(b"Q", b"SELECT pg_advisory_xact_lock(4246)\0")
        second = _msg(b"Q", b"SELECT 2\0")
        raw.sock.sendall(first)
        wait_until(lambda: one(holder, waiting) == 1, what="the first Query to wait for the lock")
        # The next Query's header only: the relay reads it, and it waits for the rest (counted
        # twice before: when the relay read it, and when the next transaction took it over).
        raw.sock.sendall(second[:5])
        port = urlsplit(uri).port
        wait_until(lambda: _unread_by_pgbay(port, raw.sock.getsockname()[1]) == 0,
                   what="the pooler to read the header")
        holder.execute("SELECT pg_advisory_unlock(4246)")
        assert raw.until_ready()[-1] == (b"Z", b"I")
        raw.sock.sendall(second[5:])
        assert (b"D", b"\0\x01\0\0\0\x012") in raw.until_ready()
    finally:
        raw.close()
        holder.close()
    want = len(first) + len(second)
    wait_until(lambda: received() - before >= want, what="the client's bytes in SHOW STATS")
    assert received() - before == want, (received() - before, want)
