"""Latency from the create-pool call to a served client, on a running service.

    .venv/bin/python bench/pool_latency.py [N]      # N pools (default 30)

Starts `pgbay serve` (PGBAY_BIN, default target/release/pgbay: build it first with
`cargo build --release -p pgbay`) on a temp data dir, provisions one service, then N times: create a
pool with the official `exoscale` client (the call returns once the operation succeeded), connect
to its `connection-uri` with psycopg (TLS, sslmode=require) and run `SELECT 1`. Reports the create
call alone, and create call + first served query, as median / p90 / max in milliseconds.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("PGBAY_BIN", str(REPO / "target" / "release" / "pgbay"))

import psycopg  # noqa: E402

from conftest import PgbayServer, find_pool, ok, provision  # noqa: E402


def summary(ms: list[float]) -> str:
    s = sorted(ms)
    p90 = s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))]
    return f"median {statistics.median(s):.1f} ms, p90 {p90:.1f} ms, max {s[-1]:.1f} ms"


def main(n: int) -> None:
    srv = PgbayServer("bench-latency")
    try:
        srv.start()
        c = srv.client()
        svc = provision(c, "latency")
        create_ms, served_ms = [], []
        for i in range(n):
            name = f"pool-{i}"
            t0 = time.perf_counter()
            op = c.create_dbaas_pg_connection_pool(service_name=svc.name, name=name,
                                                   database_name="defaultdb", size=5)
            t1 = time.perf_counter()
            assert op["state"] == "success", op
            # The URI comes from the service view; fetching it is part of what a user does, but it
            # is taken out of the measured time (it is the API's read path, not the pool's start).
            uri = find_pool(c.get_dbaas_service_pg(name=svc.name), name)["connection-uri"]
            t2 = time.perf_counter()
            with psycopg.connect(uri, autocommit=True) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
            t3 = time.perf_counter()
            ok(c, op)
            create_ms.append((t1 - t0) * 1000)
            served_ms.append(((t1 - t0) + (t3 - t2)) * 1000)
        print(f"pgbay binary: {os.environ['PGBAY_BIN']}")
        print(f"{n} pools on one running service")
        print(f"create call (operation success):       {summary(create_ms)}")
        print(f"create call + first query served:      {summary(served_ms)}")
    finally:
        srv.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
