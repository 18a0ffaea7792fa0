#!/usr/bin/env python3
"""Failover of a business service (issue 17) as pooled clients see it, side by side in one run:
pgbay's own transaction pool, and PgBouncer 1.25.1 in front of the same Patroni pair with its host
pointed at the primary member (as users run it), each with one writer committing numbered rows
and five idle clients, while the primary's Patroni and postmaster are killed with SIGKILL.

Per run and per pooler: seconds from the last commit before the kill to the first commit after
it (the writer retries on the same connection, reconnecting only when it was closed), failed
transactions, idle clients whose next query failed, and acknowledged rows missing afterwards.
The same service is failed over N times (default 10): after each kill pgbay restarts the lost
member's Patroni (past its ttl) and it rejoins as a standby before the next run.

Usage: PGBAY_BIN=target/release/pgbay .venv/bin/python bench/failover_pooled.py [RUNS]
Needs PgBouncer 1.25.1 (../shared/peers/build-pgbouncer.sh; its path in PGBOUNCER_NEW, default
target/peers/pgbouncer-1.25.1/pgbouncer). Loopback only; everything it starts is stopped.
"""

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
os.environ.setdefault("PGBAY_BIN", str(Path("target/release/pgbay").resolve()))

from conftest import PgbayServer, ok, reveal, wait_service_running  # noqa: E402
from test_ha import master, patroni_pids, postmaster_of, roles, tx_pool, wait_for  # noqa: E402

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 10
WINDOW = 60.0  # seconds after the kill a writer keeps trying
BOUNCER = os.environ.get("PGBOUNCER_NEW", "target/peers/pgbouncer-1.25.1/pgbouncer")


class Writer:
    def __init__(self, uri: str, table: str):
        self.uri, self.table = uri, table
        self.acked: list[tuple[int, float]] = []
        self.failures = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        conn = None
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.uri, autocommit=True, connect_timeout=5)
                conn.execute(f"INSERT INTO {self.table} VALUES (%s)", (n,))
                self.acked.append((n, time.monotonic()))
            except psycopg.Error:
                self.failures += 1
                time.sleep(0.05)
                continue
            time.sleep(0.02)
        if conn is not None:
            conn.close()


def start_bouncer(workdir: Path, host: str, port: int, user: str, password: str) -> tuple:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    bport = s.getsockname()[1]
    s.close()
    (workdir / "userlist.txt").write_text(f'"{user}" "{password}"\n')
    os.chmod(workdir / "userlist.txt", 0o600)
    (workdir / "pgbouncer.ini").write_text(f"""[databases]
defaultdb = host={host} port={port} dbname=defaultdb
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {bport}
auth_type = scram-sha-256
auth_file = {workdir}/userlist.txt
pool_mode = transaction
default_pool_size = 4
server_tls_sslmode = require
logfile = {workdir}/pgbouncer.log
pidfile = {workdir}/pgbouncer.pid
""")
    os.chmod(workdir, 0o755)
    for f in workdir.iterdir():
        os.chown(f, 65534, 65534)
    os.chown(workdir, 65534, 65534)
    proc = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             BOUNCER, str(workdir / "pgbouncer.ini")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for("pgbouncer listening", 30, lambda: _accepts(bport))
    return proc, bport


def _accepts(port):
    import socket
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def _resumed_after_pause(w, killed):
    ts = [t for _, t in w.acked if t >= killed - 1.0]
    return any(b - a > 1.0 for a, b in zip(ts, ts[1:])) and ts[-1] > killed + 1.0


def one_run(srv, c, name, pool_uri, bouncer_uri):
    doc = wait_for("both members running", 300, lambda: (
        d := c.get_dbaas_service_pg(name=name),
        roles(d) == [("master", "running"), ("standby", "running")] and d)[1])
    old = master(doc)
    results = {}
    writers = {"pgbay": Writer(pool_uri, "w_pgbay")}
    if bouncer_uri:
        writers["pgbouncer-1.25.1"] = Writer(bouncer_uri, "w_bouncer")
    idle = {}
    for k, uri in [("pgbay", pool_uri), ("pgbouncer-1.25.1", bouncer_uri)]:
        if uri:
            idle[k] = [psycopg.connect(uri, autocommit=True) for _ in range(5)]
            for conn in idle[k]:
                conn.execute("SELECT 1")
    for w in writers.values():
        w.thread.start()
    wait_for("writes before the kill", 30, lambda: all(len(w.acked) >= 20 for w in writers.values()))
    fails_before = {k: w.failures for k, w in writers.items()}
    killed = time.monotonic()
    os.kill(patroni_pids(srv, name)[old], signal.SIGKILL)
    os.kill(postmaster_of(srv, name, old), signal.SIGKILL)
    deadline = killed + WINDOW
    while time.monotonic() < deadline:
        # Every writer committed again after a pause of at least a second (the failover).
        if all(_resumed_after_pause(w, killed) for w in writers.values()):
            break
        time.sleep(0.2)
    time.sleep(1.0)
    for w in writers.values():
        w.stop.set()
        w.thread.join(timeout=30)
    for k, w in writers.items():
        # The longest pause between two acknowledged commits from just before the kill on:
        # the outage (last commit before it to the first after it).
        around = [t for _, t in w.acked if t >= killed - 1.0]
        resumed = any(t > killed + 1.0 for t in around)
        gap = max((b - a for a, b in zip(around, around[1:])), default=None) if resumed else None
        dropped = 0
        for conn in idle[k]:
            try:
                conn.execute("SELECT 1")
            except psycopg.Error:
                dropped += 1
            conn.close()
        results[k] = {"gap": gap, "failed": w.failures - fails_before[k], "idle_dropped": dropped,
                      "acked": w.acked}
    # Acknowledged rows present afterwards (read through pgbay, which follows the primary).
    with psycopg.connect(pool_uri, autocommit=True) as conn:
        for k, table in [("pgbay", "w_pgbay"), ("pgbouncer-1.25.1", "w_bouncer")]:
            if k in results:
                have = {r[0] for r in conn.execute(f"SELECT n FROM {table}").fetchall()}
                results[k]["lost"] = len({n for n, _ in results[k]["acked"]} - have)
                conn.execute(f"TRUNCATE {table}")
    return results


