"""asyncpg through a pgbay transaction pool: it prepares every query (named statements, its own
LRU cache), so its cache eviction is exercised with statement_cache_size=2. Run by
tests/test_drivers.py."""

from __future__ import annotations

import asyncio
import json
import ssl

import asyncpg

from common import (CA, CLIENTS, DB, HOST, PASSWORD, PORT, TABLE, TYPES_SQL, USER, ARRAY, BOOL,
                    BYTEA, INT, JSON, NUMERIC, TEXT, TS, check_types, ddl, run, step)

CTX = ssl.create_default_context(cafile=CA)  # verify-full: chain and host name


async def connect(**kw) -> asyncpg.Connection:
    return await asyncpg.connect(host=HOST, port=PORT, database=DB, user=USER, password=PASSWORD,
                                 ssl=CTX, timeout=10, **kw)


async def amain() -> None:
    with step("connect over TLS verify-full"):
        conn = await connect()
        for sql in ddl():
            await conn.execute(sql)

    with step("parameters of common types"):
        sql = ("SELECT $1::int, $2::text, $3::numeric, $4::bool, $5::timestamptz, $6::bytea, "
               "$7::json, $8::int[]")
        for _ in range(3):
            row = await conn.fetchrow(sql, INT, TEXT, NUMERIC, BOOL, TS, BYTEA, json.dumps(JSON),
                                      ARRAY)
            check_types(tuple(row))

    with step("explicit prepared statement"):
        st = await conn.prepare("SELECT $1::int * 2")
        for i in range(5):
            assert await st.fetchval(i) == 2 * i
        await conn.close()

    with step("statement cache eviction (statement_cache_size=2, ten queries)"):
        conn = await connect(statement_cache_size=2)
        for round_ in range(3):
            for q in range(10):
                assert await conn.fetchval(f"SELECT $1::int + {q}", round_) == round_ + q
        await conn.close()

    with step("transaction with a savepoint rolled back"):
        conn = await connect()
        async with conn.transaction():
            await conn.execute(f"INSERT INTO {TABLE} (id, note) VALUES (1, 'kept')")
            try:
                async with conn.transaction():  # a savepoint
                    await conn.execute(f"INSERT INTO {TABLE} (id, note) VALUES (2, 'gone')")
                    await conn.execute("SELECT 1/0")
            except asyncpg.DivisionByZeroError:
                pass
        assert await conn.fetchval(f"SELECT array_agg(id ORDER BY id) FROM {TABLE}") == [1]

    with step("COPY in and out"):
        await conn.copy_records_to_table(TABLE, records=[(i, f"row {i}") for i in range(100, 200)],
                                         columns=["id", "note"])
        import io
        out = io.BytesIO()
        await conn.copy_from_query(f"SELECT id, note FROM {TABLE} WHERE id >= 100 ORDER BY id",
                                   output=out)
        lines = out.getvalue().decode().splitlines()
        assert len(lines) == 100 and lines[0] == "100\trow 100", lines[:2]

    with step("cancel a pg_sleep (task cancellation sends a CancelRequest)"):
        watcher = await connect()
        task = asyncio.ensure_future(conn.execute("SELECT pg_sleep(60) /* drivers-cancel */"))
        for _ in range(400):
            n = await watcher.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE "
                "'%drivers-cancel%' AND pid <> pg_backend_pid()")
            if n == 1:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("pg_sleep did not start")
        try:
            await asyncio.wait_for(task, timeout=0.01)
        except asyncio.TimeoutError:
            pass  # wait_for cancelled the task: asyncpg sent the cancel
        assert await asyncio.wait_for(conn.fetchval("SELECT 'after'"), 30) == "after"
        # asyncpg cancels with a CancelRequest: the server-side query is gone too.
        for _ in range(400):
            n = await watcher.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE "
                "'%drivers-cancel%' AND pid <> pg_backend_pid()")
            if n == 0:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the pg_sleep still runs")

        await conn.close()
        await watcher.close()

    with step(f"{CLIENTS} concurrent clients"):
        async def worker(w: int):
            c = await connect()
            for i in range(12):
                async with c.transaction():
                    await c.execute(f"INSERT INTO {TABLE} (id, note, worker) VALUES ($1, 'c', $2)",
                                    1000 + i, w)
                    assert await c.fetchval("SELECT $1::int + 1", i) == i + 1
            await c.close()

        await asyncio.wait_for(asyncio.gather(*(worker(w) for w in range(CLIENTS))), 120)

    # Last: what fails on today's pooler (issue 20's report names both).
    with step("LISTEN/NOTIFY"):
        got: asyncio.Queue = asyncio.Queue()
        listener = await connect()
        await listener.add_listener("drivers_apg", lambda c, pid, ch, payload: got.put_nowait(payload))
        watcher = await connect()
        await watcher.execute("NOTIFY drivers_apg, 'hello from asyncpg'")
        assert await asyncio.wait_for(got.get(), 10) == "hello from asyncpg"
        await listener.close()
        await watcher.close()

    with step(f"{CLIENTS} concurrent clients (asyncpg Pool: its reset query on release has UNLISTEN *)"):
        pool = await asyncpg.create_pool(host=HOST, port=PORT, database=DB, user=USER,
                                         password=PASSWORD, ssl=CTX, min_size=CLIENTS,
                                         max_size=CLIENTS)

        async def worker(w: int):
            async with pool.acquire() as c:
                for i in range(12):
                    async with c.transaction():
                        await c.execute(f"INSERT INTO {TABLE} (id, note, worker) "
                                        "VALUES ($1, 'w', $2)", 1000 + i, w)
                        assert await c.fetchval("SELECT $1::int + 1", i) == i + 1

        await asyncio.wait_for(asyncio.gather(*(worker(w) for w in range(CLIENTS))), 120)
        assert await pool.fetchval(f"SELECT count(*) FROM {TABLE} WHERE note = 'w'") == CLIENTS * 12
        await pool.close()



run(lambda: asyncio.run(amain()))
