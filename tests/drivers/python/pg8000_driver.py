"""pg8000 (pure Python; the driver of Google's and AWS's Python connectors) through a pgbay
transaction pool, on its native API. A `run` with parameters is an unnamed Parse/Bind/Execute;
`prepare` makes a named statement (`pg8000_statement_N`) that `close` closes with a
protocol-level Close. pg8000 has no cancel request and reads notifications only while it runs
a query, so the listener polls with one. Run by tests/test_drivers.py."""

from __future__ import annotations

import io
import ssl
import time

import pg8000.native

from common import (ARRAY, BOOL, BYTEA, CA, CLIENTS, DB, HOST, INT, JSON, NUMERIC, PASSWORD, PORT,
                    TABLE, TEXT, TS, USER, check_types, ddl, in_threads, run, step)


def connect() -> pg8000.native.Connection:
    tls = ssl.create_default_context(cafile=CA)  # verify-full: the chain and the host name
    return pg8000.native.Connection(USER, host=HOST, port=PORT, database=DB, password=PASSWORD,
                                    ssl_context=tls, timeout=30)


def sqlstate(e: pg8000.native.DatabaseError) -> str | None:
    return e.args[0].get("C") if e.args and isinstance(e.args[0], dict) else None


def main() -> None:
    with step("connect over TLS verify-full"):
        conn = connect()
        for sql in ddl():
            conn.run(sql)

    with step("parameters of common types"):
        for _ in range(6):
            rows = conn.run("SELECT :i::int, :t::text, :n::numeric, :b::bool, :ts::timestamptz, "
                            ":raw::bytea, :j::json, :a::int[]", i=INT, t=TEXT, n=NUMERIC, b=BOOL,
                            ts=TS, raw=BYTEA, j=JSON, a=ARRAY)
            check_types(rows[0])

    with step("statements prepared and closed (ten distinct, three rounds)"):
        for rnd in range(3):
            for q in range(10):
                ps = conn.prepare(f"SELECT :v::int + {q}")
                assert ps.run(v=rnd) == [[rnd + q]]
                ps.close()

    with step("transaction with a savepoint rolled back"):
        conn.run("START TRANSACTION")
        conn.run(f"INSERT INTO {TABLE} (id, note) VALUES (:id, 'kept')", id=1)
        conn.run("SAVEPOINT s1")
        conn.run(f"INSERT INTO {TABLE} (id, note) VALUES (:id, 'gone')", id=2)
        try:
            conn.run("SELECT 1/0")
            raise AssertionError("1/0 succeeded")
        except pg8000.native.DatabaseError as e:
            assert sqlstate(e) == "22012", e
        conn.run("ROLLBACK TO SAVEPOINT s1")
        conn.run("COMMIT")
        assert conn.run(f"SELECT array_agg(id ORDER BY id) FROM {TABLE}") == [[[1]]]

    with step("COPY in and out"):
        data = "".join(f"{i}\trow {i}\n" for i in range(100, 200))
        conn.run(f"COPY {TABLE} (id, note) FROM STDIN", stream=io.StringIO(data))
        out = io.StringIO()
        conn.run(f"COPY (SELECT id, note FROM {TABLE} WHERE id >= 100 ORDER BY id) TO STDOUT",
                 stream=out)
        assert out.getvalue() == data, out.getvalue()[:200]
        conn.close()

    with step("LISTEN/NOTIFY"):
        listener, notifier = connect(), connect()
        listener.run("LISTEN drivers_pg8000")
        notifier.run("NOTIFY drivers_pg8000, 'hello from pg8000'")
        deadline = time.monotonic() + 10
        while not listener.notifications:
            assert time.monotonic() < deadline, "no notification within 10 s"
            listener.run("SELECT 1")  # pg8000 reads notifications with a query's answers
            time.sleep(0.05)
        assert [n[2] for n in listener.notifications] == ["hello from pg8000"]
        listener.close()
        notifier.close()

    with step(f"{CLIENTS} concurrent clients"):
        def worker(w: int):
            c = connect()
            for i in range(12):
                c.run("START TRANSACTION")
                c.run(f"INSERT INTO {TABLE} (id, note, worker) VALUES (:id, 'w', :w)",
                      id=1000 + i, w=w)
                assert c.run("SELECT :i::int + 1", i=i) == [[i + 1]]
                c.run("COMMIT")
            c.close()

        in_threads(worker)
        c = connect()
        assert c.run(f"SELECT count(*) FROM {TABLE} WHERE note = 'w'") == [[CLIENTS * 12]]
        c.close()


run(main)
