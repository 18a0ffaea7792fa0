"""Tenants apart (issue 15): least privilege and one OS user per service.

Each test is the attack as it was tried on the build where every service's admin was its
cluster's superuser and every cluster ran as `nobody`: a tenant's admin reading another service's
files with `pg_read_binary_file`, running shell commands with `COPY ... FROM PROGRAM`, bypassing
the settings allow-list with `ALTER SYSTEM`, and one service's OS user reading another's data
directory. Each now fails with the exact SQLSTATE (42501, insufficient_privilege) or errno.

Real clients only: psycopg against the service's PostgreSQL port (TLS), the official Exoscale
client for the API, `runuser` and /proc for the OS side (when the suite runs as root, as CI does).
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from conftest import PgbayServer, api_error, ok, provision, unique

ROOT = os.geteuid() == 0
# pgbay's default --service-uid-range.
UID_RANGE = range(60000, 61100)
MANAGED_ROLES = {
    "pg_monitor", "pg_signal_backend", "pg_read_all_data", "pg_write_all_data",
    "pg_read_all_settings", "pg_read_all_stats", "pg_stat_scan_tables", "pg_checkpoint",
}
OS_ACCESS_ROLES = ("pg_read_server_files", "pg_write_server_files", "pg_execute_server_program")
needs_root = pytest.mark.skipif(not ROOT, reason="services share pgbay's OS user when it is not root")


@pytest.fixture(scope="module")
def other(client):
    """Service B: the one whose files the tenant of `service` (A) goes after."""
    return provision(client, unique("iso-b"))


def admin_conn(svc, dbname: str = "defaultdb") -> psycopg.Connection:
    return psycopg.connect(svc.uri_for(dbname=dbname), autocommit=True, connect_timeout=10)


def refused(conn: psycopg.Connection, sql: str, *words: str) -> str:
    """`sql` fails with 42501 and a message naming each of `words`; returns the message."""
    with pytest.raises(psycopg.Error) as info:
        conn.execute(sql)
    e = info.value
    assert e.sqlstate == "42501", (sql, e.sqlstate, str(e))
    msg = e.diag.message_primary or ""
    for w in words:
        assert w in msg, (sql, msg)
    return msg


def service_dir(server, svc) -> Path:
    return server.data_dir / "services" / svc.name


def postmaster_pid(server, svc) -> int:
    return int((service_dir(server, svc) / "pgdata" / "postmaster.pid").read_text().split()[0])


def proc_ids(pid: int) -> tuple[int, int]:
    """Real uid and gid of a process, from /proc/<pid>/status."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["Uid"].split()[0]), int(fields["Gid"].split()[0])


# --------------------------------------------------------------------------------------------
# Least privilege: the tenant's admin is a managed admin


def test_admin_is_a_managed_admin_not_a_superuser(service):
    with admin_conn(service) as c:
        row = c.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls "
            "FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        assert row == (False, True, True, True, False)
        member_of = {
            r[0] for r in c.execute(
                "SELECT b.rolname FROM pg_auth_members m JOIN pg_roles b ON b.oid = m.roleid "
                "WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = current_user)"
            )
        }
        assert member_of == MANAGED_ROLES
        for role in OS_ACCESS_ROLES:
            assert c.execute("SELECT pg_has_role(current_user, %s, 'USAGE')", (role,)).fetchone() \
                == (False,)
        assert c.execute(
            "SELECT pg_get_userbyid(datdba) = current_user FROM pg_database "
            "WHERE datname = 'defaultdb'"
        ).fetchone() == (True,)


def test_admin_cannot_read_another_services_files(server, service, other):
    target = service_dir(server, other) / "pgdata" / "global" / "pg_control"
    with admin_conn(service) as c:
        refused(c, f"SELECT pg_read_binary_file('{target}')",
                "permission denied for function pg_read_binary_file")
        refused(c, f"SELECT pg_read_file('{target.parent.parent / 'PG_VERSION'}')",
                "permission denied for function pg_read_file")
        refused(c, "SELECT pg_ls_dir('.')", "permission denied for function pg_ls_dir")
        c.execute("CREATE TEMP TABLE loot (line text)")
        refused(c, f"COPY loot FROM '{target}'", "pg_read_server_files")


def test_admin_cannot_run_programs_or_write_files(service):
    with admin_conn(service) as c:
        c.execute("CREATE TEMP TABLE out (line text)")
        refused(c, "COPY out FROM PROGRAM 'id'", "pg_execute_server_program")
        refused(c, "COPY (SELECT 1) TO PROGRAM 'id'", "pg_execute_server_program")
        refused(c, "COPY (SELECT 1) TO '/tmp/pgbay-isolation-probe'", "pg_write_server_files")
    assert not os.path.exists("/tmp/pgbay-isolation-probe")


def test_admin_cannot_alter_system(service):
    with admin_conn(service) as c:
        refused(c, "ALTER SYSTEM SET max_connections = 10000",
                'permission denied to set parameter "max_connections"')
        refused(c, "ALTER SYSTEM SET work_mem = '4GB'",
                'permission denied to set parameter "work_mem"')
        refused(c, "ALTER SYSTEM RESET ALL", "permission denied to perform ALTER SYSTEM RESET ALL")


