"""Statement-cache evictions through a transaction pool (issue 20).

psycopg 3 on its defaults prepares a query on the server after it ran 5 times and then, after a
rollback (or a DDL, or DISCARD ALL), sends `DEALLOCATE ALL`; drivers evict single statements with
`DEALLOCATE name`. pgbay answers these from the client's own protocol-level statements, as
PostgreSQL would, without touching the statements of the other clients that share the server
connection. One transaction pool of size 1: every client runs on the same server connection.
"""

from __future__ import annotations

import struct

import psycopg
import pytest

from conftest import find_pool, ok, provision, unique
from test_notify_budget import RawClient, _msg, parse_error


@pytest.fixture(scope="module")
def svc(client):
    s = provision(client, unique("stm"))
    ok(client, client.create_dbaas_pg_database(service_name=s.name, database_name="app"))
    ok(client, client.create_dbaas_postgres_user(service_name=s.name, username="appuser"))
    return s


@pytest.fixture(scope="module")
def pool_uri(client, svc):
    name = unique("st1")
    ok(client, client.create_dbaas_pg_connection_pool(
        service_name=svc.name, name=name, database_name="app", mode="transaction", size=1,
        username="appuser"))
    return find_pool(client.get_dbaas_service_pg(name=svc.name), name)["connection-uri"]


def test_psycopg_defaults_rollback_after_prepare(pool_uri):
    """The issue's script: the 6th run is prepared, the rollback makes psycopg send
    DEALLOCATE ALL, and everything after it still works."""
    with psycopg.connect(pool_uri) as c:
        for i in range(6):
            assert c.execute("select %s::int", (i,)).fetchone()[0] == i
        c.rollback()
        for i in range(8):
            assert c.execute("select %s::int", (i,)).fetchone()[0] == i
        c.commit()
        for i in range(8):
            assert c.execute("select %s::int + 1", (i,)).fetchone()[0] == i + 1
        c.rollback()
        assert c.execute("select 'after'").fetchone()[0] == "after"


def test_deallocate_forms_act_on_own_statements(pool_uri):
    with psycopg.connect(pool_uri, autocommit=True) as a, \
            psycopg.connect(pool_uri, autocommit=True) as b:
        # prepare=True: psycopg names them _pg3_0, _pg3_1, ... per connection.
        q1, q2, q3 = "select 1 + %s", "select 2 + %s", "select 3 + %s"
        for q in (q1, q2, q3):
            assert a.execute(q, (1,), prepare=True).fetchone()[0] is not None
            b.execute(q, (1,), prepare=True)
        names = sorted(a._prepared._names.values())
        assert names == [b"_pg3_0", b"_pg3_1", b"_pg3_2"], names

        cur = a.execute("DEALLOCATE _pg3_0")
        assert cur.statusmessage == "DEALLOCATE"
        with pytest.raises(psycopg.errors.InvalidSqlStatementName):
            a.execute(q1, (1,), prepare=True)
        cur = a.execute('dealLOCATE  PREPARE "_pg3_1" ;')
        assert cur.statusmessage == "DEALLOCATE"
        with pytest.raises(psycopg.errors.InvalidSqlStatementName):
            a.execute(q2, (1,), prepare=True)
        # b shares the server statements and keeps its own names.
        for q in (q1, q2, q3):
            assert b.execute(q, (1,), prepare=True).fetchone()[0] is not None

        # Unknown name: PostgreSQL's error; the connection goes on.
        with pytest.raises(psycopg.errors.InvalidSqlStatementName) as e:
            a.execute("DEALLOCATE nosuch")
        assert 'prepared statement "nosuch" does not exist' in str(e.value)
        assert a.execute("select 5").fetchone()[0] == 5

        # DEALLOCATE ALL: psycopg forgets its cache, prepares again, all works.
        cur = a.execute("DEALLOCATE ALL")
        assert cur.statusmessage == "DEALLOCATE ALL"
        for _ in range(3):
            assert a.execute(q3, (1,), prepare=True).fetchone()[0] == 4
        assert b.execute(q3, (1,), prepare=True).fetchone()[0] == 4


def test_deallocate_all_among_other_statements(pool_uri):
    """Run by the server: the client's statements go (psycopg forgets its own on the command
    tag and prepares again), and a client sharing the server connection carries on."""
    with psycopg.connect(pool_uri, autocommit=True) as a, \
            psycopg.connect(pool_uri, autocommit=True) as b:
        q = "select 30 + %s"
        for c in (a, b):
            assert c.execute(q, (1,), prepare=True).fetchone()[0] == 31
        cur = a.execute("select 1; deallocate all")
        assert cur.statusmessage == "SELECT 1" and cur.nextset()
        assert cur.statusmessage == "DEALLOCATE ALL"
        for _ in range(3):
            for c in (a, b):
                assert c.execute(q, (2,), prepare=True).fetchone()[0] == 32


def test_discard_all_clears_statements_and_settings(pool_uri):
    with psycopg.connect(pool_uri, autocommit=True) as a, \
            psycopg.connect(pool_uri, autocommit=True) as b:
        default = b.execute("SHOW work_mem").fetchone()[0]
        a.execute("SET work_mem = '5MB'")
        q = "select 10 + %s"
        assert a.execute(q, (1,), prepare=True).fetchone()[0] == 11
        b.execute(q, (1,), prepare=True)
        assert a.execute("SHOW work_mem").fetchone()[0] == "5MB"
        a.execute("DISCARD ALL")
        assert a.execute("SHOW work_mem").fetchone()[0] == default
        # psycopg cleared its cache on DISCARD ALL and prepares again under the same name.
        for _ in range(3):
            assert a.execute(q, (2,), prepare=True).fetchone()[0] == 12
        assert b.execute(q, (3,), prepare=True).fetchone()[0] == 13


def test_small_statement_cache_evicts(pool_uri):
    """A 2-entry cache over ten distinct queries: every eviction (Close with libpq >= 17,
    `DEALLOCATE name` before) succeeds."""
    with psycopg.connect(pool_uri, autocommit=True) as c:
        c.prepared_max = 2
        for round_ in range(2):
            for i in range(10):
                q = f"select {i} + %s"
                assert c.execute(q, (round_,), prepare=True).fetchone()[0] == i + round_
        with c.transaction():
            for i in range(10):
                assert c.execute(f"select {i} * %s", (2,), prepare=True).fetchone()[0] == 2 * i
        # The SQL form of the same eviction.
        c.execute("select 99 + %s", (1,), prepare=True)
        name = next(iter(c._prepared._names.values())).decode()
        c.execute(f"DEALLOCATE {name}")


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_startup_options_search_path(client, svc, mode):
    name = unique("op")
    ok(client, client.create_dbaas_pg_connection_pool(
        service_name=svc.name, name=name, database_name="app", mode=mode, size=2,
        username="appuser"))
    uri = find_pool(client.get_dbaas_service_pg(name=svc.name), name)["connection-uri"]
    with psycopg.connect(uri, autocommit=True,
                         options=r"-c search_path=sx,public --lock-timeout=777 -c App.Tenant=a\ b"
                         ) as a, \
            psycopg.connect(uri, autocommit=True) as b:
        default = b.execute("SHOW search_path").fetchone()[0]
        tenant = "SELECT current_setting('app.tenant', true)"
        for _ in range(3):
            assert a.execute("SHOW search_path").fetchone()[0] == "sx,public"
            assert a.execute("SHOW lock_timeout").fetchone()[0] == "777ms"
            assert a.execute(tenant).fetchone()[0] == "a b"
            assert b.execute("SHOW search_path").fetchone()[0] == default
            assert b.execute(tenant).fetchone()[0] in (None, "")
    # A setting pgbay does not carry is refused at login (0A000, naming it).
    with pytest.raises(psycopg.OperationalError, match="geqo"):
        psycopg.connect(uri, options="-c geqo=off").close()
    # So is a 65th custom setting (naming it): at most 64 are carried per client.
    many = " ".join(f"-c app.s{i}=1" for i in range(65))
    with pytest.raises(psycopg.OperationalError, match=r"at most 64.*app\.s64"):
        psycopg.connect(uri, options=many).close()
    with psycopg.connect(uri, autocommit=True, options=many.rsplit(" -c ", 1)[0]) as c:
        assert c.execute("SELECT current_setting('app.s63')").fetchone()[0] == "1"


