#!/usr/bin/env python3
"""pgbench TPS through a transaction pool with WAL archiving on and off, and the archive's
throughput (issue 18), side by side in one run.

Each mode runs its own pgbay: "on" as users run it (every service archives its WAL with
pgBackRest, asynchronous archive-push), "off" with pgBackRest hidden from pgbay's PATH (pgbay
then runs services without archiving, as on a machine without the package). In each: a
startup-4 service, `pgbench -i -s SCALE` through the service URI, then `pgbench -N` (the
TPC-B-like script without the hot branch/teller updates, so that WAL volume, not row locks,
bounds it) with CLIENTS clients for DURATION seconds through a transaction pool of 20 over TLS
(`sslmode=require`), each from a fresh CHECKPOINT. Read from PostgreSQL around the run: WAL written (pg_current_wal_lsn) and
WAL archived (pg_stat_archiver.archived_count × 16 MiB), and how far the archive was behind at
the end.

Usage: PGBAY_BIN=target/release/pgbay .venv/bin/python bench/archiving_tps.py
       (env SCALE=10 CLIENTS=20 DURATION=30). Loopback only; everything started is stopped.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
os.environ.setdefault("PGBAY_BIN", str(Path("target/release/pgbay").resolve()))

import psycopg  # noqa: E402

from conftest import PgbayServer, find_pool, ok, provision  # noqa: E402

SCALE = int(os.environ.get("SCALE", "10"))
CLIENTS = int(os.environ.get("CLIENTS", "20"))
DURATION = int(os.environ.get("DURATION", "30"))
SEGMENT = 16 * 1024 * 1024


def path_without_pgbackrest(tmp: Path) -> str:
    """A PATH on which every program of the usual PATH is found except pgbackrest."""
    shim = tmp / "bin"
    shim.mkdir(parents=True)
    seen = set()
    for d in os.environ["PATH"].split(":"):
        p = Path(d)
        if not p.is_dir():
            continue
        for prog in p.iterdir():
            if prog.name == "pgbackrest" or prog.name in seen:
                continue
            seen.add(prog.name)
            try:
                (shim / prog.name).symlink_to(prog)
            except OSError:
                pass
    return str(shim)


def pgbench(args, uri, env=None):
    u = urlsplit(uri)
    e = dict(os.environ, PGPASSWORD=u.password or "", PGSSLMODE="require", **(env or {}))
    cmd = ["pgbench", "-h", u.hostname, "-p", str(u.port), "-U", u.username, *args,
           u.path.lstrip("/")]
    return subprocess.run(cmd, env=e, capture_output=True, text=True, check=True).stdout


def one(mode: str, tmp: Path) -> dict:
    env = {}
    if mode == "off":
        env["PATH"] = path_without_pgbackrest(tmp)
    srv = PgbayServer(f"bench-arch-{mode}", env=env)
    srv.start()
    try:
        c = srv.client()
        svc = provision(c, f"arch-{mode}", plan="startup-4")
        pgbench(["-i", "-q", "-s", str(SCALE)], svc.uri)
        ok(c, c.create_dbaas_pg_connection_pool(
            service_name=svc.name, name="tx", database_name="defaultdb", mode="transaction",
            size=20))
        pool_uri = find_pool(c.get_dbaas_service_pg(name=svc.name), "tx")["connection-uri"]
        with psycopg.connect(svc.uri, autocommit=True) as conn:
            mode_now = conn.execute("SHOW archive_mode").fetchone()[0]
            # The load's WAL alone: the archive first catches up with what came before.
            if mode_now == "on":
                t0 = time.monotonic()
                while time.monotonic() - t0 < 120 and not conn.execute(
                        "SELECT last_archived_wal >= pg_walfile_name(pg_current_wal_lsn() - "
                        "16777216) FROM pg_stat_archiver").fetchone()[0]:
                    time.sleep(0.5)
            # Both modes start from a checkpoint (the first backup's made one in "on" only), so
            # that both write the same full-page images.
            conn.execute("CHECKPOINT")
            lsn0, arch0 = conn.execute(
                "SELECT pg_current_wal_lsn(), archived_count FROM pg_stat_archiver").fetchone()
            out = pgbench(["-N", "-c", str(CLIENTS), "-j", "2", "-T", str(DURATION)], pool_uri)
            wal = conn.execute("SELECT pg_current_wal_lsn() - %s::pg_lsn", (lsn0,)).fetchone()[0]
            arch1 = conn.execute("SELECT archived_count FROM pg_stat_archiver").fetchone()[0]
            # How long the archive takes to catch up with what was written by the end.
            t0 = time.monotonic()
            behind_segments = max(0, int(wal) // SEGMENT - (arch1 - arch0))
            if mode_now == "on":
                target = arch0 + int(wal) // SEGMENT
                while conn.execute("SELECT archived_count FROM pg_stat_archiver").fetchone()[0] \
                        < target and time.monotonic() - t0 < 120:
                    time.sleep(0.2)
            catch_up = time.monotonic() - t0
        tps = float(re.search(r"tps = ([\d.]+)", out).group(1))
        return {
            "mode": mode,
            "archive_mode": mode_now,
            "tps": tps,
            "wal_mib_s": int(wal) / DURATION / 2**20,
            "archived_mib_s": (arch1 - arch0) * SEGMENT / DURATION / 2**20,
            "behind": behind_segments if mode_now == "on" else "–",
            "catch_up": catch_up,
        }
    finally:
        srv.close()


def main():
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)
        for mode in ("on", "off"):
            r = one(mode, Path(tmp) / mode)
            print(r, flush=True)
            results.append(r)
    print(f"\npgbench -N, {CLIENTS} clients, {DURATION} s, scale {SCALE}, transaction pool of 20, "
          "TLS\n")
    print("| archiving | archive_mode | TPS | WAL written MiB/s | WAL archived during the run "
          "MiB/s | segments behind at the end | caught up after |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['mode']} | {r['archive_mode']} | {r['tps']:.0f} | {r['wal_mib_s']:.2f} | "
              f"{r['archived_mib_s']:.2f} | {r['behind']} | {r['catch_up']:.1f} s |")


if __name__ == "__main__":
    if shutil.which("pgbackrest") is None:
        raise SystemExit("pgbackrest is not installed (Debian package `pgbackrest`)")
    main()
