"""Statement-cache evictions through a transaction pool (issue 20).

psycopg 3 on its defaults prepares a query on the server after it ran 5 times and then, after a
rollback (or a DDL, or DISCARD ALL), sends `DEALLOCATE ALL`; drivers evict single statements with
`DEALLOCATE name`. pgbay answers these from the client's own protocol-level statements, as
PostgreSQL would, without touching the statements of the other clients that share the server
connection. One transaction pool of size 1: every client runs on the same server connection.
"""

from __future__ import annotations

import psycopg
import pytest

from conftest import find_pool, ok, provision, unique


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