def test_channel_binding_require(client, svc, pool_uri, tmp_path):
    """SCRAM-SHA-256-PLUS (tls-server-end-point over pgbay's certificate) is offered to TLS
    clients: libpq's channel_binding=require connects with verify-full against the API's CA;
    plain SCRAM-SHA-256 (channel_binding=disable) still works."""
    from conftest import psql_ok
    ca = client.get_dbaas_ca_certificate()["certificate"]
    (tmp_path / "ca.pem").write_text(ca)
    assert "sslmode=require" in pool_uri
    uri = pool_uri.replace("sslmode=require",
                           f"sslmode=verify-full&sslrootcert={tmp_path / 'ca.pem'}")
    bound = uri + "&channel_binding=require"
    assert psql_ok(bound, "SELECT 'bound'") == ["bound"]
    with psycopg.connect(bound) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.pgconn.ssl_in_use
    with psycopg.connect(uri + "&channel_binding=disable") as conn:
        assert conn.execute("SELECT 2").fetchone() == (2,)


def _mood_type(admin: str, again: str | None = None) -> str:
    """An enum type ('ok', 'meh') appuser may use; with `again`, that type dropped and created
    anew (another OID under the same name)."""
    mood = again or unique("mood").replace("-", "_")
    with psycopg.connect(admin, autocommit=True) as c:
        if again:
            c.execute(f"DROP TYPE {mood}")
        c.execute(f"CREATE TYPE {mood} AS ENUM ('ok', 'meh')")
        c.execute(f"GRANT USAGE ON TYPE {mood} TO appuser")
    return mood


def test_type_dropped_and_created_again(pool_uri, svc):
    """A shared server statement that went stale (its parameter type was dropped and created
    again) is prepared afresh, invisibly: the pooler replays the segment the server refused
    (before: five new connections in a row failed with `cache lookup failed for type`; then
    the first use after the DDL still did)."""
    admin = svc.uri_for(dbname="app")
    mood = _mood_type(admin)
    q = f"select %s::{mood}::text"
    with psycopg.connect(pool_uri, autocommit=True) as a:
        assert a.execute(q, ("ok",), prepare=True).fetchone()[0] == "ok"
        _mood_type(admin, again=mood)
        # The client that prepared it, on its next run...
        assert a.execute(q, ("meh",), prepare=True).fetchone()[0] == "meh"
    # ...and every later one.
    for i in range(5):
        with psycopg.connect(pool_uri, autocommit=True) as c:
            for _ in range(2):
                assert c.execute(q, ("meh",), prepare=True).fetchone()[0] == "meh", i


def test_a_stale_statement_inside_a_block_fails_it(pool_uri, svc):
    """Inside a transaction block the error cannot be taken back: the client sees it and the
    block fails, as on a direct connection (nothing is replayed over what it did before)."""
    admin = svc.uri_for(dbname="app")
    mood = _mood_type(admin)
    q = f"select %s::{mood}::text"
    with psycopg.connect(pool_uri) as a:
        assert a.execute(q, ("ok",), prepare=True).fetchone()[0] == "ok"
        a.commit()
        _mood_type(admin, again=mood)
        a.execute("select 1")
        with pytest.raises(psycopg.errors.InternalError_, match="cache lookup failed"):
            a.execute(q, ("ok",), prepare=True)
        assert a.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        a.rollback()
        assert a.execute(q, ("ok",), prepare=True).fetchone()[0] == "ok"


def test_clients_with_other_search_paths_share_no_statement(pool_uri, svc):
    """The same text under two search paths names two tables of different shapes: each client
    reads its own, every time (before: the second failed with `cached plan must not change
    result type` on every run)."""
    s1, s2 = (unique(n).replace("-", "_") for n in ("sa", "sb"))
    with psycopg.connect(svc.uri_for(dbname="app"), autocommit=True) as adm:
        adm.execute(f"CREATE SCHEMA {s1}; CREATE SCHEMA {s2}; "
                    f"CREATE TABLE {s1}.t (a int); CREATE TABLE {s2}.t (x text, y text); "
                    f"INSERT INTO {s1}.t VALUES (1); INSERT INTO {s2}.t VALUES ('x', 'y'); "
                    f"GRANT USAGE ON SCHEMA {s1}, {s2} TO appuser; "
                    f"GRANT SELECT ON {s1}.t, {s2}.t TO appuser")
    with psycopg.connect(pool_uri, autocommit=True) as a, \
            psycopg.connect(pool_uri, autocommit=True) as b:
        a.execute(f"SET search_path = {s1}")
        b.execute(f"SET search_path = {s2}")
        for _ in range(3):
            assert a.execute("select * from t", prepare=True).fetchall() == [(1,)]
            assert b.execute("select * from t", prepare=True).fetchall() == [("x", "y")]


def test_a_result_of_a_new_shape_is_replayed_only_to_a_client_that_asks_for_it(pool_uri, svc):
    """After the table a shared statement reads gained a column, a client that asks for the row
    description (psycopg sends Describe with every Bind) gets the rows of the new shape; one
    that binds and executes with the description it kept gets PostgreSQL's error, as on a
    direct connection, never rows of a shape it does not expect."""
    table = unique("shape").replace("-", "_")
    admin = svc.uri_for(dbname="app")
    with psycopg.connect(admin, autocommit=True) as adm:
        adm.execute(f"CREATE TABLE {table} (a int); INSERT INTO {table} VALUES (1); "
                    f"GRANT SELECT ON {table} TO appuser")
    q = f"select * from {table}"
    raw = RawClient(pool_uri)
    try:
        with psycopg.connect(pool_uri, autocommit=True) as c:
            assert c.execute(q, prepare=True).fetchall() == [(1,)]
            raw.sock.sendall(_msg(b"P", b"s1\0" + q.encode() + b"\0\0\0")
                             + _msg(b"D", b"Ss1\0") + _msg(b"S", b""))
            assert b"E" not in [k for k, _ in raw.until_ready()]
            with psycopg.connect(admin, autocommit=True) as adm:
                adm.execute(f"ALTER TABLE {table} ADD COLUMN b int DEFAULT 2")
            assert c.execute(q, prepare=True).fetchall() == [(1, 2)]
        # The same statement is stale for the raw client too, which kept the old description.
        # (psycopg's run above marked the shared copy stale; make the next one stale again.)
        raw.sock.sendall(_msg(b"P", b"s2\0" + q.encode() + b"\0\0\0")
                         + _msg(b"D", b"Ss2\0") + _msg(b"S", b""))
        assert b"E" not in [k for k, _ in raw.until_ready()]
        with psycopg.connect(admin, autocommit=True) as adm:
            adm.execute(f"ALTER TABLE {table} ADD COLUMN c int DEFAULT 3")
        raw.sock.sendall(_msg(b"B", b"\0s2\0" + b"\0\0" + b"\0\0" + b"\0\0")
                         + _msg(b"E", b"\0\0\0\0\0") + _msg(b"S", b""))
        got = raw.until_ready()
        errors = [parse_error(b) for k, b in got if k == b"E"]
        assert len(errors) == 1 and "cached plan must not change result type" in errors[0]["M"], got
        assert b"D" not in [k for k, _ in got]
        # Asked again with a Describe, it gets the new shape.
        raw.sock.sendall(_msg(b"B", b"\0s2\0" + b"\0\0" + b"\0\0" + b"\0\0")
                         + _msg(b"D", b"P\0") + _msg(b"E", b"\0\0\0\0\0") + _msg(b"S", b""))
        got = raw.until_ready()
        assert b"E" not in [k for k, _ in got], got
        rows = [b for k, b in got if k == b"D"]
        assert len(rows) == 1 and struct.unpack("!H", rows[0][:2])[0] == 3
    finally:
        raw.close()


