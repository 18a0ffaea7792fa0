"""Migration benchmarks against a source PostgreSQL started here, initialised with
`pgbench -i -s SCALE`:

- dump (default): time from the create call with `migration` to the migration status `done`;
- `lag`: a replication migration, then `pgbench -N -c 4 -T 30` on the source while the lag of
  the subscription's slot (`pg_current_wal_lsn() - confirmed_flush_lsn` on the source) is
  sampled every second.

    PGBAY_BIN=target/debug/pgbay .venv/bin/python bench/migration_dump.py [SCALE] [lag]
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import PgbayServer, psql_ok, unique, wait_service_running  # noqa: E402
from test_migration import PG_BIN, SourcePg  # noqa: E402
import subprocess  # noqa: E402


def lag(src: SourcePg, client, name: str) -> None:
    """Replication lag of `name`'s subscription under a pgbench write load on the source."""
    t0 = time.monotonic()
    client.create_dbaas_service_pg(name=name, plan="business-16",
                                   migration=src.migration(method="replication", dbname="bench"))
    while (st := client.get_dbaas_migration_status(name=name))["status"] == "running":
        time.sleep(0.5)
    assert st["status"] == "syncing", st
    print(f"replication: syncing (initial copy done) after {time.monotonic() - t0:.1f} s")
    load = subprocess.Popen([str(PG_BIN / "pgbench"), "-N", "-c", "4", "-j", "2", "-T", "30",
                             src.uri("bench")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    q = ("SELECT coalesce(max(pg_current_wal_lsn() - confirmed_flush_lsn), 0)::bigint "
         "FROM pg_replication_slots WHERE slot_name LIKE 'pgbay_%'")
    samples = []
    while load.poll() is None:
        samples.append(int(psql_ok(src.uri("bench"), q)[0]))
        time.sleep(1)
    out = load.stdout.read()
    tps = [line for line in out.splitlines() if line.startswith("tps")]
    samples.sort()
    print(f"pgbench -N -c 4 -T 30 on the source: {tps[0] if tps else out[-300:]}")
    print(f"slot lag over {len(samples)} samples: median {samples[len(samples) // 2] / 1024:.0f} KiB, "
          f"max {samples[-1] / 1024:.0f} KiB")
    t1 = time.monotonic()
    while int(psql_ok(src.uri("bench"), q)[0]) != 0:
        time.sleep(0.2)
    print(f"caught up {time.monotonic() - t1:.1f} s after the load ended")
    count = "SELECT count(*) FROM pgbench_history"
    print(f"pgbench_history rows: source {psql_ok(src.uri('bench'), count)[0]}")
    client.stop_dbaas_pg_migration(name=name)


def main() -> None:
    scale = int(sys.argv[1]) if len(sys.argv) > 1 else 70
    mode = sys.argv[2] if len(sys.argv) > 2 else "dump"
    src = SourcePg()
    try:
        psql_ok(src.uri(), "CREATE DATABASE bench")
        t0 = time.monotonic()
        subprocess.run([str(PG_BIN / "pgbench"), "-i", "-q", "-s", str(scale), src.uri("bench")],
                       check=True, capture_output=True)
        size = psql_ok(src.uri("bench"), "SELECT pg_size_pretty(pg_database_size('bench'))")[0]
        print(f"pgbench -i -s {scale}: {time.monotonic() - t0:.1f} s, database {size}")
        with PgbayServer("bench-migration") as srv:
            client = srv.client()
            name = unique("bench")
            if mode == "lag":
                lag(src, client, name)
                return
            t0 = time.monotonic()
            client.create_dbaas_service_pg(name=name, plan="business-16", migration=src.migration())
            wait_service_running(client, name)
            t_running = time.monotonic() - t0
            while (st := client.get_dbaas_migration_status(name=name))["status"] == "running":
                time.sleep(0.5)
            total = time.monotonic() - t0
            assert st["status"] == "done", st
            print(f"service running after {t_running:.1f} s; migration done after {total:.1f} s "
                  f"(copy {total - t_running:.1f} s)")
    finally:
        src.close()


if __name__ == "__main__":
    main()
