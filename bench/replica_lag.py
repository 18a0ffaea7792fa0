#!/usr/bin/env python3
"""Read replica lag under a write load (issue 19): a hobbyist-2 source with pgbench scale 5, a
read replica of it, then `pgbench -c 4 -T 20` (TPC-B-like writes) against the source while the
source's `pg_stat_replication` is sampled every second (replay lag in bytes and time), and the
time from a commit on the source to its row being visible on the replica is measured 20 times
after the load.

Usage: PGBAY_BIN=target/release/pgbay .venv/bin/python bench/replica_lag.py
"""

import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
os.environ.setdefault("PGBAY_BIN", str(Path("target/release/pgbay").resolve()))

from conftest import PgbayServer, ok, provision, wait_service_running  # noqa: E402


def main():
    srv = PgbayServer("bench-replica")
    srv.start()
    try:
        c = srv.client()
        src = provision(c, "bench-src", plan="hobbyist-2")
        subprocess.run(["pgbench", "-i", "-q", "-s", "5", src.uri], check=True,
                       capture_output=True)
        t0 = time.monotonic()
        ok(c, c.create_dbaas_service_pg(name="bench-rep", plan="hobbyist-2", integrations=[
            {"type": "read_replica", "source-service": "bench-src"}]))
        rep = wait_service_running(c, "bench-rep")["uri"]
        made = time.monotonic() - t0
        samples = []
        stop = threading.Event()

        def sample():
            with psycopg.connect(src.uri, autocommit=True) as conn:
                while not stop.is_set():
                    row = conn.execute(
                        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), "
                        "extract(epoch FROM replay_lag) FROM pg_stat_replication "
                        "WHERE application_name = 'bench-rep'").fetchone()
                    if row:
                        samples.append((int(row[0] or 0), float(row[1] or 0.0)))
                    time.sleep(1.0)

        t = threading.Thread(target=sample)
        t.start()
        out = subprocess.run(["pgbench", "-c", "4", "-j", "2", "-T", "20", src.uri],
                             check=True, capture_output=True, text=True).stdout
        stop.set()
        t.join()
        tps = [line for line in out.splitlines() if line.startswith("tps")]
        visible = []
        with psycopg.connect(src.uri, autocommit=True) as s, \
                psycopg.connect(rep, autocommit=True) as r:
            s.execute("CREATE TABLE probe (n int)")
            for i in range(20):
                t1 = time.monotonic()
                s.execute("INSERT INTO probe VALUES (%s)", (i,))
                while r.execute("SELECT count(*) FROM probe WHERE n = %s",
                                (i,)).fetchone()[0] == 0:
                    time.sleep(0.001)
                visible.append(time.monotonic() - t1)
        lag_bytes = [b for b, _ in samples]
        lag_time = [t for _, t in samples]
        print(f"replica created and running in {made:.1f} s (scale 5 source)")
        print(f"pgbench on the source: {tps}")
        print(f"replay lag during the load ({len(samples)} samples): bytes median "
              f"{statistics.median(lag_bytes):.0f} max {max(lag_bytes)}; seconds median "
              f"{statistics.median(lag_time):.3f} max {max(lag_time):.3f}")
        print(f"commit on the source -> visible on the replica (20 probes after the load): "
              f"median {statistics.median(visible) * 1000:.1f} ms, max {max(visible) * 1000:.1f} ms")
    finally:
        srv.close()


if __name__ == "__main__":
    main()