def test_unnamed_statements_stay_unnamed(pool_uri):
    with psycopg.connect(pool_uri, autocommit=True) as a:
        for i in range(8):
            a.execute("select 123 + %s", (i,), prepare=False)
        names = [r[0] for r in a.execute(
            "select statement from pg_prepared_statements").fetchall()]
        assert not any("123 +" in s for s in names), names


def _bind(name: bytes) -> bytes:
    """A Bind of statement `name` to the unnamed portal, no parameters, text results."""
    return _msg(b"B", b"\0" + name + b"\0" + b"\0\0" * 3)


def _outcome(raw) -> tuple[list, list]:
    """What the server answered up to ReadyForQuery: (one-column rows' values, error codes)."""
    got = raw.until_ready()
    rows = [b[6:].decode() for k, b in got if k == b"D" and b[:2] == b"\0\1"]
    return rows, [parse_error(b)["C"] for k, b in got if k == b"E"]


def _run_named(raw, name: bytes, before: bytes = b"") -> tuple[list, list]:
    """Binds and executes statement `name` (after the messages `before`), then Sync."""
    raw.sock.sendall(before + _bind(name) + _msg(b"E", b"\0\0\0\0\0") + _msg(b"S", b""))
    return _outcome(raw)


def _run_unnamed(raw, describe: bool = False) -> tuple[list, list]:
    """Binds and executes the unnamed statement: (rows' first values, error codes)."""
    return _run_named(raw, b"", _msg(b"D", b"S\0") if describe else b"")


def test_a_statement_name_is_what_the_server_made_of_it(pool_uri):
    """A client's statement names follow what PostgreSQL did with its Parses and Closes: a name
    whose Parse failed, or was skipped after an earlier error, does not exist (26000 for its
    Bind and its DEALLOCATE); a statement whose Close was skipped still does."""
    raw = RawClient(pool_uri)
    try:
        raw.sock.sendall(_msg(b"P", b"bad\0selec 1\0\0\0") + _msg(b"S", b""))
        assert _outcome(raw) == ([], ["42601"])
        assert _run_named(raw, b"bad") == ([], ["26000"])
        assert [parse_error(b)["C"] for k, b in raw.query("DEALLOCATE bad") if k == b"E"] \
            == ["26000"]
        # An error first (an unknown statement): the Parse after it in the segment is skipped.
        raw.sock.sendall(_bind(b"nosuch") + _msg(b"P", b"skipped\0select 'x'::text\0\0\0")
                         + _msg(b"S", b""))
        assert _outcome(raw) == ([], ["26000"])
        assert _run_named(raw, b"skipped") == ([], ["26000"])
        # A Close skipped so leaves the statement there.
        raw.sock.sendall(_msg(b"P", b"kept\0select 'kept'::text\0\0\0") + _msg(b"S", b""))
        assert _outcome(raw) == ([], [])
        raw.sock.sendall(_bind(b"nosuch") + _msg(b"C", b"Skept\0") + _msg(b"S", b""))
        assert _outcome(raw) == ([], ["26000"])
        assert _run_named(raw, b"kept") == (["kept"], [])
        # A Close and a Parse again of that name, both skipped: the first statement stays.
        raw.sock.sendall(_bind(b"nosuch") + _msg(b"C", b"Skept\0")
                         + _msg(b"P", b"kept\0select 'other'::text\0\0\0") + _msg(b"S", b""))
        assert _outcome(raw) == ([], ["26000"])
        assert _run_named(raw, b"kept") == (["kept"], [])
        # And a Close that runs drops it.
        raw.sock.sendall(_msg(b"C", b"Skept\0") + _msg(b"S", b""))
        assert _outcome(raw) == ([], [])
        assert _run_named(raw, b"kept") == ([], ["26000"])
    finally:
        raw.close()


def test_names_dropped_between_transactions_take_no_server_connection(pool_uri):
    """Between transactions, a client's Closes of statements through their Sync (what
    tokio-postgres sends when it drops a statement) and an SQL `DEALLOCATE` (psycopg's after a
    rollback, pgx's evictions) act on its own names only; the pooler answers them as PostgreSQL
    does (CloseComplete for each, a name the client lacks included; DEALLOCATE, or 26000 for a
    name it lacks; then ReadyForQuery 'I') without waiting for the pool's only server
    connection, which another client holds in its transaction, and the names are gone."""
    raw = RawClient(pool_uri)
    try:
        for name in (b"one", b"two", b"three"):
            raw.sock.sendall(_parse(name, "select 'x'::text") + _SYNC)
            assert _outcome(raw) == ([], [])
        with psycopg.connect(pool_uri) as holder:
            holder.execute("select 1")
            raw.sock.sendall(_msg(b"C", b"Sone\0") + _msg(b"C", b"Snosuch\0") + _SYNC)
            got = raw.until_ready()
            assert [k for k, _ in got] == [b"3", b"3", b"Z"], got
            assert got[-1][1] == b"I"
            assert [(k, b) for k, b in raw.query("DEALLOCATE two") if k in b"CZ"] \
                == [(b"C", b"DEALLOCATE\0"), (b"Z", b"I")]
            got = raw.query("deallocate nosuch")
            assert [parse_error(b)["C"] for k, b in got if k == b"E"] == ["26000"], got
            assert [(k, b) for k, b in raw.query("DEALLOCATE ALL") if k in b"CZ"] \
                == [(b"C", b"DEALLOCATE ALL\0"), (b"Z", b"I")]
            # Still the holder's: no answer waited for its transaction to end.
            assert holder.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
            holder.rollback()
        # A Query pipelined behind them is served next, on a server connection.
        raw.sock.sendall(_parse(b"four", "select 'x'::text") + _SYNC)
        assert _outcome(raw) == ([], [])
        raw.sock.sendall(_msg(b"C", b"Sfour\0") + _SYNC + _msg(b"Q", b"select 'after'\0"))
        got = raw.until_ready() + raw.until_ready()
        assert [k for k, _ in got] == [b"3", b"Z", b"T", b"D", b"C", b"Z"], got
        for name in (b"one", b"two", b"three", b"four"):
            assert _run_named(raw, name) == ([], ["26000"])
    finally:
        raw.close()


