#!/usr/bin/env python3
"""Times what moves data (issues 16, 18, 19) on one pgbay, side by side in one run:

- the first full backup of a service holding pgbench scale S (default 70, about 1 GB);
- a fork of it to the latest state, and to a point in time (create call → running);
- the rebuild drill (pgbay stopped, the data directory removed, pgbay started → running);
- a dump migration of the same database into a new service (create → migration done);
- pgbench TPS through a transaction pool while the WAL is archived (every service archives);
- a takeover (a second `pgbay serve` on the same data dir) under `pgbench -C`: failed
  transactions and the longest connection time.

Usage: PGBAY_BIN=target/release/pgbay .venv/bin/python bench/data_in_motion.py [SCALE]
Prints a Markdown table for bench/RESULTS.md. Loopback only; everything it starts is stopped.
"""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
os.environ.setdefault("PGBAY_BIN", str(Path("target/release/pgbay").resolve()))

from conftest import (  # noqa: E402
    API_KEY,
    API_SECRET,
    PgbayServer,
    find_pool,
    ok,
    provision,
    signed,
    wait_service_running,
)

SCALE = int(sys.argv[1]) if len(sys.argv) > 1 else 70
rows = []


def row(what, seconds, note=""):
    rows.append((what, f"{seconds:.1f} s" if isinstance(seconds, float) else seconds, note))
    print(f"{what}: {rows[-1][1]} {note}", flush=True)


def wait(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {what}")
        time.sleep(0.2)


def main():
    srv = PgbayServer("bench-motion")
    srv.start()
    try:
        c = srv.client()
        svc = provision(c, "bench-src", plan="startup-4")
        wait(lambda: c.get_dbaas_service_pg(name=svc.name)["backups"], 120, "first backup")
        t0 = time.monotonic()
        subprocess.run(["pgbench", "-i", "-q", "-s", str(SCALE), svc.uri], check=True,
                       capture_output=True)
        row(f"pgbench -i -s {SCALE} (WAL archived meanwhile)", time.monotonic() - t0)
        size = subprocess.run(["psql", svc.uri, "-Atc", "SELECT pg_database_size('defaultdb')"],
                              capture_output=True, text=True, check=True).stdout.strip()
        row("database size", f"{int(size) / 2**20:.0f} MiB")

        # The loaded database's full backup is timed on the fork's first one (same size).
        t0 = time.monotonic()
        name = "bench-fork-latest"
        ok(c, c.create_dbaas_service_pg(name=name, plan="startup-4", fork_from_service=svc.name))
        wait_service_running(c, name, timeout=1800)
        row(f"fork to the latest state ({int(size) / 2**20:.0f} MiB)", time.monotonic() - t0)
        wait(lambda: re.findall(r"full backup taken service=bench-fork-latest seconds=([0-9.]+)",
                                srv.log_text()), 1800, "the fork's first backup")
        m = re.findall(r"full backup taken service=bench-fork-latest seconds=([0-9.]+)",
                       srv.log_text())
        row(f"full backup of {int(size) / 2**20:.0f} MiB (the fork's first)", float(m[-1]))

        pit = subprocess.run(["psql", svc.uri, "-Atc", "SELECT now()"], capture_output=True,
                             text=True, check=True).stdout.strip()
        t0 = time.monotonic()
        ok(c, c.create_dbaas_service_pg(name="bench-fork-pit", plan="startup-4",
                                        fork_from_service=svc.name,
                                        recovery_backup_time=pit.replace(" ", "T")))
        wait_service_running(c, "bench-fork-pit", timeout=1800)
        row("fork to a point in time", time.monotonic() - t0)

        # The rebuild drill.
        srv.stop()
        shutil.rmtree(srv.data_dir / "services" / svc.name / "pgdata")
        t0 = time.monotonic()
        srv.start()
        c = srv.client()
        wait_service_running(c, svc.name, timeout=1800)
        row("rebuild drill (start → running)", time.monotonic() - t0)

        # Dump migration of the same database into a new service.
        t0 = time.monotonic()
        ok(c, c.create_dbaas_service_pg(name="bench-mig", plan="startup-4", migration={
            "host": "127.0.0.1", "port": svc.pg_port, "username": svc.admin_user,
            "password": svc.admin_password, "dbname": "defaultdb", "ssl": True}))
        def done():
            st = signed(srv, "GET", "/dbaas-migration-status/bench-mig").json()
            if st["status"] == "failed":
                raise SystemExit(f"migration failed: {st}")
            return st["status"] == "done"
        wait(done, 3600, "dump migration")
        row("dump migration (create → done)", time.monotonic() - t0)

        # TPS through a transaction pool while archiving.
        ok(c, c.create_dbaas_pg_connection_pool(service_name=svc.name, name="tx",
                                                database_name="defaultdb", mode="transaction",
                                                size=20, username=svc.admin_user))
        uri = find_pool(c.get_dbaas_service_pg(name=svc.name), "tx")["connection-uri"]
        out = subprocess.run(["pgbench", "-n", "-c", "20", "-j", "2", "-T", "30", uri],
                             capture_output=True, text=True).stdout
        tps = re.search(r"tps = ([0-9.]+)", out)
        row("pgbench tpcb-like, 20 clients, through the pool, archiving on",
            f"{float(tps.group(1)):.0f} TPS" if tps else "n/a")

        # Takeover under pgbench -C.
        bench = subprocess.Popen(["pgbench", "-n", "-C", "-S", "-c", "4", "-T", "20", uri],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(5)
        succ = subprocess.Popen(list(srv.proc.args), env={
            **os.environ, "PGBAY_API_KEY": API_KEY, "PGBAY_API_SECRET": API_SECRET},
            stdout=open(srv.log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        srv.proc.wait(timeout=120)
        srv.proc = succ
        out, err = bench.communicate(timeout=120)
        failed = re.search(r"number of failed transactions: (\d+)", out)
        lat = re.search(r"average connection time = ([0-9.]+) ms", out)
        row("takeover under pgbench -C -S -c 4", "",
            f"failed transactions {failed.group(1) if failed else '?'}, "
            f"avg connection time {lat.group(1) if lat else '?'} ms, errors: "
            f"{len([line for line in err.splitlines() if 'error' in line.lower()])}")
    finally:
        srv.close()
    print("\n| what | time | note |\n|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")


if __name__ == "__main__":
    main()
