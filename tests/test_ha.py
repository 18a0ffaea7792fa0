"""High availability on Patroni (issue 17): a business service runs a primary and a standby, each a
PostgreSQL member under its own Patroni, on pgbay's own etcd; the document shows them; a standby
serves reads; with the primary's Patroni and postmaster killed, writes resume through the same
pool URI and the service's own URI, nothing acknowledged is lost, idle pooled clients keep their
connections, and the lost member comes back as a standby.
"""

import contextlib
import os

import shutil
import signal
import threading
import time
from pathlib import Path

import psycopg
import pytest
import requests

from conftest import PgbayServer, api_error, ok, unique, wait_for, wait_op, wait_service_running

pytestmark = pytest.mark.skipif(
    shutil.which("patroni") is None or shutil.which("etcd") is None,
    reason="patroni and etcd are not installed (.ci/run installs patroni and etcd-server)")

# Patroni's ttl is 10 s: the bound for writes to resume is 25 s.
FAILOVER_BOUND = 25.0


@pytest.fixture(scope="module")
def node():
    srv = PgbayServer("ha")
    try:
        srv.start()
        yield srv
    finally:
        srv.close()


def roles(doc):
    return sorted((n["role"], n["state"]) for n in doc["node-states"])


def two_running_members(c, name: str, what: str, timeout: float) -> dict:
    """Waits until the service shows a running master and a running standby; its document."""
    return wait_for(what, timeout, lambda: (
        d := c.get_dbaas_service_pg(name=name),
        roles(d) == [("master", "running"), ("standby", "running")] and d)[1])


def patroni_pids(srv: PgbayServer, service: str) -> dict[str, int]:
    """Member name -> pid of its Patroni, from the pid files pgbay keeps in its data dir."""
    out = {}
    for f in (srv.data_dir / "run" / "patroni").glob(f"{service}-*.pid"):
        idx = int(f.stem.rsplit("-", 1)[1])
        with contextlib.suppress(OSError, ValueError):
            out[f"{service}-{idx + 1}"] = int(f.read_text().strip())
    return out


def postmaster_of(srv: PgbayServer, service: str, member: str) -> int:
    idx = int(member.rsplit("-", 1)[1]) - 1
    pidfile = next((srv.data_dir / "services" / service / "members" / str(idx)).rglob("postmaster.pid"))
    return int(pidfile.read_text().splitlines()[0])


def etcd_keys(srv: PgbayServer, service: str) -> int:
    """How many keys pgbay's etcd holds for `service` (Patroni's scope), over TLS verified
    against pgbay's CA."""
    import base64
    client_port = int((srv.data_dir / "etcd" / "ports").read_text().split()[0])
    key = f"/pgbay/{service}/".encode()
    end = key[:-1] + bytes([key[-1] + 1])
    r = requests.post(f"https://127.0.0.1:{client_port}/v3/kv/range",
                      json={"key": base64.b64encode(key).decode(),
                            "range_end": base64.b64encode(end).decode(), "count_only": True},
                      verify=str(srv.data_dir / "ca.crt"), timeout=10)
    r.raise_for_status()
    return int(r.json().get("count", 0))


def master(doc) -> str:
    [m] = [n["name"] for n in doc["node-states"] if n["role"] == "master"]
    return m


def tx_pool(c, name: str, pool: str, size: int = 3) -> str:
    ok(c, c.create_dbaas_pg_connection_pool(
        service_name=name, name=pool, database_name="defaultdb", mode="transaction", size=size))
    doc = c.get_dbaas_service_pg(name=name)
    [p] = [p for p in doc["connection-pools"] if p["name"] == pool]
    return p["connection-uri"]