def test_the_unnamed_statement_is_the_clients_own(pool_uri):
    """PostgreSQL keeps the unnamed statement until the next unnamed Parse or simple Query, so a
    client may bind it in a later transaction (pgx's describe-then-execute does): it is parsed
    again there when the server connection has another. A client without one cannot bind the
    one another client left on the shared connection (26000, as on a direct connection)."""
    a, b = RawClient(pool_uri), RawClient(pool_uri)
    try:
        a.sock.sendall(_msg(b"P", b"\0select 'mine'::text\0\0\0") + _msg(b"S", b""))
        assert _outcome(a) == ([], [])
        assert _run_unnamed(b) == ([], ["26000"])
        b.sock.sendall(_msg(b"P", b"\0select 'theirs'::text\0\0\0") + _msg(b"S", b""))
        b.until_ready()
        assert _run_unnamed(a, describe=True) == (["mine"], [])
        assert _run_unnamed(a) == (["mine"], [])
        assert _run_unnamed(b) == (["theirs"], [])
        assert _run_unnamed(a) == (["mine"], [])
        # A simple Query drops it, as in PostgreSQL.
        assert a.query("select 1")[-1][0] == b"Z"
        assert _run_unnamed(a) == ([], ["26000"])
        assert _run_unnamed(b) == (["theirs"], [])
    finally:
        a.close()
        b.close()


def test_messages_sent_after_an_error_was_answered_are_skipped_too(pool_uri):
    """The server skips everything up to Sync after an error, also what the client sends after
    reading that error (a Flush made it come early): a Parse sent then makes no statement, for
    that client (26000) or for any other that prepares the same text later."""
    text = f"select '{unique('late')}'::text"
    raw = RawClient(pool_uri)
    try:
        raw.sock.sendall(_bind(b"nosuch") + _msg(b"H", b""))
        kind, body = raw._recv_msg()
        assert kind == b"E" and parse_error(body)["C"] == "26000"
        raw.sock.sendall(_msg(b"P", b"late\0" + text.encode() + b"\0\0\0") + _msg(b"S", b""))
        assert _outcome(raw) == ([], [])
        assert _run_named(raw, b"late") == ([], ["26000"])
    finally:
        raw.close()
    for _ in range(2):
        with psycopg.connect(pool_uri, autocommit=True) as other:
            assert other.execute(text, prepare=True).fetchone()[0].startswith("late")


def test_deallocate_through_the_extended_protocol(pool_uri):
    """psycopg's pipeline mode sends its DEALLOCATE ALL with Parse/Bind/Execute; a binary
    cursor sends any statement so."""
    with psycopg.connect(pool_uri) as c:
        with c.pipeline():
            for i in range(6):
                c.execute("select %s::int", (i,))
            c.rollback()
            for i in range(8):
                assert c.execute("select %s::int", (i,)).fetchone()[0] == i
        c.commit()
    with psycopg.connect(pool_uri, autocommit=True) as a:
        q = "select 20 + %s"
        a.execute(q, (1,), prepare=True)
        name = next(iter(a._prepared._names.values())).decode()
        cur = a.cursor(binary=True)
        # The command tags are PostgreSQL's, not those of what the server ran in their place.
        assert cur.execute(f"DEALLOCATE {name}").statusmessage == "DEALLOCATE"
        with pytest.raises(psycopg.errors.InvalidSqlStatementName):
            a.execute(q, (1,), prepare=True)
        with pytest.raises(psycopg.errors.InvalidSqlStatementName, match="nosuch"):
            a.cursor(binary=True).execute("DEALLOCATE nosuch")
        cur = a.cursor(binary=True)
        assert cur.execute("DEALLOCATE ALL").statusmessage == "DEALLOCATE ALL"
        # A DO block of the client's own keeps its tag.
        assert cur.execute("DO $$BEGIN END$$").statusmessage == "DO"
        assert a.execute("select 1").fetchone()[0] == 1


def test_a_refused_statement_fails_the_open_transaction_block(pool_uri, svc):
    """As any error does on PostgreSQL: after a refused SQL PREPARE (or a LISTEN the pooler
    cannot serve) inside BEGIN, the block is failed and COMMIT rolls back, so a script run
    without stopping on errors commits nothing."""
    table = unique("refused").replace("-", "_")
    with psycopg.connect(svc.uri_for(dbname="app"), autocommit=True) as admin:
        admin.execute(f"CREATE TABLE {table} (n int)")
        admin.execute(f"GRANT ALL ON {table} TO appuser")
    for refused in ("PREPARE p AS SELECT 1", "LISTEN a; SELECT 1"):
        with psycopg.connect(pool_uri, autocommit=True) as c:
            c.execute("BEGIN")
            c.execute(f"INSERT INTO {table} VALUES (1)")
            with pytest.raises(psycopg.errors.FeatureNotSupported):
                c.execute(refused)
            assert c.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
            with pytest.raises(psycopg.errors.InFailedSqlTransaction):
                c.execute("SELECT 1")
            assert c.execute("COMMIT").statusmessage == "ROLLBACK"
            # Outside a block the refusal is the same, and the connection carries on.
            with pytest.raises(psycopg.errors.FeatureNotSupported, match="transaction pooling mode"):
                c.execute(refused)
            assert c.execute("SELECT 1").fetchone() == (1,)
    with psycopg.connect(svc.uri_for(dbname="app"), autocommit=True) as admin:
        assert admin.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)


def test_an_eviction_skipped_by_an_error_breaks_no_statement(pool_uri):
    """The server connection's statement cache is full (100): a pipeline in which an error
    comes before a new statement makes the server skip the pooler's Close of the evicted one.
    The statement it keeps must not make that query fail for anyone later."""
    tag = unique("ev").replace("-", "_")
    with psycopg.connect(pool_uri, autocommit=True) as c:
        c.prepared_max = 500
        for i in range(100):
            c.execute(f"select %s::int + {i} as {tag}", (1,), prepare=True)
        with pytest.raises(psycopg.errors.DivisionByZero):
            with c.pipeline():
                c.execute("select 1/0")
                c.execute(f"select %s::int + 100 as {tag}", (1,), prepare=True)
    for _ in range(2):
        with psycopg.connect(pool_uri, autocommit=True) as other:
            for _ in range(2):
                assert other.execute(f"select %s::int + 0 as {tag}", (1,),
                                     prepare=True).fetchone() == (1,)


def _parse(name: bytes, sql: str) -> bytes:
    return _msg(b"P", name + b"\0" + sql.encode() + b"\0\0\0")


_EXECUTE = _msg(b"E", b"\0\0\0\0\0")
_SYNC = _msg(b"S", b"")


