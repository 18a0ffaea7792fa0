"""Transaction pooling without leaks: each client's SETs follow it from server connection to
server connection (issue 11).

One transaction pool of size 1 is shared by a psycopg and an asyncpg client, so every statement
of either runs on the same server connection, in turn. What each client sees must be what it
would see on a direct connection: its own search_path, statement_timeout and TimeZone; RESET,
rolled-back SETs and SET LOCAL with their PostgreSQL meaning. SQL-level PREPARE/EXECUTE, which
cannot follow a client, are refused with a clear error.
"""

from __future__ import annotations

import asyncio

import asyncpg
import psycopg
import pytest

from conftest import find_pool, ok, provision, unique


@pytest.fixture(scope="module")
def svc(client):
    s = provision(client, unique("txs"))
    ok(client, client.create_dbaas_pg_database(service_name=s.name, database_name="app"))
    ok(client, client.create_dbaas_postgres_user(service_name=s.name, username="appuser"))
    with psycopg.connect(s.uri_for(dbname="app"), autocommit=True) as conn:
        for schema in ("sa", "sb", "sc"):
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO appuser")
    return s


@pytest.fixture
def pool_uri(client, svc):
    name = unique("tx1")
    ok(client, client.create_dbaas_pg_connection_pool(
        service_name=svc.name, name=name, database_name="app", mode="transaction", size=1,
        username="appuser"))
    pool = find_pool(client.get_dbaas_service_pg(name=svc.name), name)
    return pool["connection-uri"]


def show(conn, name):
    return conn.execute(f"SHOW {name}").fetchone()[0]


async def ashow(conn, name):
    return await conn.fetchval(f"SHOW {name}")


def run(coro):
    return asyncio.run(coro)


def test_each_client_keeps_its_settings(pool_uri):
    async def main():
        a = psycopg.connect(pool_uri, autocommit=True)
        b = await asyncpg.connect(pool_uri)
        try:
            defaults = {n: show(a, n) for n in ("search_path", "statement_timeout", "TimeZone")}
            a.execute("SET search_path = sa, public")
            a.execute("SET statement_timeout = '1234ms'")
            a.execute("SET TimeZone = 'Asia/Tokyo'")
            await b.execute("SET search_path TO sb, public")
            await b.execute("SET SESSION statement_timeout = 4321")
            await b.execute("SET TIME ZONE 'America/New_York'")
            for i in range(40):
                assert show(a, "search_path") == "sa, public", i
                assert await ashow(b, "search_path") == "sb, public", i
                assert show(a, "statement_timeout") == "1234ms", i
                assert await ashow(b, "statement_timeout") == "4321ms", i
                assert show(a, "TimeZone") == "Asia/Tokyo", i
                assert await ashow(b, "TimeZone") == "America/New_York", i
                # Both really ran on the one server connection.
                assert a.execute("SELECT pg_backend_pid()").fetchone()[0] == \
                    await b.fetchval("SELECT pg_backend_pid()")
            # A client that set nothing sees the server's defaults, not a neighbour's values.
            with psycopg.connect(pool_uri, autocommit=True) as c:
                for n, v in defaults.items():
                    assert show(c, n) == v, n
            # The values are in force, not just reported: the timeout cancels a slow query.
            await b.execute("SET statement_timeout = 50")
            with pytest.raises(asyncpg.QueryCanceledError):
                await b.execute("SELECT pg_sleep(2)")
            assert a.execute("SELECT 1 FROM pg_sleep(0.1)").fetchone()[0] == 1
        finally:
            a.close()
            await b.close()
    run(main())


def test_reset_rollback_and_set_local_as_on_a_direct_connection(pool_uri):
    async def main():
        a = psycopg.connect(pool_uri, autocommit=True)
        b = await asyncpg.connect(pool_uri)
        try:
            async def b_untouched():
                assert await ashow(b, "statement_timeout") == "0"
                assert await ashow(b, "work_mem") == default_work_mem
                assert await ashow(b, "search_path") == default_path

            default_work_mem = show(a, "work_mem")
            default_path = show(a, "search_path")
            a.execute("SET statement_timeout = 1000")
            await b_untouched()
            # A SET inside a block that rolls back is not kept.
            a.execute("BEGIN")
            a.execute("SET statement_timeout = 2000")
            assert show(a, "statement_timeout") == "2s"
            a.execute("ROLLBACK")
            await b_untouched()
            assert show(a, "statement_timeout") == "1s"
            # One that commits is.
            with a.transaction():
                a.execute("SET statement_timeout = 3000")
            await b_untouched()
            assert show(a, "statement_timeout") == "3s"
            # SET LOCAL ends with its transaction.
            with a.transaction():
                a.execute("SET LOCAL work_mem = '7MB'")
                assert show(a, "work_mem") == "7MB"
            await b_untouched()
            assert show(a, "work_mem") == default_work_mem
            # RESET name, set_config(.., false), RESET ALL.
            a.execute("RESET statement_timeout")
            await b_untouched()
            assert show(a, "statement_timeout") == "0"
            a.execute("SELECT set_config('search_path', 'sc, public', false)")
            a.execute("SET work_mem = '5MB'")
            await b_untouched()
            assert show(a, "search_path") == "sc, public"
            assert show(a, "work_mem") == "5MB"
            a.execute("RESET ALL")
            await b_untouched()
            assert show(a, "search_path") == default_path
            assert show(a, "work_mem") == default_work_mem
            # The asyncpg client's simple-protocol SETs follow it the same way.
            await b.execute("SET work_mem = '6MB'; SET search_path = sb")
            assert show(a, "work_mem") == default_work_mem
            assert await ashow(b, "work_mem") == "6MB"
            assert await ashow(b, "search_path") == "sb"
        finally:
            a.close()
            await b.close()
    run(main())


