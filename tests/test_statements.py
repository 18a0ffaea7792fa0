"""Drivers' statement caches and connect-time settings through a transaction pool (issue 20).

- psycopg 3 on its defaults: after a query ran 5 times psycopg prepares it, and a rollback makes
  it send `DEALLOCATE ALL`: it must work.
- SQL `DEALLOCATE name`, `DEALLOCATE PREPARE name` and `DEALLOCATE ALL` act on the client's own
  protocol-level statements only (26000 for a name it does not have); `DISCARD ALL` drops them
  with the session's settings.
- The startup parameter `options` (`-c name=value`, `--name=value`) becomes the client's own
  session settings in every mode; a value the server refuses is the server's error; a setting a
  pooled session cannot carry is refused at login, naming it.
"""

import psycopg
import pytest
from psycopg import pq

from conftest import find_pool, ok, provision, unique


@pytest.fixture(scope="module")
def svc(client):
    s = provision(client, unique("stmt"), plan="hobbyist-2")
    with psycopg.connect(s.uri, autocommit=True) as c:
        c.execute("CREATE SCHEMA other")
        c.execute("CREATE TABLE other.marker AS SELECT 'other schema' AS v")
    return s


def make_pool(client, svc, mode="transaction", size=1):
    name = unique(f"st-{mode[:4]}")
    ok(client, client.create_dbaas_pg_connection_pool(
        service_name=svc.name, name=name, database_name="defaultdb", mode=mode, size=size,
        username=svc.admin_user))
    return find_pool(client.get_dbaas_service_pg(name=svc.name), name)["connection-uri"]


@pytest.fixture(scope="module")
def tx_uri(client, svc):
    # Size 1: every client's transactions run on the same server connection, so anything one
    # client left behind would show to the next.
    return make_pool(client, svc, "transaction", 1)


def run(conn: psycopg.Connection, sql: str) -> pq.PGresult:
    return conn.pgconn.exec_(sql.encode())


def test_psycopg_defaults_survive_prepare_then_rollback(tx_uri):
    with psycopg.connect(tx_uri) as c:
        for i in range(6):
            assert c.execute("select %s::int", (i,)).fetchone() == (i,)
        c.rollback()  # psycopg sends DEALLOCATE ALL here
        for i in range(8):
            assert c.execute("select %s::int + 1", (i,)).fetchone() == (i + 1,)
        c.commit()
        # A DDL in the transaction makes psycopg deallocate too.
        for i in range(6):
            c.execute("select %s::text", (str(i),))
        c.execute("create temp table t_dealloc (x int)")
        c.rollback()
        assert c.execute("select %s::int", (42,)).fetchone() == (42,)


def test_deallocate_name_acts_on_the_clients_own_statements_only(tx_uri):
    with psycopg.connect(tx_uri, autocommit=True) as a, \
            psycopg.connect(tx_uri, autocommit=True) as b:
        for conn in (a, b):
            r = conn.pgconn.prepare(b"s1", b"select 'same text'")
            assert r.status == pq.ExecStatus.COMMAND_OK, r.error_message
            r = conn.pgconn.prepare(b"Mixed Case", b"select 2")
            assert r.status == pq.ExecStatus.COMMAND_OK, r.error_message
        r = run(a, "DEALLOCATE s1")
        assert r.status == pq.ExecStatus.COMMAND_OK, r.error_message
        assert r.command_status == b"DEALLOCATE"
        gone = a.pgconn.exec_prepared(b"s1", [])
        assert gone.status == pq.ExecStatus.FATAL_ERROR
        assert gone.error_field(pq.DiagnosticField.SQLSTATE) == b"26000"
        # b's statement of the same name and text is untouched.
        r = b.pgconn.exec_prepared(b"s1", [])
        assert r.status == pq.ExecStatus.TUPLES_OK and r.get_value(0, 0) == b"same text"
        # Quoted names keep their case; PREPARE is an optional noise word.
        r = run(a, 'DEALLOCATE PREPARE "Mixed Case";')
        assert r.status == pq.ExecStatus.COMMAND_OK, r.error_message
        assert a.pgconn.exec_prepared(b"Mixed Case", []).status == pq.ExecStatus.FATAL_ERROR
        assert b.pgconn.exec_prepared(b"Mixed Case", []).get_value(0, 0) == b"2"


def test_deallocate_of_an_unknown_name_is_postgres_26000_and_the_session_goes_on(tx_uri):
    with psycopg.connect(tx_uri, autocommit=True) as c:
        with pytest.raises(psycopg.errors.InvalidSqlStatementName) as e:
            c.execute("DEALLOCATE nope")
        assert 'prepared statement "nope" does not exist' in str(e.value)
        assert c.execute("select 1").fetchone() == (1,)


def test_deallocate_all_and_discard_all_drop_every_statement_of_the_client(tx_uri):
    with psycopg.connect(tx_uri, autocommit=True) as c:
        for name in (b"x1", b"x2"):
            assert c.pgconn.prepare(name, b"select 1").status == pq.ExecStatus.COMMAND_OK
        r = run(c, "deallocate all")
        assert r.status == pq.ExecStatus.COMMAND_OK and r.command_status == b"DEALLOCATE ALL"
        for name in (b"x1", b"x2"):
            assert c.pgconn.exec_prepared(name, []).status == pq.ExecStatus.FATAL_ERROR
        assert c.pgconn.prepare(b"x3", b"select 3").status == pq.ExecStatus.COMMAND_OK
        c.execute("SET search_path = other")
        r = run(c, "DISCARD ALL")
        assert r.status == pq.ExecStatus.COMMAND_OK, r.error_message
        assert c.pgconn.exec_prepared(b"x3", []).status == pq.ExecStatus.FATAL_ERROR
        assert c.execute("SHOW search_path").fetchone() == ('"$user", public',)


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_options_become_the_clients_own_settings(client, svc, mode):
    uri = make_pool(client, svc, mode, 1)
    opts = r"-c search_path=other -cstatement_timeout=4321 --application-name=with\ space"
    with psycopg.connect(uri, autocommit=True, options=opts) as c:
        assert c.execute("SHOW search_path").fetchone() == ("other",)
        assert c.execute("SHOW statement_timeout").fetchone() == ("4321ms",)
        assert c.execute("SHOW application_name").fetchone() == ("with space",)
        assert c.execute("SELECT v FROM marker").fetchone() == ("other schema",)
    if mode == "transaction":
        # The next client on the same server connection has its own (default) settings, and
        # a client that set both ways gets the directly given parameter.
        with psycopg.connect(uri, autocommit=True) as d:
            assert d.execute("SHOW search_path").fetchone() == ('"$user", public',)
            assert d.execute("SHOW statement_timeout").fetchone() == ("0",)
        with psycopg.connect(uri, autocommit=True, options="-c application_name=opt",
                             application_name="direct") as d:
            assert d.execute("SHOW application_name").fetchone() == ("direct",)


def test_options_the_pooler_cannot_carry_or_the_server_refuses(tx_uri):
    with pytest.raises(psycopg.OperationalError) as e:
        psycopg.connect(tx_uri, options="-c geqo=off")
    assert "options: -c geqo" in str(e.value)
    with pytest.raises(psycopg.OperationalError) as e:
        psycopg.connect(tx_uri, options="-B 100")
    assert "-B" in str(e.value)
    with psycopg.connect(tx_uri, autocommit=True, options="-c statement_timeout=abc") as c:
        with pytest.raises(psycopg.Error) as e:
            c.execute("select 1")
        assert e.value.sqlstate == "22023", repr(e.value)
        assert "statement_timeout" in str(e.value)