@pytest.mark.parametrize("name", [b"s1", b""])
def test_a_statement_parsed_again_in_a_failed_segment_is_parsed_again_after_it(pool_uri, name):
    """Another client empties the server connection of the client's statement (its `DISCARD
    ALL` drops named ones; its own unnamed Parse replaces the unnamed one), so the pooler
    parses the client's statement again in front of its next Bind. When an error earlier in
    that segment has the server skip that Parse, a Bind of the statement in the next segment,
    pipelined in the same write, must not rely on it: PostgreSQL still has the client's
    statement, and so must the pooler (it waits for the first segment's answers). Else the
    Bind fails (26000), or runs the other client's unnamed statement."""
    tag = unique("again").replace("-", "_")
    a, b = RawClient(pool_uri), RawClient(pool_uri)
    try:
        a.sock.sendall(_parse(name, f"select '{tag}'::text") + _SYNC)
        assert a.until_ready()[-1] == (b"Z", b"I")
        if name:
            assert [k for k, _ in b.query("DISCARD ALL")] == [b"C", b"Z"]
        else:
            b.sock.sendall(_parse(b"", "select 'the other client'::text") + _SYNC)
            assert b.until_ready()[-1] == (b"Z", b"I")
        a.sock.sendall(_bind(b"nosuch") + _bind(name) + _SYNC + _bind(name) + _EXECUTE + _SYNC)
        assert _outcome(a) == ([], ["26000"])
        assert _outcome(a) == ([tag], [])
    finally:
        a.close()
        b.close()


def _names_script(raw, tag: str) -> list:
    """Parses, Closes and DEALLOCATEs where PostgreSQL answers with an error or skips them:
    each step's (first-column values, error codes, transaction status after it)."""
    s1 = f"select '{tag}'::text"
    out = []

    def step(data: bytes):
        raw.sock.sendall(data)
        got = raw.until_ready()
        out.append((
            [b[6:].decode() for k, b in got if k == b"D" and b[:2] == b"\0\1"],
            [parse_error(b)["C"] for k, b in got if k == b"E"],
            got[-1][1].decode(),
        ))

    def query(sql: str):
        step(_msg(b"Q", sql.encode() + b"\0"))

    step(_parse(b"s1", s1) + _SYNC)
    # A second Parse of a name the client has: 42P05, and what follows it is skipped.
    step(_parse(b"s1", "select 'other'::text") + _bind(b"s1") + _EXECUTE + _SYNC)
    step(_bind(b"s1") + _EXECUTE + _SYNC)
    # In a block the error fails it, as does a refused SQL PREPARE sent with Parse.
    query("BEGIN")
    step(_parse(b"s1", "select 2") + _SYNC)
    query("ROLLBACK")
    query("BEGIN")
    step(_parse(b"", "PREPARE p AS SELECT 1") + _bind(b"") + _EXECUTE + _SYNC)
    query("ROLLBACK")
    # An extended-protocol DEALLOCATE skipped after an error, or in a failed block, leaves the
    # statement there; DEALLOCATE ALL too.
    step(_bind(b"nosuch") + _parse(b"", "DEALLOCATE s1") + _bind(b"") + _EXECUTE + _SYNC)
    step(_bind(b"s1") + _EXECUTE + _SYNC)
    step(_bind(b"nosuch") + _parse(b"", "DEALLOCATE ALL") + _bind(b"") + _EXECUTE + _SYNC)
    step(_bind(b"s1") + _EXECUTE + _SYNC)
    query("BEGIN")
    query("select 1/0")
    step(_parse(b"", "DEALLOCATE s1") + _bind(b"") + _EXECUTE + _SYNC)
    query("ROLLBACK")
    step(_bind(b"s1") + _EXECUTE + _SYNC)
    # Empty statements after a DEALLOCATE; then the name is gone, and Parse makes it again.
    query("deallocate s1;;")
    step(_parse(b"s1", "select 'again'::text") + _bind(b"s1") + _EXECUTE + _SYNC)
    # PostgreSQL tells names apart by their first 63 bytes.
    long = b"l" * 70
    step(_parse(long, "select 'long'::text") + _SYNC)
    step(_bind(long[:63]) + _EXECUTE + _SYNC)
    query(f"deallocate {long.decode()}")
    step(_bind(long) + _EXECUTE + _SYNC)
    # Twice in one segment: the second is refused (or skipped, had the first failed).
    step(_parse(b"twice", s1) + _parse(b"twice", s1) + _bind(b"twice") + _EXECUTE + _SYNC)
    step(_parse(b"thrice", "selec 1") + _parse(b"thrice", s1) + _SYNC)
    # An unnamed Parse that fails leaves no unnamed statement.
    step(_parse(b"", "select 'u1'::text") + _SYNC)
    step(_parse(b"", "selec 1") + _SYNC)
    step(_bind(b"") + _EXECUTE + _SYNC)
    # DEALLOCATE ALL among other statements: not run after an error; run, it drops the names.
    step(_parse(b"s3", s1) + _SYNC)
    query("select 1/0; deallocate all")
    step(_bind(b"s3") + _EXECUTE + _SYNC)
    query("select 1; deallocate all")
    step(_bind(b"s3") + _EXECUTE + _SYNC)
    # An unnamed Parse, a Close of it or a refused one that the server skips after an error
    # leaves the previous unnamed statement; one that fails in a failed block leaves none.
    step(_parse(b"", "select 'u2'::text") + _SYNC)
    step(_bind(b"nosuch") + _parse(b"", "select 'u3'::text") + _SYNC)
    step(_bind(b"nosuch") + _msg(b"C", b"S\0") + _SYNC)
    step(_bind(b"nosuch") + _parse(b"", "PREPARE p AS SELECT 1") + _SYNC)
    step(_bind(b"") + _EXECUTE + _SYNC)
    step(_parse(b"b1", "BEGIN") + _bind(b"b1") + _EXECUTE + _SYNC)
    step(_parse(b"f1", "select 1/0") + _bind(b"f1") + _EXECUTE + _SYNC)
    step(_parse(b"", "select 'u4'::text") + _SYNC)
    step(_parse(b"r1", "ROLLBACK") + _bind(b"r1") + _EXECUTE + _SYNC)
    step(_bind(b"") + _EXECUTE + _SYNC)
    # PostgreSQL parses a statement before it finds its name taken (a syntax error is the
    # answer then); a refused Parse leaves no portal behind; a Parse in a failed block gets
    # 25P02 also when the server already has the statement.
    step(_parse(b"s4", s1) + _SYNC)
    step(_parse(b"s4", "selec 2") + _SYNC)
    query("BEGIN")
    step(_parse(b"s4", "select 3") + _SYNC)
    step(_EXECUTE + _SYNC)
    step(_parse(b"s5", s1) + _SYNC)
    query("ROLLBACK")
    step(_bind(b"s5") + _EXECUTE + _SYNC)
    return out