def main():
    srv = PgbayServer("bench-failover")
    srv.start()
    procs = []
    try:
        c = srv.client()
        name = "bench-ha"
        ok(c, c.create_dbaas_service_pg(name=name, plan="business-4",
                                        synchronous_replication="quorum"))
        doc = wait_service_running(c, name, timeout=300)
        admin = doc["users"][0]["username"]
        password = reveal(c, name, admin)
        pool_uri = tx_pool(c, name, "app", size=4)
        with psycopg.connect(pool_uri, autocommit=True) as conn:
            conn.execute("CREATE TABLE w_pgbay (n int PRIMARY KEY)")
            conn.execute("CREATE TABLE w_bouncer (n int PRIMARY KEY)")
        rows = []
        for i in range(RUNS):
            doc = wait_for("both members running", 300, lambda: (
                d := c.get_dbaas_service_pg(name=name),
                roles(d) == [("master", "running"), ("standby", "running")] and d)[1])
            bouncer_uri = None
            if os.access(BOUNCER, os.X_OK):
                port = master_port(srv, c, name)
                work = Path(tempfile.mkdtemp(prefix="bench-bouncer-"))
                proc, bport = start_bouncer(work, "127.0.0.1", port, admin, password)
                procs.append(proc)
                bouncer_uri = f"postgres://{admin}:{password}@127.0.0.1:{bport}/defaultdb?sslmode=disable"
            r = one_run(srv, c, name, pool_uri, bouncer_uri)
            if bouncer_uri:
                proc.terminate()
                proc.wait(timeout=30)
            rows.append(r)
            print(f"run {i + 1}: " + "; ".join(
                f"{k}: gap={v['gap'] if v['gap'] is None else round(v['gap'], 2)} s "
                f"failed={v['failed']} idle_dropped={v['idle_dropped']}/5 lost={v['lost']}"
                for k, v in r.items()), flush=True)
        print("\n| pooler | runs | median gap (s) | max gap (s) | resumed | failed txns (median) | idle clients dropped (median, of 5) | acked rows lost |")
        print("|---|---|---|---|---|---|---|---|")
        for k in rows[0]:
            gaps = [r[k]["gap"] for r in rows if r[k]["gap"] is not None]
            print(f"| {k} | {len(rows)} | {statistics.median(gaps):.2f} | {max(gaps):.2f} | "
                  f"{len(gaps)}/{len(rows)} | {statistics.median(r[k]['failed'] for r in rows)} | "
                  f"{statistics.median(r[k]['idle_dropped'] for r in rows)} | "
                  f"{sum(r[k]['lost'] for r in rows)} |" if gaps else
                  f"| {k} | {len(rows)} | never within {WINDOW:.0f} s | – | 0/{len(rows)} | "
                  f"{statistics.median(r[k]['failed'] for r in rows)} | "
                  f"{statistics.median(r[k]['idle_dropped'] for r in rows)} | "
                  f"{sum(r[k]['lost'] for r in rows)} |")
    finally:
        for p in procs:
            with contextlib.suppress(Exception):
                p.kill()
        srv.close()


def master_port(srv, c, name):
    """The master member's PostgreSQL port, from its Patroni YAML (members/<i>/patroni.yml)."""
    import re

    m = master(c.get_dbaas_service_pg(name=name))
    idx = int(m.rsplit("-", 1)[1]) - 1
    yml = (srv.data_dir / "services" / name / "members" / str(idx) / "patroni.yml").read_text()
    # The last `listen:` is PostgreSQL's (the first is Patroni's REST API).
    return int(re.findall(r'^  listen: "[^"]*:(\d+)"', yml, re.M)[-1])


if __name__ == "__main__":
    main()
