"""psycopg 3 on its default settings (prepare_threshold 5), and SQLAlchemy 2 on top of it, through
a pgbay transaction pool. Run by tests/test_drivers.py; exits non-zero naming the failed step."""

from __future__ import annotations

import threading

import psycopg
import sqlalchemy as sa
from psycopg import errors

from common import (CA, CLIENTS, DB, HOST, PASSWORD, PORT, TABLE, TYPES_SQL, USER, ARRAY, BOOL,
                    BYTEA, INT, JSON, NUMERIC, TEXT, TS, check_types, ddl, in_threads, run, step, wait_for)

KW = dict(host=HOST, port=PORT, dbname=DB, user=USER, password=PASSWORD, sslmode="verify-full",
          sslrootcert=CA, connect_timeout=10)


def connect(**kw) -> psycopg.Connection:
    return psycopg.connect(**KW, **kw)


def main() -> None:
    with step("connect over TLS verify-full"), connect(autocommit=True) as conn:
        assert conn.pgconn.ssl_in_use, "not TLS"
        for sql in ddl():
            conn.execute(sql)

    with step("parameters of common types (text and binary)"), connect() as conn:
        args = (INT, TEXT, NUMERIC, BOOL, TS, BYTEA, psycopg.types.json.Json(JSON), ARRAY)
        for binary in (False, True):
            for _ in range(7):  # past the prepare threshold: unprepared, then prepared
                check_types(conn.execute(TYPES_SQL.format("%s"), args, binary=binary).fetchone())
        conn.commit()

    with step("statement cache eviction (prepared_max 2, five queries)"), connect() as conn:
        conn.prepared_max = 2
        for round_ in range(3):
            for q in range(5):
                for _ in range(6):
                    row = conn.execute(f"SELECT %s::int + {q}", (round_,)).fetchone()
                    assert row == (round_ + q,), row
        conn.commit()

    with step("explicit prepare=True, and an unprepared statement"), connect() as conn:
        for i in range(3):
            assert conn.execute("SELECT %s::text || 'x'", (str(i),), prepare=True).fetchone() == \
                (f"{i}x",)
            assert conn.execute("SELECT %s::int * 2", (i,), prepare=False).fetchone() == (2 * i,)
        conn.commit()

    with step("transaction with a savepoint rolled back"), connect() as conn:
        with conn.transaction():
            conn.execute(f"INSERT INTO {TABLE} (id, note) VALUES (1, 'kept')")
            try:
                with conn.transaction():
                    conn.execute(f"INSERT INTO {TABLE} (id, note) VALUES (2, 'rolled back')")
                    conn.execute("SELECT 1/0")
            except errors.DivisionByZero:
                pass
        assert conn.execute(f"SELECT array_agg(id ORDER BY id) FROM {TABLE}").fetchone() == \
            ([1],)
        conn.commit()

    with step("COPY in and out"), connect() as conn:
        with conn.cursor() as cur:
            with cur.copy(f"COPY {TABLE} (id, note) FROM STDIN") as copy:
                for i in range(100, 200):
                    copy.write_row((i, f"row {i}"))
            rows = []
            with cur.copy(f"COPY (SELECT id, note FROM {TABLE} WHERE id >= 100 ORDER BY id) "
                          "TO STDOUT") as copy:
                rows = list(copy.rows())
        conn.commit()
        assert len(rows) == 100 and rows[0] == ("100", "row 100"), rows[:2]

    with step("cancel a pg_sleep"), connect(autocommit=True) as conn, \
            connect(autocommit=True) as watcher:
        failure: list[BaseException] = []

        def sleeper():
            try:
                conn.execute("SELECT pg_sleep(60) /* drivers-cancel */")
                failure.append(AssertionError("pg_sleep(60) was not cancelled"))
            except errors.QueryCanceled:
                pass
            except BaseException as e:  # noqa: BLE001
                failure.append(e)

        t = threading.Thread(target=sleeper)
        t.start()
        wait_for(lambda: watcher.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE "
            "'%drivers-cancel%' AND pid <> pg_backend_pid()").fetchone()[0] == 1,
            "the pg_sleep to run")
        conn.cancel_safe(timeout=10)
        t.join(30)
        assert not t.is_alive(), "the cancelled query did not return"
        if failure:
            raise failure[0]
        assert conn.execute("SELECT 'after cancel'").fetchone() == ("after cancel",)

    with step("LISTEN/NOTIFY"), connect(autocommit=True) as listener, \
            connect(autocommit=True) as notifier:
        listener.execute("LISTEN drivers_py")
        notifier.execute("NOTIFY drivers_py, 'hello from psycopg'")
        got = list(listener.notifies(timeout=10, stop_after=1))
        assert [n.payload for n in got] == ["hello from psycopg"], got

    with step(f"{CLIENTS} concurrent clients"):
        def worker(w: int):
            with connect() as c:
                for i in range(12):
                    with c.transaction():
                        c.execute(f"INSERT INTO {TABLE} (id, note, worker) VALUES (%s, %s, %s)",
                                  (1000 + i, "w", w))
                        assert c.execute("SELECT %s::int + 1", (i,)).fetchone() == (i + 1,)
                c.execute("SELECT %s::int", (w,))
                c.rollback()

        in_threads(worker)
        with connect() as c:
            n = c.execute(f"SELECT count(*) FROM {TABLE} WHERE note = 'w'").fetchone()[0]
            assert n == CLIENTS * 12, n

    with step("executemany, and pipelines with an error and with prepared statements"), \
            connect() as conn:
        with conn.cursor() as cur:  # executemany runs in pipeline mode
            cur.executemany(f"INSERT INTO {TABLE} (id, note) VALUES (%s, %s)",
                            [(300 + i, f"many {i}") for i in range(50)])
        conn.commit()
        n = conn.execute(f"SELECT count(*) FROM {TABLE} WHERE note LIKE 'many %'").fetchone()[0]
        assert n == 50, n
        conn.commit()
        try:
            with conn.pipeline():
                conn.execute(f"INSERT INTO {TABLE} (id, note) VALUES (%s, 'pipe')", (400,))
                conn.execute("SELECT 1/0")
                conn.execute(f"INSERT INTO {TABLE} (id, note) VALUES (%s, 'pipe')", (401,))
            raise AssertionError("1/0 succeeded")
        except errors.DivisionByZero:
            pass
        conn.rollback()
        n = conn.execute(f"SELECT count(*) FROM {TABLE} WHERE note = 'pipe'").fetchone()[0]
        assert n == 0, n
        with conn.pipeline():  # the sixth execution on is prepared, in the pipeline
            curs = [conn.execute("SELECT %s::int * 2", (i,)) for i in range(10)]
        assert [c.fetchone()[0] for c in curs] == [i * 2 for i in range(10)]
        conn.commit()

    # Last: what fails on a pooler that refuses DEALLOCATE ALL / DISCARD ALL (issue 20).
    with step("six executions then rollback (psycopg's DEALLOCATE ALL)"), connect() as conn:
        for i in range(6):
            assert conn.execute("SELECT %s::int", (i,)).fetchone() == (i,)
        conn.rollback()
        assert conn.execute("SELECT %s::int", (7,)).fetchone() == (7,)
        conn.rollback()

    with step("DISCARD ALL through a cursor"), connect(autocommit=True) as conn:
        for i in range(6):
            conn.execute("SELECT %s::int", (i,))
        conn.execute("DISCARD ALL")
        for i in range(6):
            assert conn.execute("SELECT %s::int", (i,)).fetchone() == (i,)

    with step("SQLAlchemy: a query six times per checkout, returned without commit"):
        engine = sa.create_engine("postgresql+psycopg://", creator=connect, pool_size=CLIENTS,
                                  max_overflow=0)
        def sa_worker(w: int):
            for _ in range(3):
                with engine.connect() as c:
                    for i in range(6):
                        v = c.execute(sa.text("SELECT CAST(:v AS int) + 1"), {"v": i}).scalar()
                        assert v == i + 1, v
                with engine.begin() as c:
                    c.execute(sa.text(f"INSERT INTO {TABLE} (id, note, worker) "
                                      "VALUES (:i, 'sa', :w)"), {"i": w, "w": w})

        in_threads(sa_worker)
        with engine.connect() as c:
            n = c.execute(sa.text(f"SELECT count(*) FROM {TABLE} WHERE note = 'sa'")).scalar()
            assert n == CLIENTS * 3, n
        engine.dispose()


run(main)