def test_names_answer_as_postgresql_answers(pool_uri, svc):
    """The same raw-protocol script through the pool and on PostgreSQL directly gets the same
    answers, step by step: a duplicate named Parse (42P05), errors that fail an open block, an
    extended-protocol DEALLOCATE the server skips, the unnamed statement after a Parse or Close
    of it the server skips or refuses, a taken name's Parse checked as PostgreSQL checks it,
    and a name with a `$` in PostgreSQL's message."""
    tag = unique("nm")
    pooled, direct = RawClient(pool_uri), RawClient(svc.uri_for(dbname="app"))
    try:
        got, want = _names_script(pooled, tag), _names_script(direct, tag)
        # Only SQL PREPARE differs: PostgreSQL runs it, the pool refuses it.
        assert want[7] == ([], [], "T")
        assert got[:7] + got[8:] == want[:7] + want[8:]
        assert got[1] == ([], ["42P05"], "I") and got[2] == ([tag], [], "I")
        assert got[4][1:] == (["42P05"], "E") and got[7][1:] == (["0A000"], "E"), got
        assert got[10] == ([tag], [], "I") and got[12] == ([tag], [], "I"), got
        assert got[15][1] == ["25P02"] and got[17] == ([tag], [], "I")
        old, unnamed, taken = got[:-18], got[-18:-8], got[-8:]
        assert old[-15:-8] == [(["again"], [], "I"), ([], [], "I"), (["long"], [], "I"),
                               ([], [], "I"), ([], ["26000"], "I"), ([], ["42P05"], "I"),
                               ([], ["42601"], "I")], got
        assert old[-8:-5] == [([], [], "I"), ([], ["42601"], "I"), ([], ["26000"], "I")], got
        assert old[-4:] == [([], ["22012"], "I"), ([tag], [], "I"), (["1"], [], "I"),
                            ([], ["26000"], "I")], got
        assert taken == [([], [], "I"), ([], ["42601"], "I"), ([], [], "T"),
                         ([], ["42P05"], "E"), ([], ["34000"], "E"), ([], ["25P02"], "E"),
                         ([], [], "I"), ([], ["26000"], "I")], got
        assert unnamed == [([], [], "I"), ([], ["26000"], "I"), ([], ["26000"], "I"),
                           ([], ["26000"], "I"), (["u2"], [], "I"), ([], [], "T"),
                           ([], ["22012"], "E"), ([], ["25P02"], "E"), ([], [], "I"),
                           ([], ["26000"], "I")], got
        assert taken == [([], [], "I"), ([], ["42601"], "I"), ([], [], "T"),
                         ([], ["42P05"], "E"), ([], ["34000"], "E"), ([], ["25P02"], "E"),
                         ([], [], "I"), ([], ["26000"], "I")], got
        # A refused Parse of the unnamed statement drops the client's, as a failed one does.
        pooled.sock.sendall(_parse(b"", "select 'u'::text") + _SYNC)
        assert _outcome(pooled) == ([], [])
        pooled.sock.sendall(_parse(b"", "PREPARE p AS SELECT 1") + _bind(b"") + _EXECUTE + _SYNC)
        assert _outcome(pooled) == ([], ["0A000"])
        assert _run_unnamed(pooled) == ([], ["26000"])
        for raw in (pooled, direct):
            errors = [parse_error(b) for k, b in raw.query('DEALLOCATE "a$b"') if k == b"E"]
            assert [e["M"] for e in errors] == ['prepared statement "a$b" does not exist']
    finally:
        pooled.close()
        direct.close()


def test_a_parse_pipelined_behind_a_block_that_fails_is_refused(pool_uri):
    """A Parse of a statement the server connection already has, sent in the same write as a
    Query that fails the transaction block: PostgreSQL refuses it (25P02), and so does the
    pooler, which asks the server instead of answering from what it has (seed 107 of the
    protocol fuzz test)."""
    text = f"select '{unique('pp')}'::text"
    raw = RawClient(pool_uri)
    try:
        raw.sock.sendall(_msg(b"P", b"first\0" + text.encode() + b"\0\0\0") + _msg(b"S", b""))
        assert _outcome(raw) == ([], [])
        raw.sock.sendall(_msg(b"Q", b"BEGIN; SELECT 1/0\0")
                         + _msg(b"P", b"second\0" + text.encode() + b"\0\0\0") + _msg(b"S", b""))
        got = raw.until_ready() + raw.until_ready()
        assert [(k, parse_error(b)["C"] if k == b"E" else b) for k, b in got if k != b"C"] == [
            (b"E", "22012"), (b"Z", b"E"), (b"E", "25P02"), (b"Z", b"E")], got
        raw.query("ROLLBACK")
        assert _run_named(raw, b"second") == ([], ["26000"])
        assert _run_named(raw, b"first")[1] == []
    finally:
        raw.close()


def _kinds(got: list, kinds: bytes) -> list:
    """The messages of `kinds` among `got`, an error as its SQLSTATE."""
    return [(k, parse_error(b)["C"] if k == b"E" else b) for k, b in got if k in kinds]


def _side_by_side(pool_uri, svc, script) -> tuple:
    """`script(raw, uri)` on a connection through the pool, then on one straight to PostgreSQL:
    (what it returned pooled, what it returned directly)."""
    out = []
    for uri in (pool_uri, svc.uri_for(dbname="app")):
        raw = RawClient(uri)
        try:
            out.append(script(raw, uri))
        finally:
            raw.close()
    return tuple(out)


@pytest.mark.parametrize("text,code,healthy", [("ROLLBACK", "42P05", "42P05"),
                                               ("select 2", "25P02", "42P05"),
                                               ("selec bad", "42601", "42601")])
def test_a_taken_name_parsed_behind_a_block_that_fails(pool_uri, svc, text, code, healthy):
    """A Parse of a name the client already has, sent in the same write as a Bind that then
    fails the transaction block: PostgreSQL refuses a ROLLBACK's text for its name (42P05), any
    other text for the block (25P02), and a text it cannot parse for its syntax (42601, in a
    healthy block too); the pooler answers each as it does, on the pool and directly side by
    side (seed 753 of the protocol fuzz test: the pool answered 25P02 to the first two, because
    the statement it runs to raise 42P05 was refused by the failed block)."""
    def script(raw, _uri):
        answers = []
        raw.sock.sendall(_parse(b"taken", "select 1") + _SYNC)
        assert _outcome(raw) == ([], [])
        raw.query("BEGIN")
        # A Bind of one parameter to a statement that has none: 08P01.
        bad_bind = _msg(b"B", b"\0taken\0" + b"\0\0" + b"\0\1" + b"\0\0\0\1" + b"1" + b"\0\0")
        raw.sock.sendall(bad_bind + _SYNC + _parse(b"taken", text) + _SYNC)
        answers.append(_kinds(raw.until_ready() + raw.until_ready(), b"EZ"))
        # A healthy block: the name is refused for itself.
        raw.query("ROLLBACK")
        raw.sock.sendall(_msg(b"Q", b"BEGIN; SELECT 1\0") + _parse(b"taken", text) + _SYNC)
        answers.append(_kinds(raw.until_ready() + raw.until_ready(), b"EZ"))
        raw.query("ROLLBACK")
        assert _run_named(raw, b"taken") == (["1"], [])
        return answers

    pooled, direct = _side_by_side(pool_uri, svc, script)
    assert direct == [[(b"E", "08P01"), (b"Z", b"E"), (b"E", code), (b"Z", b"E")],
                      [(b"Z", b"T"), (b"E", healthy), (b"Z", b"E")]], direct
    assert pooled == direct