def test_business_service_runs_a_primary_and_a_standby(node):
    c = node.client()
    name = unique("ha")
    ok(c, c.create_dbaas_service_pg(name=name, plan="business-4"))
    doc = wait_service_running(c, name, timeout=300)
    assert doc["node-count"] == 2
    doc = two_running_members(c, name, "both members running", 180)
    assert doc["synchronous-replication"] == "off"
    [standby] = doc["connection-info"]["standby"]
    assert standby != doc["uri"]

    # Each member runs as the service's OS user, from a YAML only that user can read.
    for yml in (node.data_dir / "services" / name / "members").glob("*/patroni.yml"):
        st = yml.stat()
        assert st.st_mode & 0o777 == 0o600, yml
        if os.geteuid() == 0:
            assert st.st_uid != 0
        text = yml.read_text()
        assert doc["users"][0].get("password", "x") not in text
        # Patroni's REST API and its etcd speak TLS with pgbay's certificate.
        assert "certfile:" in text and "protocol: https" in text, text

    # Every member archives into the service's pgBackRest repository; a backup is taken (from
    # the standby once it streams) and listed.
    if shutil.which("pgbackrest"):
        doc = wait_for("a backup listed", 180, lambda: (
            d := c.get_dbaas_service_pg(name=name), d["backups"] and d)[1], every=1.0)
        assert doc["backups"][0]["backup-name"].endswith("F")
        assert "backup-schedule" in doc
        # ... from the standby: the primary is not loaded by it.
        logs = c.get_dbaas_service_logs(service_name=name, limit=200)["logs"]
        taken = [e["message"] for e in logs
                 if e["unit"] == "pgbackrest" and "full backup taken" in e["message"]]
        assert taken and "from a standby" in taken[-1], taken
        with psycopg.connect(doc["uri"], autocommit=True) as conn:
            # Segments completed while the cluster bootstraps, before the stanza exists, fail
            # once and are archived on retry: archiving is caught up.
            archived, caught_up = conn.execute(
                "SELECT archived_count, last_failed_time IS NULL "
                "OR last_archived_time > last_failed_time FROM pg_stat_archiver").fetchone()
            assert archived >= 1 and caught_up, (archived, caught_up)
    pool_uri = tx_pool(c, name, "app")
    with psycopg.connect(pool_uri, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (n int PRIMARY KEY, at timestamptz DEFAULT now())")
        conn.execute("INSERT INTO t (n) VALUES (1)")
    # The standby URI serves the row (within 5 s), and refuses writes.
    with psycopg.connect(standby, autocommit=True) as ro:
        wait_for("the row on the standby", 5, lambda: ro.execute(
            "SELECT count(*) FROM t").fetchone()[0] == 1, every=0.05)
        assert ro.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            ro.execute("INSERT INTO t (n) VALUES (2)")
    # The service's own URI reaches the primary.
    with psycopg.connect(doc["uri"], autocommit=True) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False

    # Settings go through Patroni's dynamic configuration: a reload on every member...
    ok(c, c.update_dbaas_service_pg(name=name, pg_settings={"jit": False}))
    for uri in (doc["uri"], standby):
        with psycopg.connect(uri, autocommit=True) as conn:
            assert conn.execute("SHOW jit").fetchone() == ("off",), uri
    # ... and a setting that needs a restart restarts the standby, then switches over.
    before = master(c.get_dbaas_service_pg(name=name))
    with psycopg.connect(doc["uri"], autocommit=True) as conn:
        old_buffers = conn.execute("SHOW shared_buffers").fetchone()
    with psycopg.connect(pool_uri, autocommit=True) as pooled:
        op = c.update_dbaas_service_pg(name=name, shared_buffers_percentage=20)
        assert op["state"] == "pending"
        ok(c, op)
        # The pooled client's next query runs on the new primary.
        wait_for("a write through the pool after the switchover", 60,
                 lambda: pooled.execute("INSERT INTO t (n) VALUES (3)") or True)
    doc = two_running_members(c, name, "both members running", 120)
    assert master(doc) != before
    assert doc["shared-buffers-percentage"] == 20
    buffers = set()
    # The service's URI follows the new primary within a moment of Patroni naming it (pgbay
    # polls it every 250 ms), and the standby replays the write.
    for uri in [doc["uri"]] + doc["connection-info"]["standby"]:
        def both_rows(uri=uri):
            with psycopg.connect(uri, autocommit=True) as conn:
                return conn.execute("SELECT count(*) FROM t").fetchone() == (2,)
        wait_for(f"both rows through {uri}", 5, both_rows, every=0.1)
        with psycopg.connect(uri, autocommit=True) as conn:
            buffers.add(conn.execute("SHOW shared_buffers").fetchone())
    assert len(buffers) == 1 and buffers != {old_buffers}, (buffers, old_buffers)
    # A change of node count comes alone: refused with settings, naming the field; nothing changes.
    with api_error(400, "plan"):
        c.update_dbaas_service_pg(name=name, plan="premium-4", work_mem=8)
    assert c.get_dbaas_service_pg(name=name)["plan"] == "business-4"
    # synchronous-replication changes through Patroni's configuration.
    ok(c, c.update_dbaas_service_pg(name=name, synchronous_replication="quorum"))
    assert c.get_dbaas_service_pg(name=name)["synchronous-replication"] == "quorum"

    assert etcd_keys(node, name) > 0
    pids = patroni_pids(node, name)
    ok(c, c.delete_dbaas_service_pg(name=name))
    wait_for("members stopped", 60, lambda: not any(
        Path(f"/proc/{p}").exists() for p in pids.values()))
    assert not (node.data_dir / "services" / name).exists()
    assert etcd_keys(node, name) == 0


def test_ha_fields_are_refused_without_standbys(node):
    c = node.client()
    with api_error(400, "synchronous-replication"):
        c.create_dbaas_service_pg(name=unique("noha"), plan="hobbyist-2",
                                  synchronous_replication="quorum")
    with api_error(400, "synchronous-replication"):
        c.create_dbaas_service_pg(name=unique("noha"), plan="business-4",
                                  synchronous_replication="sometimes")
    with api_error(400, "pglookout-settings"):
        c.create_dbaas_service_pg(name=unique("noha"), plan="business-4",
                                  pglookout_settings={"max-failover-replication-time-lag": -1})
    names = [s["name"] for s in c.list_dbaas_services()["dbaas-services"]]
    assert not any(n.startswith("noha") for n in names)


def test_failover_is_invisible_to_pooled_clients(node):
    c = node.client()
    name = unique("hafo")
    ok(c, c.create_dbaas_service_pg(name=name, plan="business-4", synchronous_replication="quorum",
                                    pglookout_settings={"max-failover-replication-time-lag": 30}))
    wait_service_running(c, name, timeout=300)
    doc = two_running_members(c, name, "both members running", 180)
    assert doc["pglookout-settings"] == {"max-failover-replication-time-lag": 30}
    old_master = master(doc)
    pool_uri = tx_pool(c, name, "app", size=4)
    with psycopg.connect(pool_uri, autocommit=True) as conn:
        conn.execute("CREATE TABLE w (n int PRIMARY KEY)")

    # A session-mode client holds a server connection of the primary.
    ok(c, c.create_dbaas_pg_connection_pool(
        service_name=name, name="sess", database_name="defaultdb", mode="session", size=2))
    sess_uri = [p for p in c.get_dbaas_service_pg(name=name)["connection-pools"]
                if p["name"] == "sess"][0]["connection-uri"]
    session = psycopg.connect(sess_uri, autocommit=True)
    assert session.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
    # Five clients sit idle on the pool; one writer commits numbered rows.
    idle = [psycopg.connect(pool_uri, autocommit=True) for _ in range(5)]
    for conn in idle:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    acked: list[int] = []
    ack_times: list[float] = []
    failures: list[str] = []
    killed_at: list[float] = []
    stop = threading.Event()

    def writer():
        conn = psycopg.connect(pool_uri, autocommit=True)
        n = 0
        while not stop.is_set():
            n += 1
            try:
                conn.execute("INSERT INTO w VALUES (%s)", (n,))
            except psycopg.Error as e:
                failures.append(f"{n}: {type(e).__name__}: {e}".strip())
                if conn.closed:
                    with contextlib.suppress(psycopg.Error):
                        conn = psycopg.connect(pool_uri, autocommit=True)
                time.sleep(0.05)
                continue
            acked.append(n)
            ack_times.append(time.monotonic())
            time.sleep(0.02)
        conn.close()

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    wait_for("writes before the kill", 30, lambda: len(acked) >= 20)

    # The primary's node dies: its Patroni and its postmaster, SIGKILL.
    patroni_pid = patroni_pids(node, name)[old_master]
    postmaster = postmaster_of(node, name, old_master)
    before = len(acked)
    killed_at.append(time.monotonic())
    os.kill(patroni_pid, signal.SIGKILL)
    os.kill(postmaster, signal.SIGKILL)
    # Writes resume: 20 more commits after the longest pause (the failover) has ended.
    wait_for("writes to resume", 120, lambda: len(acked) >= before + 40, every=0.1)
    around = [t for t in ack_times if t >= killed_at[0] - 1.0]
    resumed = max(b - a for a, b in zip(around, around[1:]))
    print(f"FAILOVER_SECONDS={resumed:.2f} failed={len(failures)} {failures[:3]}")
    stop.set()
    t.join(timeout=30)

    # node-states names the new master (Patroni promoted the standby).
    doc = wait_for("a new master", 60, lambda: (
        d := c.get_dbaas_service_pg(name=name), master(d) != old_master and d)[1])
    assert resumed < FAILOVER_BOUND, f"writes resumed only after {resumed:.1f}s"
    # Only the transaction in flight on the lost primary may fail.
    assert len(failures) <= 1, failures
    # Every acknowledged row is there (synchronous replication: none lost in the failover).
    with psycopg.connect(pool_uri, autocommit=True) as conn:
        have = {r[0] for r in conn.execute("SELECT n FROM w").fetchall()}
    assert set(acked) <= have, sorted(set(acked) - have)[:10]
    # The idle clients' next queries succeed on the same connections.
    for conn in idle:
        assert conn.execute("SELECT count(*) > 0 FROM w").fetchone() == (True,)
        conn.close()
    # The session-mode client of the lost primary is closed with a clear error; a new session
    # reaches the new primary.
    with pytest.raises(psycopg.OperationalError) as err:
        session.execute("SELECT 1")
    print(f"SESSION_ERROR={err.value!r}")
    assert "server" in str(err.value) or "terminat" in str(err.value), err.value
    session.close()
    with psycopg.connect(sess_uri, autocommit=True) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
    # The service's own URI reaches the new primary.
    doc = c.get_dbaas_service_pg(name=name)
    with psycopg.connect(doc["uri"], autocommit=True) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
    # node-states names the new master, and the lost member returns as a standby.
    doc = wait_for("the lost member back as a standby", 240, lambda: (
        d := c.get_dbaas_service_pg(name=name),
        roles(d) == [("master", "running"), ("standby", "running")] and master(d) != old_master
        and d)[1])
    assert master(doc) != old_master
    ok(c, c.delete_dbaas_service_pg(name=name))


def test_a_lost_primary_stays_down_while_no_standby_took_over(node):
    """A dead primary's Patroni is restarted once another member is the primary; while none is
    (the standby's Patroni frozen here, as on a machine too busy to take the expired leader key
    in time) it stays down for three ttls (30 s), rather than coming back after ttl + 2 s
    read-only with what the standby never received and racing the standby for the key; past
    that it comes back, and the service serves again."""
    c = node.client()
    name = unique("halp")
    ok(c, c.create_dbaas_service_pg(name=name, plan="business-4"))
    wait_service_running(c, name, timeout=300)
    doc = two_running_members(c, name, "both members running", 180)
    old = master(doc)
    [standby] = [n["name"] for n in doc["node-states"] if n["role"] == "standby"]
    pool_uri = tx_pool(c, name, "app")
    pids = patroni_pids(node, name)
    os.kill(pids[standby], signal.SIGSTOP)
    try:
        killed = time.monotonic()
        os.kill(pids[old], signal.SIGKILL)
        os.kill(postmaster_of(node, name, old), signal.SIGKILL)
        wait_for("the lost primary's Patroni restarted", 120,
                 lambda: patroni_pids(node, name).get(old) not in (None, pids[old]))
        down = time.monotonic() - killed
    finally:
        os.kill(pids[standby], signal.SIGCONT)
    print(f"LOST_PRIMARY_DOWN_SECONDS={down:.1f}")
    assert down >= 30, f"restarted after {down:.1f} s while no other member was the primary"
    two_running_members(c, name, "both members running again", 240)

    def write() -> bool:
        with psycopg.connect(pool_uri, autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS back (n int)")
            conn.execute("INSERT INTO back VALUES (1)")
        return True
    wait_for("a write through the pool", 120, write)
    ok(c, c.delete_dbaas_service_pg(name=name))


def etcd_pids(srv: PgbayServer) -> list[int]:
    marker = str(srv.data_dir / "etcd").encode()
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                cmd = (proc / "cmdline").read_bytes()
                if marker in cmd and cmd.split(b"\0")[0].endswith(b"etcd"):
                    out.append(int(proc.name))
    return out


def test_a_restarted_pgbay_adopts_members_and_etcd(node):
    c = node.client()
    name = unique("haad")
    ok(c, c.create_dbaas_service_pg(name=name, plan="business-4"))
    wait_service_running(c, name, timeout=300)
    pool_uri = tx_pool(c, name, "app")
    with psycopg.connect(pool_uri, autocommit=True) as conn:
        conn.execute("CREATE TABLE a (n int)")
    members = patroni_pids(node, name)
    etcd = etcd_pids(node)
    assert len(members) == 2 and len(etcd) == 1, (members, etcd)

    node.kill9()
    node.start()
    c = node.client()
    doc = wait_service_running(c, name, timeout=300)
    assert len(doc["node-states"]) == 2
    # The same processes serve: nothing was started twice.
    assert patroni_pids(node, name) == members
    assert all(Path(f"/proc/{p}").exists() for p in members.values())
    assert etcd_pids(node) == etcd
    with psycopg.connect(pool_uri, autocommit=True) as conn:
        wait_for("writes through the pool after the restart", 60,
                 lambda: conn.execute("INSERT INTO a VALUES (1)") or True)
    ok(c, c.delete_dbaas_service_pg(name=name))


def test_an_ha_plan_without_patroni_fails_naming_the_package(tmp_path):
    # PATH without patroni (and etcd): every other program of /usr/bin stays reachable.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for p in Path("/usr/bin").iterdir():
        if p.name not in ("patroni", "etcd"):
            with contextlib.suppress(OSError):
                (bin_dir / p.name).symlink_to(p)
    path = ":".join(d for d in os.environ["PATH"].split(":") if d not in ("/usr/bin", "/bin"))
    with PgbayServer("ha-nopatroni", env={"PATH": f"{bin_dir}:{path}"}) as srv:
        c = srv.client()
        name = unique("hanp")
        op = c.create_dbaas_service_pg(name=name, plan="business-4")
        op = c.get_operation(id=op["id"])
        assert op["state"] == "failure", op
        assert "patroni" in op["message"] and "install the Debian package patroni" in op["message"]
        names = [s["name"] for s in c.list_dbaas_services()["dbaas-services"]]
        assert name not in names
        # A single-cluster plan still works there.
        ok(c, c.create_dbaas_service_pg(name=unique("hanp"), plan="hobbyist-2"))


def test_plan_changes_add_and_remove_standbys_online(node):
    c = node.client()
    name = unique("hasz")
    ok(c, c.create_dbaas_service_pg(name=name, plan="startup-4"))
    doc = wait_service_running(c, name, timeout=300)
    assert doc["node-count"] == 1
    pool_uri = tx_pool(c, name, "app")
    with psycopg.connect(pool_uri, autocommit=True) as conn:
        conn.execute("CREATE TABLE s (n int)")
        conn.execute("INSERT INTO s SELECT generate_series(1, 1000)")
    with psycopg.connect(pool_uri, autocommit=True) as pooled:
        # 1 -> 2 nodes: the single cluster is handed to Patroni and a standby is built from it.
        op = c.update_dbaas_service_pg(name=name, plan="business-4", synchronous_replication="quorum")
        assert op["state"] == "pending"
        # The growth holds the service until it ends (a base backup and a start: seconds to
        # minutes): another change is refused at once, naming the operation, rather than left
        # waiting; nothing of it is made.
        with api_error(409, op["id"]):
            c.create_dbaas_postgres_user(service_name=name, username="waiter")
        with api_error(409, op["id"]):
            c.create_dbaas_pg_connection_pool(
                service_name=name, name="waiting", database_name="defaultdb", mode="transaction",
                size=2)
        with api_error(409, op["id"]):
            c.delete_dbaas_service(name=name)
        ok(c, op)
        doc = c.get_dbaas_service_pg(name=name)
        assert "waiter" not in [u["username"] for u in doc["users"]]
        assert "waiting" not in [p["name"] for p in doc["connection-pools"]]
        doc = two_running_members(c, name, "two running members", 60)
        assert doc["node-count"] == 2 and doc["plan"] == "business-4"
        assert doc["synchronous-replication"] == "quorum"
        # The pooled client's connection carries on; the data is all there, on the standby too.
        wait_for("a write through the pool", 60,
                 lambda: pooled.execute("INSERT INTO s VALUES (0)") or True)
        [standby] = doc["connection-info"]["standby"]
        with psycopg.connect(standby, autocommit=True) as ro:
            wait_for("rows on the new standby", 10, lambda: ro.execute(
                "SELECT count(*) FROM s").fetchone()[0] == 1001)
        # 2 -> 3 nodes: one more standby.
        ok(c, c.update_dbaas_service_pg(name=name, plan="premium-4"))
        doc = wait_for("three running members", 60, lambda: (
            d := c.get_dbaas_service_pg(name=name),
            roles(d) == [("master", "running")] + [("standby", "running")] * 2 and d)[1])
        assert doc["node-count"] == 3
        # 3 -> 1 node: the standbys go.
        ok(c, c.update_dbaas_service_pg(name=name, plan="startup-4"))
        doc = c.get_dbaas_service_pg(name=name)
        assert doc["node-count"] == 1 and roles(doc) == [("master", "running")]
        assert doc["connection-info"]["standby"] == []
        wait_for("a write through the pool", 60,
                 lambda: pooled.execute("INSERT INTO s VALUES (0)") or True)
    with psycopg.connect(doc["uri"], autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM s").fetchone() == (1002,)
    assert len(patroni_pids(node, name)) == 1
    ok(c, c.delete_dbaas_service_pg(name=name))


@pytest.mark.skipif(shutil.which("pgbackrest") is None, reason="pgbackrest is not installed")
def test_a_standby_catches_up_from_the_archive_when_the_primary_dropped_the_wal(node):
    """A standby is restored from the service's last backup; WAL written since then that the
    primary no longer holds must come from the archive (Patroni's restore_command), or the new
    standby never leaves `syncing_data`."""
    c = node.client()
    name = unique("hawal")
    ok(c, c.create_dbaas_service_pg(name=name, plan="startup-4"))
    doc = wait_service_running(c, name, timeout=300)
    wait_for("the first backup", 120, lambda: c.get_dbaas_service_pg(name=name)["backups"])
    with psycopg.connect(doc["uri"], autocommit=True) as conn:
        first = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]

        def dropped() -> bool:
            # About 24 MiB of WAL per round (the admin may not call pg_switch_wal), the table
            # emptied again so that the disk does not fill; once the first segment is archived,
            # a checkpoint removes or recycles it.
            conn.execute("CREATE TABLE IF NOT EXISTS fill (pad text)")
            conn.execute("INSERT INTO fill SELECT repeat('x', 1000) FROM generate_series(1, 24000)")
            conn.execute("TRUNCATE fill")
            if conn.execute("SELECT coalesce(last_archived_wal, '') >= %s FROM pg_stat_archiver",
                            (first,)).fetchone()[0]:
                conn.execute("CHECKPOINT")
            return conn.execute("SELECT count(*) = 0 FROM pg_ls_waldir() WHERE name = %s",
                                (first,)).fetchone()[0]

        wait_for(f"the primary to drop WAL segment {first}", 240, dropped, every=0.5)
        conn.execute("CREATE TABLE marker AS SELECT 42 AS n")
    op = c.update_dbaas_service_pg(name=name, plan="business-4")
    assert wait_op(c, op, timeout=300)["state"] == "success", op
    doc = two_running_members(c, name, "two running members", 60)
    [standby] = doc["connection-info"]["standby"]
    with psycopg.connect(standby, autocommit=True) as ro:
        assert ro.execute("SELECT n FROM marker").fetchone() == (42,)
    ok(c, c.delete_dbaas_service_pg(name=name))


@pytest.mark.skipif(shutil.which("pgbackrest") is None, reason="pgbackrest is not installed")
def test_a_fork_into_a_plan_with_standbys_runs_a_primary_and_a_standby(node):
    c = node.client()
    src = unique("hafsrc")
    ok(c, c.create_dbaas_service_pg(name=src, plan="startup-4"))
    doc = wait_service_running(c, src, timeout=300)
    with psycopg.connect(doc["uri"], autocommit=True) as conn:
        conn.execute("CREATE TABLE f AS SELECT generate_series(1, 300) AS n")
    wait_for("a backup of the source", 120,
             lambda: c.get_dbaas_service_pg(name=src)["backups"], every=0.5)
    # HA settings come with an update once the fork runs.
    with api_error(400, "synchronous-replication"):
        c.create_dbaas_service_pg(name=unique("haf"), plan="business-4",
                                  fork_from_service=src, synchronous_replication="quorum")
    name = unique("hafork")
    ok(c, c.create_dbaas_service_pg(name=name, plan="business-4", fork_from_service=src))
    doc = two_running_members(c, name, "the fork's two running members", 60)
    assert doc["node-count"] == 2 and doc["plan"] == "business-4"
    with psycopg.connect(doc["uri"], autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM f").fetchone() == (300,)
        conn.execute("INSERT INTO f VALUES (301)")
    [standby] = doc["connection-info"]["standby"]
    with psycopg.connect(standby, autocommit=True) as ro:
        wait_for("the write on the standby", 10, lambda: ro.execute(
            "SELECT count(*) FROM f").fetchone()[0] == 301)
    ok(c, c.update_dbaas_service_pg(name=name, synchronous_replication="quorum"))
    assert c.get_dbaas_service_pg(name=name)["synchronous-replication"] == "quorum"
    for n in (name, src):
        ok(c, c.delete_dbaas_service_pg(name=n))


@pytest.mark.skipif(shutil.which("pgbackrest") is None, reason="pgbackrest is not installed")
def test_a_fork_of_a_service_with_a_standby_at_a_time_holds_exactly_the_rows_before_it(node):
    """The rows before and after T are still in the primary's current WAL segment when the fork
    is asked for: the fork has the primary (found through Patroni, not a local data directory)
    commit, switch WAL and archive before it recovers, so it holds the 100 rows before T, not an
    archive's end that is missing them or that grew past T while the fork was being made."""
    c = node.client()
    src = unique("hatsrc")
    ok(c, c.create_dbaas_service_pg(name=src, plan="business-4"))
    doc = two_running_members(c, src, "the source's two running members", 300)
    wait_for("a backup of the source", 120,
             lambda: c.get_dbaas_service_pg(name=src)["backups"], every=0.5)
    with psycopg.connect(doc["uri"], autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        conn.execute("INSERT INTO t SELECT generate_series(1, 100)")
        t = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        wait_for("a second after T", 5, lambda: conn.execute(
            "SELECT clock_timestamp() > %s + interval '1 second'", (t,)).fetchone()[0])
        conn.execute("INSERT INTO t SELECT generate_series(101, 150)")
    name = unique("hatfork")
    ok(c, c.create_dbaas_service_pg(name=name, plan="hobbyist-2", fork_from_service=src,
                                    recovery_backup_time=t.isoformat()))
    fork = c.get_dbaas_service_pg(name=name)
    from test_backups import count_rows, fork_log
    rows = count_rows(fork["uri"])
    assert rows == 100, f"{rows} rows; T={t.isoformat()}; the fork's recovery:\n{fork_log(node, name)}"
    with psycopg.connect(doc["uri"], autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (150,)
        conn.execute("INSERT INTO t VALUES (151)")
    # Without a time: everything committed, the row just written included.
    latest = unique("hatlatest")
    ok(c, c.create_dbaas_service_pg(name=latest, plan="hobbyist-2", fork_from_service=src))
    with psycopg.connect(c.get_dbaas_service_pg(name=latest)["uri"], autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (151,)
    for n in (name, latest, src):
        ok(c, c.delete_dbaas_service_pg(name=n))


@pytest.mark.skipif(shutil.which("pgbackrest") is None, reason="pgbackrest is not installed")
def test_a_lost_standby_is_rebuilt_from_the_repository(node):
    """A standby whose data directory is lost (its Patroni and postmaster killed, the directory
    removed) is made again by Patroni from the service's pgBackRest repository (its first
    replica method), then streams from the primary."""
    c = node.client()
    name = unique("harb")
    ok(c, c.create_dbaas_service_pg(name=name, plan="business-4"))
    doc = two_running_members(c, name, "two running members", 300)
    with psycopg.connect(doc["uri"], autocommit=True) as conn:
        conn.execute("CREATE TABLE r AS SELECT generate_series(1, 2000) AS n")
    wait_for("a backup listed", 180, lambda: c.get_dbaas_service_pg(name=name)["backups"],
             every=1.0)
    [standby] = [n["name"] for n in doc["node-states"] if n["role"] == "standby"]
    idx = int(standby.rsplit("-", 1)[1]) - 1
    member = node.data_dir / "services" / name / "members" / str(idx)
    os.kill(patroni_pids(node, name)[standby], signal.SIGKILL)
    os.kill(postmaster_of(node, name, standby), signal.SIGKILL)
    shutil.rmtree(member / "data")
    doc = wait_for("the standby made again", 240, lambda: (
        d := c.get_dbaas_service_pg(name=name),
        roles(d) == [("master", "running"), ("standby", "running")]
        and (member / "data").exists() and d)[1], every=1.0)
    log = (member / "patroni.log").read_text(errors="replace")
    assert "replica has been created using pgbackrest" in log, log[-3000:]
    [uri] = doc["connection-info"]["standby"]
    with psycopg.connect(uri, autocommit=True) as ro:
        wait_for("the rows on the rebuilt standby", 30, lambda: ro.execute(
            "SELECT count(*) FROM r").fetchone()[0] == 2000)
    ok(c, c.delete_dbaas_service_pg(name=name))
