"""psycopg2 through a pgbay transaction pool. psycopg2 interpolates parameters on the client and has
no prepared-statement path of its own. Run by tests/test_drivers.py."""

from __future__ import annotations

import io
import select
import threading
import time

import psycopg2
import psycopg2.errors
import psycopg2.extras

from common import (CA, CLIENTS, DB, HOST, PASSWORD, PORT, TABLE, TYPES_SQL, USER, ARRAY, BOOL,
                    BYTEA, INT, JSON, NUMERIC, TEXT, TS, check_types, ddl, in_threads, run, step, wait_for)


def connect(autocommit=False):
    c = psycopg2.connect(host=HOST, port=PORT, dbname=DB, user=USER, password=PASSWORD,
                         sslmode="verify-full", sslrootcert=CA, connect_timeout=10)
    c.autocommit = autocommit
    return c


def one(conn, sql, args=None):
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()


def main() -> None:
    with step("connect over TLS verify-full"):
        conn = connect(autocommit=True)
        assert conn.info.ssl_in_use, "not TLS"
        for sql in ddl():
            one_ = conn.cursor()
            one_.execute(sql)
        conn.close()

    with step("parameters of common types"):
        conn = connect()
        args = (INT, TEXT, NUMERIC, BOOL, TS, psycopg2.Binary(BYTEA),
                psycopg2.extras.Json(JSON), ARRAY)
        check_types(one(conn, TYPES_SQL.format("%s"), args))
        conn.commit()

    with step("transaction with a savepoint rolled back"):
        with conn.cursor() as cur:
            cur.execute(f"INSERT INTO {TABLE} (id, note) VALUES (1, 'kept')")
            cur.execute("SAVEPOINT s1")
            cur.execute(f"INSERT INTO {TABLE} (id, note) VALUES (2, 'gone')")
            try:
                cur.execute("SELECT 1/0")
                raise AssertionError("1/0 succeeded")
            except psycopg2.errors.DivisionByZero:
                cur.execute("ROLLBACK TO SAVEPOINT s1")
        conn.commit()
        assert one(conn, f"SELECT array_agg(id ORDER BY id) FROM {TABLE}") == ([1],)
        conn.commit()

    with step("COPY in and out"):
        data = "".join(f"{i}\trow {i}\n" for i in range(100, 200))
        with conn.cursor() as cur:
            cur.copy_expert(f"COPY {TABLE} (id, note) FROM STDIN", io.StringIO(data))
            out = io.StringIO()
            cur.copy_expert(f"COPY (SELECT id, note FROM {TABLE} WHERE id >= 100 ORDER BY id) "
                            "TO STDOUT", out)
        conn.commit()
        assert out.getvalue() == data, out.getvalue()[:200]
        conn.close()

    with step("cancel a pg_sleep"):
        conn, watcher = connect(autocommit=True), connect(autocommit=True)
        caught: list[BaseException] = []

        def sleeper():
            try:
                one(conn, "SELECT pg_sleep(60) /* drivers-cancel */")
            except BaseException as e:  # noqa: BLE001
                caught.append(e)

        t = threading.Thread(target=sleeper)
        t.start()
        wait_for(lambda: one(watcher,
                             "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND "
                             "query LIKE '%drivers-cancel%' AND pid <> pg_backend_pid()")[0] == 1,
                 "the pg_sleep to run")
        conn.cancel()
        t.join(30)
        assert not t.is_alive(), "the cancelled query did not return"
        assert len(caught) == 1 and isinstance(caught[0], psycopg2.errors.QueryCanceled), caught
        assert one(conn, "SELECT 'after'") == ("after",)
        conn.close()
        watcher.close()

    with step("LISTEN/NOTIFY"):
        listener, notifier = connect(autocommit=True), connect(autocommit=True)
        listener.cursor().execute("LISTEN drivers_pg2")
        notifier.cursor().execute("NOTIFY drivers_pg2, 'hello from psycopg2'")
        deadline = time.monotonic() + 10
        while not listener.notifies:
            left = deadline - time.monotonic()
            assert left > 0, "no notification within 10 s"
            select.select([listener], [], [], left)
            listener.poll()
        assert [n.payload for n in listener.notifies] == ["hello from psycopg2"]
        listener.close()
        notifier.close()

    with step(f"{CLIENTS} concurrent clients"):
        def worker(w: int):
            c = connect()
            for i in range(12):
                with c.cursor() as cur:
                    cur.execute(f"INSERT INTO {TABLE} (id, note, worker) VALUES (%s, 'w', %s)",
                                (1000 + i, w))
                    cur.execute("SELECT %s + 1", (i,))
                    assert cur.fetchone() == (i + 1,)
                c.commit()
            c.close()

        in_threads(worker)
        c = connect()
        assert one(c, f"SELECT count(*) FROM {TABLE} WHERE note = 'w'") == (CLIENTS * 12,)
        c.close()


run(main)