@pytest.mark.parametrize("sql", ["select 1; deallocate all", "discard all"])
@pytest.mark.parametrize("use", ["describe", "bind"])
def test_a_name_pipelined_behind_a_query_that_drops_it_is_gone(pool_uri, svc, sql, use):
    """A Describe or Bind of a statement sent in the same write as a Query the server runs a
    `DEALLOCATE ALL` or `DISCARD ALL` in: PostgreSQL resolves the name after the Query ran
    (26000), and so does the pooler, which waits for the Query's answer before it resolves the
    name (seed 718 of the protocol fuzz test: on a server connection that had lost the
    statement, the pool prepared it again behind the Query and described it)."""
    def script(raw, uri):
        raw.sock.sendall(_parse(b"gone", "select 1") + _SYNC)
        assert _outcome(raw) == ([], [])
        # Another client's DEALLOCATE ALL drops the statement from the pool's one server
        # connection, so the pooler prepares it again in front of the client's message.
        other = RawClient(uri)
        other.query("select 1; deallocate all")
        other.close()
        then = _msg(b"D", b"Sgone\0") if use == "describe" else _bind(b"gone") + _EXECUTE
        raw.sock.sendall(_msg(b"Q", sql.encode() + b"\0") + then + _SYNC)
        answer = _kinds(raw.until_ready() + raw.until_ready(), b"EZtC")
        # Made again under the same name: there is one again.
        raw.sock.sendall(_parse(b"gone", "select 2") + _SYNC)
        assert _outcome(raw) == ([], [])
        assert _run_named(raw, b"gone") == (["2"], [])
        return answer

    pooled, direct = _side_by_side(pool_uri, svc, script)
    assert [a for a in direct if a[0] == b"E"] == [(b"E", "26000")], direct
    assert pooled == direct


def test_the_unnamed_statement_stays_when_its_parse_again_is_skipped(pool_uri, svc):
    """The pooler parses the client's unnamed statement on the server again before a Bind of it
    when the server's unnamed statement is not the client's (here: the statement it parsed to
    raise a refused Parse's 42P05 took its place). When the server skips that Parse after an
    earlier error, together with a client's Parse of the unnamed statement, the client keeps
    its previous unnamed statement, as in PostgreSQL, and the pooler parses it again before the
    next use instead of counting on the skipped Parse (fuzz seeds 907 and 1983: the pool
    answered 26000)."""
    def script(raw, _uri):
        raw.sock.sendall(_parse(b"", "select 1") + _parse(b"s1", "select 2") + _SYNC)
        assert _outcome(raw) == ([], [])
        raw.sock.sendall(_parse(b"s1", "select 3") + _SYNC)
        assert _outcome(raw) == ([], ["42P05"])
        # An Execute of a portal that does not exist (34000), then a Bind of the unnamed
        # statement and a Parse of another, both skipped; then a Describe of it.
        missing = _msg(b"E", b"p1\0\0\0\0\0")
        raw.sock.sendall(missing + _bind(b"") + _parse(b"", "select 4") + _SYNC
                         + _msg(b"D", b"S\0") + _SYNC)
        answer = _kinds(raw.until_ready() + raw.until_ready(), b"EZtn")
        assert _run_unnamed(raw) == (["1"], [])
        return answer

    pooled, direct = _side_by_side(pool_uri, svc, script)
    assert direct == [(b"E", "34000"), (b"Z", b"I"), (b"t", b"\0\0"), (b"Z", b"I")], direct
    assert pooled == direct


def test_the_unnamed_portal_bound_in_its_segment_runs_after_a_wait(pool_uri, svc):
    """An Execute of the unnamed portal that the same segment's Bind made runs that portal,
    also when the segment waited (here for an earlier segment's answers, behind a Parse of a
    name that segment changes) and that earlier segment's skipped Bind re-armed the guard
    against the portal a failed simple Query leaves (a Close of it before the Execute):
    PostgreSQL runs the ROLLBACK, the pool answered 34000 (protocol fuzz seed 2112)."""
    def bind(portal: bytes, statement: bytes) -> bytes:
        return _msg(b"B", portal + b"\0" + statement + b"\0" + b"\0\0" * 3)

    def script(raw, _uri):
        raw.sock.sendall(_parse(b"s1", "rollback") + _SYNC)
        assert _outcome(raw) == ([], [])
        # A Describe of a portal that does not exist (34000) skips the rest of the first
        # segment; the second binds the unnamed portal to s1 and runs it.
        raw.sock.sendall(_msg(b"D", b"Pp1\0") + bind(b"", b"s2") + _msg(b"E", b"p1\0\0\0\0\0")
                         + _parse(b"s2", "select 'a'::text") + _SYNC
                         + bind(b"", b"s1") + _parse(b"s2", "select 'a'::text") + _EXECUTE
                         + _SYNC)
        return _kinds(raw.until_ready() + raw.until_ready(), b"EZ12C")

    pooled, direct = _side_by_side(pool_uri, svc, script)
    assert direct == [(b"E", "34000"), (b"Z", b"I"), (b"2", b""), (b"1", b""),
                      (b"C", b"ROLLBACK\0"), (b"Z", b"I")], direct
    assert pooled == direct


def test_a_name_closed_and_parsed_again_in_a_skipped_segment_keeps_its_statement(pool_uri, svc):
    """A Close of a statement and a Parse of the same name behind an Execute that fails, in a
    failed transaction block, pipelined behind the segment that parsed the statement: the
    server skips both, so the name keeps the statement it had, as in PostgreSQL. The Close
    waited for the first segment's answers and was skipped on its own, before the Parse behind
    it; undoing the two changes one at a time, the earlier first, left the name without a
    statement (protocol fuzz seed 852: a later Bind got 26000)."""
    def bind(statement: bytes, params: int) -> bytes:
        values = b"".join(b"\0\0\0\1" + b"5" for _ in range(params))
        return _msg(b"B", b"\0" + statement + b"\0\0\0" + params.to_bytes(2, "big") + values
                    + b"\0\0")

    def script(raw, _uri):
        raw.query("BEGIN")
        # The Bind's one parameter is one too many (08P01): the block fails. Then an Execute
        # of a portal that does not exist (34000) has the Close and the Parse skipped.
        raw.sock.sendall(_parse(b"s2", "select 1") + bind(b"s2", 1) + _SYNC
                         + _msg(b"E", b"p1\0\0\0\0\0") + _msg(b"C", b"Ss2\0")
                         + _parse(b"s2", "select 2") + _SYNC)
        answers = _kinds(raw.until_ready() + raw.until_ready(), b"E1Z3")
        raw.sock.sendall(bind(b"s2", 1) + _SYNC)
        answers += _kinds(raw.until_ready(), b"EZ")
        raw.query("ROLLBACK")
        assert _run_named(raw, b"s2") == (["1"], [])
        return answers

    pooled, direct = _side_by_side(pool_uri, svc, script)
    assert direct == [(b"1", b""), (b"E", "08P01"), (b"Z", b"E"), (b"E", "34000"), (b"Z", b"E"),
                      (b"E", "08P01"), (b"Z", b"E")], direct
    assert pooled == direct


def test_a_name_made_behind_a_discard_all_keeps_a_skipped_close(pool_uri, svc):
    """A `DISCARD ALL` Query, then in the same write a Parse of a new name and, behind an error,
    a Close of it that the server skips: the name keeps the statement parsed after the
    `DISCARD ALL`, as in PostgreSQL (protocol fuzz seed 1137: when the `DISCARD ALL`'s answer
    came, the pooler took every waiting change's earlier statement for one the `DISCARD ALL`
    dropped, also the Close's, which the Parse behind the `DISCARD ALL` had made; a Describe
    got 26000)."""
    def script(raw, _uri):
        raw.sock.sendall(_msg(b"Q", b"discard all\0") + _parse(b"s1", "select 2")
                         + _bind(b"nosuch") + _msg(b"C", b"Ss1\0") + _SYNC)
        answers = _kinds(raw.until_ready() + raw.until_ready(), b"E1Z3")
        raw.sock.sendall(_msg(b"D", b"Ss1\0") + _SYNC)
        answers += _kinds(raw.until_ready(), b"EtTZ")
        assert _run_named(raw, b"s1") == (["2"], [])
        return answers

    pooled, direct = _side_by_side(pool_uri, svc, script)
    assert [k for k, _ in direct] == [b"Z", b"1", b"E", b"Z", b"t", b"T", b"Z"], direct
    assert direct[2] == (b"E", "26000"), direct
    assert pooled == direct