def test_admin_cannot_create_an_untrusted_extension(service):
    with admin_conn(service) as c:
        for ext in ("file_fdw", "adminpack", "dblink"):
            refused(c, f"CREATE EXTENSION {ext}", f'permission denied to create extension "{ext}"')


def test_admin_cannot_become_superuser_nor_grant_itself_os_access(service):
    admin = service.admin_user
    with admin_conn(service) as c:
        refused(c, f'ALTER ROLE "{admin}" SUPERUSER', "superuser")
        refused(c, "CREATE ROLE sneaky SUPERUSER", "superuser")
        # Through PostgreSQL 15 CREATEROLE may grant any role that is not a superuser; pgbay
        # keeps these three out of its reach.
        for role in OS_ACCESS_ROLES:
            refused(c, f'GRANT {role} TO "{admin}"', "superuser")
            refused(c, f"CREATE ROLE {unique('r').replace('-', '_')} IN ROLE {role}", "superuser")
        refused(c, "ALTER ROLE pgbay_internal PASSWORD 'x'", "superuser")
        refused(c, "SET ROLE pgbay_internal", "permission denied to set role")
        assert c.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() \
            == (False,)


def test_internal_role_is_out_of_reach(client, service):
    # Over TCP, pg_hba rejects it before any password is asked.
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(service.uri_for(user="pgbay_internal", password="guess"),
                        connect_timeout=10)
    assert 'pg_hba.conf rejects connection for host "127.0.0.1", user "pgbay_internal"' \
        in str(info.value)
    # The API neither makes nor shows a user of that name.
    with api_error(400, "username", "pgbay_internal"):
        client.create_dbaas_postgres_user(service_name=service.name, username="pgbay_internal")
    with api_error(400, "admin-username", "pgbay_internal"):
        client.create_dbaas_service_pg(name=unique("iso-x"), plan="hobbyist-2",
                                       admin_username="pgbay_internal")
    # PostgreSQL's reserved role names are refused up front, not by a failed provisioning.
    for reserved in ("public", "none"):
        with api_error(400, "username", reserved):
            client.create_dbaas_postgres_user(service_name=service.name, username=reserved)
        with api_error(400, "admin-username", reserved):
            client.create_dbaas_service_pg(name=unique("iso-x"), plan="hobbyist-2",
                                           admin_username=reserved)
    svc = client.get_dbaas_service_pg(name=service.name)
    assert "pgbay_internal" not in str(svc)
    names = [s["name"] for s in client.list_dbaas_services()["dbaas-services"]]
    assert not any(n.startswith("iso-x") for n in names), names


def test_admin_keeps_what_a_managed_admin_may_do(client, service):
    db = unique("isodb").replace("-", "_")
    role = unique("isorole").replace("-", "_")
    with admin_conn(service) as c:
        c.execute(f"CREATE DATABASE {db}")
        c.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'Role-pass-123'")
        c.execute(f"GRANT pg_read_all_stats TO {role}")
        c.execute("CREATE EXTENSION IF NOT EXISTS pgcrypto")
        assert c.execute("SELECT length(gen_random_bytes(8))").fetchone() == (8,)
        c.execute("CHECKPOINT")
        c.execute(f"DROP ROLE {role}")
        c.execute(f"DROP DATABASE {db}")
    # A database made through the API is the admin's too: it may add trusted extensions there.
    api_db = unique("apidb").replace("-", "_")
    ok(client, client.create_dbaas_pg_database(service_name=service.name,
                                                     database_name=api_db))
    with admin_conn(service, api_db) as c:
        c.execute("CREATE EXTENSION pgcrypto")
        c.execute("CREATE SCHEMA app")
        c.execute("CREATE TABLE app.t (x int)")


