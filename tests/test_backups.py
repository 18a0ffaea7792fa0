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

from conftest import PgbayServer, api_error, ok, provision, unique

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

    # The repository is encrypted (aes-256-cbc, a key of the service's own): pgBackRest's own
    # record of it is not readable text.
    repo = node.data_dir / "backups" / svc.name
    infos = list(repo.rglob("backup.info"))
    assert infos, list(repo.rglob("*"))[:20]
    for info in infos:
        data = info.read_bytes()
        assert b"[backup:current]" not in data and data.startswith(b"Salted__"), data[:40]
    conf = node.data_dir / "services" / svc.name / "pgbackrest.conf"
    assert "repo1-cipher-type=aes-256-cbc" in conf.read_text()
    assert oct(conf.stat().st_mode & 0o777) == "0o600"

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

    # /metrics: the newest backup's age, and no failure.
    from conftest import metrics
    text = metrics(node)
    assert f'pgbay_backup_newest_age_seconds{{service="{svc.name}"}}' in text
    assert f'pgbay_backup_failures_total{{service="{svc.name}"}} 0' in text

    ok(c, c.delete_dbaas_service(name=svc.name))
    assert not repo.exists()


@pytest.fixture(scope="module")
def source(node):
    """A service with a user, a backup, then 100 rows committed before a time T and 50 after."""
    c = node.client()
    svc = provision(c, unique("src"), plan="hobbyist-2")
    ok(c, c.create_dbaas_postgres_user(service_name=svc.name, username="appuser"))
    pw = c.reveal_dbaas_postgres_user_password(service_name=svc.name, username="appuser")
    wait_for_backup(c, svc.name)
    with psycopg.connect(svc.uri, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        conn.execute("GRANT SELECT ON t TO appuser")
        conn.execute("INSERT INTO t SELECT generate_series(1, 100)")
        t = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        # The rows after T are committed a clear second later.
        while conn.execute("SELECT clock_timestamp() > %s + interval '1 second'",
                           (t,)).fetchone()[0] is not True:
            time.sleep(0.05)
        conn.execute("INSERT INTO t SELECT generate_series(101, 150)")
    # After T: appuser gets another password, and a user is made.
    ok(c, c.reset_dbaas_postgres_user_password(service_name=svc.name, username="appuser",
                                               password=LATER_PASSWORD))
    ok(c, c.create_dbaas_postgres_user(service_name=svc.name, username="lateuser"))
    return {"svc": svc, "t": t, "appuser_password": pw["password"]}


LATER_PASSWORD = "changed-after-T-0123"


def fork_log(node, name: str) -> str:
    """What a fork's recovery replayed and where it stopped (kept with the fork), for a failure
    message."""
    path = node.data_dir / "services" / name / "fork-recovery.log"
    return path.read_text(errors="replace")[-4000:] if path.exists() else "(no fork-recovery.log)"


def count_rows(uri: str) -> int:
    with psycopg.connect(uri, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM t").fetchone()[0]


def test_a_fork_at_a_time_holds_exactly_the_rows_before_it(node, source):
    c = node.client()
    src = source["svc"]
    at = source["t"].isoformat()
    name = unique("fork-t")
    ok(c, c.create_dbaas_service_pg(name=name, plan="hobbyist-2",
                                    fork_from_service=src.name, recovery_backup_time=at))
    fork = c.get_dbaas_service_pg(name=name)
    assert fork["state"] == "running"
    assert fork["uri"] != src.uri  # its own ports
    rows = count_rows(fork["uri"])
    assert rows == 100, f"{rows} rows; the fork's recovery:\n{fork_log(node, name)}"
    # A user of the source logs in to the fork with the password it had at T (it was changed
    # after T), and a user made after T is not there.
    user_uri = fork["uri"].replace(f"{src.admin_user}:{src.admin_password}",
                                   f"appuser:{source['appuser_password']}")
    assert count_rows(user_uri) == 100
    assert c.reveal_dbaas_postgres_user_password(
        service_name=name, username="appuser")["password"] == source["appuser_password"]
    assert "lateuser" not in [u["username"] for u in fork["users"]]
    # The source is untouched and the fork has backups of its own.
    assert count_rows(src.uri) == 150
    wait_for_backup(c, name)


def test_a_fork_without_a_time_holds_everything_committed(node, source):
    c = node.client()
    src = source["svc"]
    name = unique("fork-now")
    ok(c, c.create_dbaas_service_pg(name=name, plan="hobbyist-2", fork_from_service=src.name))
    fork = c.get_dbaas_service_pg(name=name)
    assert count_rows(fork["uri"]) == 150
    # The users as they are now, with their current passwords.
    assert "lateuser" in [u["username"] for u in fork["users"]]
    assert count_rows(fork["uri"].replace(f"{src.admin_user}:{src.admin_password}",
                                          f"appuser:{LATER_PASSWORD}")) == 150
    with psycopg.connect(fork["uri"], autocommit=True) as conn:
        # A primary of its own: writable.
        conn.execute("INSERT INTO t VALUES (1000)")


@pytest.mark.parametrize("body,field,words", [
    ({"recovery-backup-time": "2026-01-01T00:00:00Z"}, "recovery-backup-time",
     ["only", "fork-from-service"]),
    ({"fork-from-service": "no-such-service"}, "fork-from-service", ["no service named"]),
    ({"fork-from-service": "SOURCE", "recovery-backup-time": "yesterday"},
     "recovery-backup-time", ["ISO 8601"]),
    ({"fork-from-service": "SOURCE", "recovery-backup-time": "2999-01-01T00:00:00Z"},
     "recovery-backup-time", ["future", "recoverable window"]),
    ({"fork-from-service": "SOURCE", "recovery-backup-time": "2001-01-01T00:00:00Z"},
     "recovery-backup-time", ["before the first backup", "recoverable window"]),
    ({"fork-from-service": "SOURCE", "admin-username": "someone"}, "admin-username",
     ["fork-from-service", "source's users"]),
    ({"fork-from-service": "SOURCE", "migration": {"host": "h", "port": 5432}}, "migration",
     ["fork-from-service", "source's data"]),
])
def test_fork_refusals_name_the_field_and_create_nothing(node, source, body, field, words):
    from conftest import signed
    body = {k: (source["svc"].name if v == "SOURCE" else v) for k, v in body.items()}
    name = unique("refused")
    r = signed(node, "POST", f"/dbaas-postgres/{name}", {"plan": "hobbyist-2", **body})
    assert r.status_code == 400, r.text
    message = r.json()["message"]
    assert field in message, message
    for w in words:
        assert w in message, message
    names = [s["name"] for s in node.client().list_dbaas_services()["dbaas-services"]]
    assert name not in names


def test_rebuild_drill_a_lost_data_directory_comes_back_from_the_backups(node):
    """Stop pgbay, remove a service's data directory, start pgbay: the service is rebuilt from
    its backups and WAL (`rebuilding`, then `running`), on the same ports, with every row that
    was archived before the loss."""
    from conftest import component_port, wait_service_running

    c = node.client()
    svc = provision(c, unique("drill"), plan="hobbyist-2")
    wait_for_backup(c, svc.name)
    with psycopg.connect(svc.uri, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (id int)")
        conn.execute("INSERT INTO kept SELECT generate_series(1, 1000)")
        segment = conn.execute(
            "SELECT pg_walfile_name(pg_current_wal_insert_lsn())").fetchone()[0]
        # archive_timeout (60 s) switches the segment holding these rows; wait until archived.
        deadline = time.monotonic() + 150
        while not conn.execute("SELECT coalesce(last_archived_wal, '') >= %s "
                               "FROM pg_stat_archiver", (segment,)).fetchone()[0]:
            assert time.monotonic() < deadline, "the rows' WAL segment was never archived"
            time.sleep(0.5)
    node.stop()
    shutil.rmtree(node.data_dir / "services" / svc.name / "pgdata")
    node.start()
    c = node.client()
    assert c.get_dbaas_service_pg(name=svc.name)["state"] in ("rebuilding", "running")
    doc = wait_service_running(c, svc.name, timeout=240)
    assert component_port(doc, "pg") == svc.pg_port
    assert component_port(doc, "pgbouncer") == svc.bouncer_port
    with psycopg.connect(svc.uri, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM kept").fetchone() == (1000,)
        conn.execute("INSERT INTO kept VALUES (1001)")  # writable again


def test_the_command_line_lists_backups_and_forks(node, source):
    from test_cli import pgbay, table

    src = source["svc"]
    rows = table(pgbay(node, "service", "backups", src.name))
    assert rows and all(r["BACKUP"].endswith("F") for r in rows), rows
    name = unique("cli-fork")
    pgbay(node, "service", "fork", src.name, name, "--time", source["t"].isoformat())
    fork = node.client().get_dbaas_service_pg(name=name)
    assert fork["state"] == "running" and fork["plan"] == "hobbyist-2"
    rows = count_rows(fork["uri"])
    assert rows == 100, f"{rows} rows; the fork's recovery:\n{fork_log(node, name)}"


def test_backup_schedule_is_set_at_create_and_changed_by_update(node):
    c = node.client()
    name = unique("bks")
    ok(c, c.create_dbaas_service_pg(name=name, plan="hobbyist-2",
                                    backup_schedule={"backup-hour": 3, "backup-minute": 45}))
    assert c.get_dbaas_service_pg(name=name)["backup-schedule"] == {
        "backup-hour": 3, "backup-minute": 45}
    ok(c, c.update_dbaas_service_pg(name=name,
                                    backup_schedule={"backup-hour": 23, "backup-minute": 0}))
    assert c.get_dbaas_service_pg(name=name)["backup-schedule"] == {
        "backup-hour": 23, "backup-minute": 0}
    # Out of range or incomplete: 400 naming the field, nothing changed.
    for bad, field in [({"backup-hour": 24, "backup-minute": 0}, "backup-schedule.backup-hour"),
                       ({"backup-hour": 1, "backup-minute": 60}, "backup-schedule.backup-minute"),
                       ({"backup-hour": 1}, "backup-schedule.backup-minute")]:
        with api_error(400, field):
            c.update_dbaas_service_pg(name=name, backup_schedule=bad)
    assert c.get_dbaas_service_pg(name=name)["backup-schedule"] == {
        "backup-hour": 23, "backup-minute": 0}
    # It survives a restart of pgbay (the store keeps it).
    node.stop()
    node.start()
    c = node.client()
    assert c.get_dbaas_service_pg(name=name)["backup-schedule"] == {
        "backup-hour": 23, "backup-minute": 0}
    ok(c, c.delete_dbaas_service_pg(name=name))
    # A service made again under the name gets a time of its own (pgbay's pick, the same
    # before and after a restart), not the deleted one's.
    ok(c, c.create_dbaas_service_pg(name=name, plan="hobbyist-2"))
    picked = c.get_dbaas_service_pg(name=name)["backup-schedule"]
    node.stop()
    node.start()
    c = node.client()
    assert c.get_dbaas_service_pg(name=name)["backup-schedule"] == picked
    ok(c, c.delete_dbaas_service_pg(name=name))


def test_no_second_full_backup_at_the_backup_time_within_the_hour_of_the_first(node):
    """A service created shortly before its backup time is not backed up twice: its first
    backup has just finished when the time comes, and the scheduler skips that day's and says
    so. (A backup time set after the newest backup is a request for one then: the tests that
    move it to the current minute get theirs.)"""
    import datetime
    from conftest import wait_for
    c = node.client()
    # Two minutes ahead: time to make the service and its first backup before it.
    at = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=2)).replace(
        second=0, microsecond=0)
    svc = provision(c, unique("bkf"), plan="hobbyist-2",
                    backup_schedule={"backup-hour": at.hour, "backup-minute": at.minute})
    [first] = wait_for_backup(c, svc.name)["backups"]
    stopped = datetime.datetime.fromisoformat(first["backup-time"].replace("Z", "+00:00"))
    assert stopped < at, f"the first backup ended at {stopped}, after the backup time {at}"
    # The scheduler looks at the clock every 20 s, until the end of that hour.
    wait_for("the scheduled backup skipped", 180,
             lambda: any("scheduled backup skipped" in line and svc.name in line
                         for line in node.log_text().splitlines()), every=1.0)
    assert c.get_dbaas_service_pg(name=svc.name)["backups"] == [first]
    ok(c, c.delete_dbaas_service_pg(name=svc.name))


def test_a_failing_archive_is_visible_in_the_logs_and_metrics_and_recovers(node):
    """The repository is made unwritable: the WAL segment PostgreSQL cannot archive shows up in
    the service logs (unit `pgbackrest`) and in `/metrics`; once the repository is writable again
    the same segment is archived and nothing is lost."""
    from conftest import metrics, wait_for
    c = node.client()
    svc = provision(c, unique("arch"), plan="hobbyist-2")
    wait_for_backup(c, svc.name)
    repo = node.data_dir / "backups" / svc.name
    mode = stat.S_IMODE(repo.stat().st_mode)

    def failures() -> int:
        for line in metrics(node).splitlines():
            if line.startswith(f'pgbay_archive_failures_total{{service="{svc.name}"}}'):
                return int(float(line.split()[-1]))
        return 0

    def fill(conn, table: str) -> None:
        # About 24 MiB of WAL: at least one 16 MiB segment ends and goes to the archiver (the
        # admin may not call pg_switch_wal).
        conn.execute(f"CREATE TABLE {table} AS SELECT i, repeat('x', 1000) AS pad "
                     "FROM generate_series(1, 24000) i")

    assert failures() == 0
    with psycopg.connect(svc.uri, autocommit=True) as conn:
        archived_before = conn.execute("SELECT archived_count FROM pg_stat_archiver").fetchone()[0]
        repo.chmod(0)
        try:
            fill(conn, "filler1")
            wait_for("the archive failure in /metrics", 120, lambda: failures() > 0, every=1.0)
            logs = c.get_dbaas_service_logs(service_name=svc.name, limit=100)["logs"]
            lines = [e["message"] for e in logs if e["unit"] == "pgbackrest"]
            assert any("WAL archiving failed" in m for m in lines), lines
        finally:
            repo.chmod(mode)
        # Writable again: the failed segment, and the ones after it, are archived.
        fill(conn, "filler2")
        wait_for("archiving again", 180, lambda: conn.execute(
            "SELECT last_archived_wal >= last_failed_wal AND archived_count > %s "
            "FROM pg_stat_archiver", (archived_before,)).fetchone()[0] is True, every=1.0)
        assert conn.execute("SELECT count(*) FROM filler1").fetchone()[0] == 24000
    ok(c, c.delete_dbaas_service(name=svc.name))


def test_a_service_deleted_while_its_backup_runs_leaves_nothing_behind(node):
    """The daily backup is running when the service is deleted: pgbay ends it and waits for it
    before the repository goes, so that nothing writes into the repository afterwards (a backup
    left running wrote on, and its files outlived the service)."""
    from conftest import delete_while_backing_up
    name = delete_while_backing_up(node, wait_for_backup)
    assert not (node.data_dir / "backups" / name).exists()


def test_a_failed_scheduled_backup_is_tried_again(node):
    """The daily backup fails (its repository unwritable at that moment): it is counted, and
    tried again within minutes instead of a day later."""
    from conftest import metrics, schedule_now_and_away, wait_for
    c = node.client()
    now, away = schedule_now_and_away()
    svc = provision(c, unique("bkretry"), plan="hobbyist-2", backup_schedule=away)
    [first] = wait_for_backup(c, svc.name)["backups"]
    repo = node.data_dir / "backups" / svc.name
    mode = stat.S_IMODE(repo.stat().st_mode)
    failed = f'pgbay_backup_failures_total{{service="{svc.name}"}} 1'
    repo.chmod(0)
    try:
        ok(c, c.update_dbaas_service_pg(name=svc.name, backup_schedule=now))
        wait_for("the scheduled backup to fail", 120, lambda: failed in metrics(node), every=0.5)
    finally:
        repo.chmod(mode)
    wait_for("the backup tried again", 180,
             lambda: len(c.get_dbaas_service_pg(name=svc.name)["backups"]) == 2, every=1.0)
    assert c.get_dbaas_service_pg(name=svc.name)["backups"][0] == first
    ok(c, c.delete_dbaas_service(name=svc.name))