@pytest.mark.parametrize("drops", [b"s2", b""])
def test_a_name_bound_behind_an_executed_discard_all_is_gone(pool_uri, svc, drops):
    """A `DISCARD ALL` run by an Execute (of a named or the unnamed statement), and behind it in
    the same segment a Bind of a name the client had: PostgreSQL dropped the name before the
    Bind (26000), through the pool as directly (protocol fuzz seed 2902 through a pool of two:
    the pooler parsed the client's statement again in front of that Bind, on a server connection
    another client had emptied, after the `DISCARD ALL`, and the Bind ran it)."""
    def script(raw, uri):
        raw.sock.sendall(_parse(b"s1", "select 1") + _SYNC)
        answers = _kinds(raw.until_ready(), b"E1Z")
        # Another client empties the server connection of s1's statement (through the pool),
        # so the pooler parses it again in front of the next Bind of it.
        other = RawClient(uri)
        try:
            other.query("discard all")
        finally:
            other.close()
        portal_bind = _msg(b"B", b"p1\0" + drops + b"\0" + b"\0\0" * 3)
        raw.sock.sendall(_parse(drops, "discard all") + portal_bind
                         + _msg(b"E", b"p1\0\0\0\0\0") + _msg(b"B", b"p2\0s1\0" + b"\0\0" * 3)
                         + _msg(b"D", b"Ss1\0") + _SYNC)
        answers += _kinds(raw.until_ready(), b"E12CtTnZ")
        # The name is free again.
        raw.sock.sendall(_parse(b"s1", "select 2") + _SYNC)
        answers += _kinds(raw.until_ready(), b"E1Z")
        assert _run_named(raw, b"s1") == (["2"], [])
        return answers

    pooled, direct = _side_by_side(pool_uri, svc, script)
    assert [k for k, _ in direct] == [b"1", b"Z", b"1", b"2", b"C", b"E", b"Z", b"1", b"Z"], direct
    assert direct[5] == (b"E", "26000"), direct
    assert pooled == direct


@pytest.mark.parametrize("between", ["nothing", "discard all"])
def test_a_name_parsed_twice_in_a_segment_behind_another_is_taken(pool_uri, svc, between):
    """A segment that parses a name twice, sent in the same write as an earlier segment: the
    second Parse is refused (42P05), as in PostgreSQL, unless an Execute of a `DISCARD ALL`
    between them dropped the name (protocol fuzz seed 51: the pooler let the second Parse
    through while any segment before it was unanswered, taking the first Parse's change for one
    an earlier segment might undo)."""
    def script(raw, _uri):
        middle = b""
        if between == "discard all":
            middle = (_parse(b"d", "discard all") + _msg(b"B", b"p1\0d\0" + b"\0\0" * 3)
                      + _msg(b"E", b"p1\0\0\0\0\0"))
        raw.sock.sendall(_parse(b"s9", "select 1") + _SYNC + _parse(b"s3", "select 2") + middle
                         + _parse(b"s3", "select 3") + _SYNC)
        answers = _kinds(raw.until_ready() + raw.until_ready(), b"E12CZ")
        answers.append(_run_named(raw, b"s3"))
        return answers

    pooled, direct = _side_by_side(pool_uri, svc, script)
    if between == "nothing":
        assert direct == [(b"1", b""), (b"Z", b"I"), (b"1", b""), (b"E", "42P05"), (b"Z", b"I"),
                          (["2"], [])], direct
    else:
        assert direct[-2:] == [(b"Z", b"I"), (["3"], [])], direct
    assert pooled == direct


def test_a_name_behind_a_discard_all_the_server_skips_waits_for_nothing(pool_uri, svc):
    """A Parse of a name the client has waits behind an Execute of a `DISCARD ALL` in its own
    segment, for the Execute's answer (asked for with a Flush), unless an error earlier in the
    segment has the server skip everything, that Execute and Flush too, up to the Sync: then it
    goes on, and the segment ends as in PostgreSQL (protocol fuzz seed 192: the pooler waited
    for an answer the server would send only after the Sync it held back, and the client
    waited forever)."""
    def script(raw, _uri):
        # The Bind fails (the client has no unnamed statement): 26000, the segment is skipped.
        raw.sock.sendall(_parse(b"s2", "discard all") + _SYNC
                         + _msg(b"B", b"p1\0\0" + b"\0\0" * 3))
        answers = _kinds(raw.until_ready(), b"E1Z")
        answers.append(_kinds([raw._recv_msg()], b"E"))
        raw.sock.sendall(_msg(b"B", b"p1\0s2\0" + b"\0\0" * 3) + _msg(b"E", b"p1\0\0\0\0\0")
                         + _parse(b"s2", "select 2") + _SYNC)
        answers += _kinds(raw.until_ready(), b"E12CZ")
        raw.sock.sendall(_msg(b"D", b"Ss2\0") + _SYNC)
        answers += _kinds(raw.until_ready(), b"EtnTZ")
        return answers

    pooled, direct = _side_by_side(pool_uri, svc, script)
    assert direct == [(b"1", b""), (b"Z", b"I"), [(b"E", "26000")], (b"Z", b"I"),
                      (b"t", b"\0\0"), (b"n", b""), (b"Z", b"I")], direct
    assert pooled == direct


def test_a_failed_bind_of_another_portal_leaves_the_unnamed_portal(pool_uri, svc):
    """A Bind of a named portal that fails leaves the client's unnamed portal as it was: in the
    failed block an Execute of it gets 25P02, as in PostgreSQL, not 34000 (protocol fuzz seed
    1845 through a pool of two: the pooler took the failed Bind for one of the unnamed portal
    and closed that portal before the Execute, as it closes the one a failed simple Query
    leaves)."""
    def script(raw, _uri):
        raw.query("BEGIN")
        raw.sock.sendall(_parse(b"", "select 1") + _bind(b"") + _SYNC)
        answers = _kinds(raw.until_ready(), b"E12Z")
        # One parameter for a statement that has none: 08P01, the block fails.
        raw.sock.sendall(_msg(b"B", b"p1\0\0" + b"\0\0" + b"\0\1" + b"\0\0\0\1" + b"1" + b"\0\0")
                         + _SYNC)
        answers += _kinds(raw.until_ready(), b"E2Z")
        raw.sock.sendall(_EXECUTE + _SYNC)
        answers += _kinds(raw.until_ready(), b"EDCZ")
        raw.query("ROLLBACK")
        return answers

    pooled, direct = _side_by_side(pool_uri, svc, script)
    assert direct == [(b"1", b""), (b"2", b""), (b"Z", b"T"), (b"E", "08P01"), (b"Z", b"E"),
                      (b"E", "25P02"), (b"Z", b"E")], direct
    assert pooled == direct
