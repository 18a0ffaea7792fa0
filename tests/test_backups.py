"""Backups with pgBackRest (issue 18): every local cluster archives its WAL into a repository of
its own (mode 0700, its OS user's), a new service gets a full backup as soon as it runs, the
service document lists pgBackRest's own record of it, shows the service's daily
`backup-schedule`, and a deleted service's repository goes with it.
"""

import os
import shutil
import stat
import time

import psycopg
import pytest

from conftest import PgbayServer, ok, provision, unique

pytestmark = pytest.mark.skipif(shutil.which("pgbackrest") is None,
                                reason="pgbackrest is not installed (.ci/run installs it)")


@pytest.fixture(scope="module")
def node():
    srv = PgbayServer("backups")
    try:
        srv.start()
        yield srv
    finally:
        srv.close()


def wait_for_backup(client, name, timeout=120.0):
    deadline = time.monotonic() + timeout
    while True:
        svc = client.get_dbaas_service_pg(name=name)
        if svc["backups"]:
            return svc
        if time.monotonic() > deadline:
            raise AssertionError(f"no backup listed after {timeout}s: {svc['backups']}")
        time.sleep(0.5)


def test_a_new_service_is_archived_and_backed_up_at_once(node):
    c = node.client()
    svc = provision(c, unique("bk"), plan="hobbyist-2")
    doc = wait_for_backup(c, svc.name)
    [b] = doc["backups"]
    assert b["backup-name"].endswith("F"), b  # pgBackRest's label of a full backup
    assert b["backup-time"].endswith("Z") and b["data-size"] > 1_000_000, b
    sched = doc["backup-schedule"]
    assert 0 <= sched["backup-hour"] < 24 and 0 <= sched["backup-minute"] < 60
    # The same schedule every time it is read.
    assert c.get_dbaas_service_pg(name=svc.name)["backup-schedule"] == sched

    # WAL is archived: the backup itself made PostgreSQL archive segments, none failed.
    with psycopg.connect(svc.uri, autocommit=True) as conn:
        archived, failed = conn.execute(
            "SELECT archived_count, failed_count FROM pg_stat_archiver").fetchone()
        assert archived >= 1 and failed == 0, (archived, failed)
        assert conn.execute("SHOW archive_timeout").fetchone() == ("1min",)

    # The repository and pgBackRest's configuration are the service's own.
    repo = node.data_dir / "backups" / svc.name
    conf = node.data_dir / "services" / svc.name / "pgbackrest.conf"
    cluster_owner = (node.data_dir / "services" / svc.name).stat().st_uid
    assert stat.S_IMODE(repo.stat().st_mode) == 0o700
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    assert repo.stat().st_uid == cluster_owner == conf.stat().st_uid
    if os.geteuid() == 0:
        assert cluster_owner != 0
    # No password in pgBackRest's configuration: it logs in with one from its environment.
    assert svc.admin_password not in conf.read_text()

    ok(c, c.delete_dbaas_service(name=svc.name))
    assert not repo.exists()