def test_sql_prepare_is_refused_naming_transaction_mode(pool_uri):
    async def main():
        a = psycopg.connect(pool_uri, autocommit=True)
        b = await asyncpg.connect(pool_uri)
        try:
            with pytest.raises(psycopg.errors.FeatureNotSupported) as e:
                a.execute("PREPARE p AS SELECT 1")
            assert "transaction pooling mode" in str(e.value)
            assert a.execute("SELECT 7").fetchone()[0] == 7
            with pytest.raises(asyncpg.FeatureNotSupportedError) as e2:
                await b.execute("EXECUTE p")
            assert "transaction pooling mode" in str(e2.value)
            assert await b.fetchval("SELECT 8") == 8
            # Inside a block the refusal leaves the block open, as the server state says.
            with a.transaction():
                with pytest.raises(psycopg.errors.FeatureNotSupported):
                    a.execute("EXECUTE p")
        finally:
            a.close()
            await b.close()
    run(main())


def test_listen_notify_in_transaction_mode(pool_uri, svc):
    """LISTEN is served by the pool's own listening connection: notifications reach idle
    clients of both drivers while the pool's only server connection serves everyone else."""
    admin_uri = svc.uri_for(dbname="app")

    def listeners():
        with psycopg.connect(admin_uri, autocommit=True) as conn:
            return [r[0] for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgbay listener'")]

    async def main():
        got: asyncio.Queue = asyncio.Queue()
        listener = await asyncpg.connect(pool_uri)
        other = await asyncpg.connect(pool_uri)
        sender = psycopg.connect(pool_uri, autocommit=True)
        sync_listener = psycopg.connect(pool_uri, autocommit=True)
        try:
            await listener.add_listener("Chan 1", lambda *a: got.put_nowait(a[3]))
            sync_listener.execute("LISTEN plain_chan")
            # asyncpg's LISTEN (extended protocol) also ran on the pool's server connection,
            # which was made to forget it: only the pool's listener listens.
            assert await other.fetchval("SELECT count(*) FROM pg_listening_channels()") == 0
            # Another client's NOTIFY reaches the idle listener within a second.
            sender.execute("NOTIFY \"Chan 1\", 'first'")
            assert await asyncio.wait_for(got.get(), 1.0) == "first"
            sender.execute("SELECT pg_notify('plain_chan', 'sync')")
            n = next(sync_listener.notifies(timeout=1.0, stop_after=1))
            assert (n.channel, n.payload) == ("plain_chan", "sync")
            # After 100 statements of other clients on the one server connection.
            for i in range(50):
                assert sender.execute("SELECT %s::int", (i,)).fetchone()[0] == i
                assert await other.fetchval("SELECT $1::int", i) == i
            sender.execute("NOTIFY \"Chan 1\", 'second'")
            assert await asyncio.wait_for(got.get(), 1.0) == "second"
            # The listener's own statements still run (on the pool's server connection).
            assert await listener.fetchval("SELECT 5") == 5
            # A listener survives a backend failure: terminated, it comes back and listens again.
            pids = listeners()
            assert len(pids) == 1
            with psycopg.connect(admin_uri, autocommit=True) as conn:
                conn.execute("SELECT pg_terminate_backend(%s)", (pids[0],))
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                sender.execute("NOTIFY \"Chan 1\", 'after restart'")
                try:
                    assert await asyncio.wait_for(got.get(), 0.3) == "after restart"
                    break
                except asyncio.TimeoutError:
                    assert asyncio.get_running_loop().time() < deadline, "listener not back"
            assert listeners() != pids
            # UNLISTEN: nothing more arrives.
            await listener.execute('UNLISTEN "Chan 1"')
            sender.execute("NOTIFY \"Chan 1\", 'unheard'")
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(got.get(), 0.5)
            # A client that leaves unsubscribes; notifying its channel harms no one.
            sync_listener.close()
            await asyncio.sleep(0.2)
            sender.execute("NOTIFY plain_chan, 'nobody'")
            assert sender.execute("SELECT 6").fetchone()[0] == 6
        finally:
            sender.close()
            sync_listener.close()
            await listener.close()
            await other.close()
    run(main())