def test_admin_sees_and_signals_other_sessions(client, service):
    user = unique("watched").replace("-", "_")
    ok(client, client.create_dbaas_postgres_user(service_name=service.name, username=user))
    password = client.reveal_dbaas_postgres_user_password(
        service_name=service.name, username=user)["password"]
    with psycopg.connect(service.uri_for(user=user, password=password), autocommit=True,
                         connect_timeout=10) as watched, admin_conn(service) as c:
        pid = watched.info.backend_pid
        watched.execute("SELECT 'marker-of-the-watched-session'")
        row = c.execute("SELECT usename, query FROM pg_stat_activity WHERE pid = %s",
                        (pid,)).fetchone()
        assert row == (user, "SELECT 'marker-of-the-watched-session'")
        assert c.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and c.execute(
                "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
            time.sleep(0.05)
        with pytest.raises(psycopg.OperationalError):
            watched.execute("SELECT 1")
        # pgbay's own sessions are a superuser's: the admin cannot end them.
        internal = c.execute("SELECT count(*) FROM pg_stat_activity "
                             "WHERE usename = 'pgbay_internal'").fetchone()[0]
        if internal:
            refused(c, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE usename = 'pgbay_internal'", "superuser")


def test_pgbay_runs_no_function_of_the_tenant_as_superuser(client, service):
    """The admin owns its databases and may set their search_path: a `format` of its own placed
    ahead of pg_catalog would run as pgbay's superuser when pgbay works in that database (here:
    deleting a user, which reassigns its objects in every database)."""
    db = unique("trap").replace("-", "_")
    victim = unique("victim").replace("-", "_")
    ok(client, client.create_dbaas_pg_database(service_name=service.name, database_name=db))
    ok(client, client.create_dbaas_postgres_user(service_name=service.name, username=victim))
    with admin_conn(service, db) as c:
        c.execute("CREATE SCHEMA evil")
        c.execute(
            "CREATE FUNCTION evil.format(t text, a text, b text, d text) RETURNS text "
            "LANGUAGE plpgsql AS $$ BEGIN "
            f"EXECUTE 'ALTER ROLE \"{service.admin_user}\" SUPERUSER'; "
            "RETURN pg_catalog.format(t, a, b, d); END $$")
        c.execute(f"ALTER DATABASE {db} SET search_path = evil, pg_catalog")
    ok(client, client.delete_dbaas_postgres_user(service_name=service.name, username=victim))
    with admin_conn(service) as c:
        assert c.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() \
            == (False,)
        assert c.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s",
                         (victim,)).fetchone() == (0,)


# --------------------------------------------------------------------------------------------
# One OS user per service


@needs_root
def test_each_service_runs_as_its_own_os_user(server, service, other):
    users = {}
    for svc in (service, other):
        uid, gid = proc_ids(postmaster_pid(server, svc))
        assert uid in UID_RANGE and gid in UID_RANGE, (svc.name, uid, gid)
        entry = pwd.getpwuid(uid)
        assert entry.pw_name.startswith("pgbay-") and entry.pw_shell == "/usr/sbin/nologin"
        d = service_dir(server, svc)
        st = d.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, gid, 0o700), d
        pgdata = (d / "pgdata").stat()
        assert (pgdata.st_uid, stat.S_IMODE(pgdata.st_mode)) == (uid, 0o700)
        users[svc.name] = entry.pw_name
    assert users[service.name] != users[other.name]
    # The services directory does not tell one service's user the others' names.
    assert stat.S_IMODE((server.data_dir / "services").stat().st_mode) == 0o711


@needs_root
def test_one_services_user_cannot_read_anothers_files(server, service, other):
    a_version = service_dir(server, service) / "pgdata" / "PG_VERSION"
    user_a = pwd.getpwuid(service_dir(server, service).stat().st_uid).pw_name
    user_b = pwd.getpwuid(service_dir(server, other).stat().st_uid).pw_name
    own = subprocess.run(["runuser", "-u", user_a, "--", "cat", str(a_version)],
                         capture_output=True, text=True, timeout=30)
    assert own.returncode == 0 and own.stdout.strip() == "15", own.stderr
    for path in (a_version, a_version.parent / "pg_hba.conf", a_version.parent.parent):
        r = subprocess.run(["runuser", "-u", user_b, "--", "cat", str(path)],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode != 0 and "Permission denied" in r.stderr, (path, r.stdout, r.stderr)


@needs_root
def test_deleting_a_service_removes_its_os_user(server, client):
    svc = provision(client, unique("iso-gone"), plan="hobbyist-2")
    d = service_dir(server, svc)
    user = pwd.getpwuid(d.stat().st_uid).pw_name
    assert user.startswith("pgbay-")
    ok(client, client.delete_dbaas_service_pg(name=svc.name))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (d.exists() or user in {p.pw_name for p in pwd.getpwall()}):
        time.sleep(0.1)
    assert not d.exists()
    with pytest.raises(KeyError):
        pwd.getpwnam(user)


@needs_root
def test_cluster_of_an_older_pgbay_moves_to_its_own_user_at_the_next_start():
    """An older pgbay ran every cluster as `nobody` and made no OS user: the next start makes the
    service's user and hands it the whole service directory before the cluster starts."""
    srv = PgbayServer("iso-upgrade")
    try:
        srv.start()
        svc = provision(srv.client(), unique("iso-old"), plan="hobbyist-2")
        d = service_dir(srv, svc)
        user = pwd.getpwuid(d.stat().st_uid).pw_name
        assert srv.stop() == 0
        # What an older pgbay left: everything owned by nobody, no service user.
        subprocess.run(["chown", "-R", "--no-dereference", "65534:65534", str(d)], check=True)
        subprocess.run(["userdel", user], check=True, capture_output=True)
        srv.start()
        uid, _ = proc_ids(postmaster_pid(srv, svc))
        assert uid in UID_RANGE and pwd.getpwuid(uid).pw_name == user
        nobody_owned = [p for p in d.rglob("*") if p.lstat().st_uid == 65534]
        assert not nobody_owned, nobody_owned[:5]
        with admin_conn(svc) as c:
            assert c.execute("SELECT current_user").fetchone() == (svc.admin_user,)
    finally:
        srv.close()
