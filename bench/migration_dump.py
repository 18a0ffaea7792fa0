"""Dump-migration time of a pgbench database: a source PostgreSQL (started here) initialised with
`pgbench -i -s SCALE`, a pgbay service created with `migration` from it, and the time from the
create call to the migration status `done`. Usage:

    PGBAY_BIN=target/release/pgbay .venv/bin/python bench/migration_dump.py [SCALE]
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import PgbayServer, psql_ok, unique, wait_service_running  # noqa: E402
from test_migration import PG_BIN, SourcePg  # noqa: E402
import subprocess  # noqa: E402


def main() -> None:
    scale = int(sys.argv[1]) if len(sys.argv) > 1 else 70
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
