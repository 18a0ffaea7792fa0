"""The control store in PostgreSQL (issue 16): `--store postgres://…` (env PGBAY_STORE) keeps every
service, user, pool and operation in an existing PostgreSQL the test starts; pgbay behaves as on
its SQLite default, and what it committed is there after `kill -9`. An unreachable store stops
start-up with one clear line, the password never shown.
"""

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from conftest import PgbayServer, PortWindow, find_pool, ok, provision, unique
from test_api_tls import openssl, own_certs  # noqa: F401 - a fixture used here

PG_BIN = Path(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
              .stdout.strip())
if not (PG_BIN / "initdb").exists():
    PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]


def as_pg_owner(cmd: list[str]) -> list[str]:
    """initdb and postgres refuse root: run them as nobody when we are root."""
    if os.geteuid() == 0:
        return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] + cmd
    return cmd


class StorePostgres:
    """A PostgreSQL server for the store: Unix socket only (no TCP port to race for), a store
    role with a password (SCRAM), the password given to pgbay through PGPASSWORD."""

    PASSWORD = "store-secret-" + os.urandom(6).hex()

    def __init__(self, tls: tuple[Path, int] | None = None):
        """`tls`: (a directory with `api.crt`/`api.key` for 127.0.0.1, a TCP port held for it):
        the server also listens there, and takes TCP connections over TLS only."""
        self.dir = Path(tempfile.mkdtemp(prefix="pgbay-test-storepg-"))
        os.chmod(self.dir, 0o755)
        if os.geteuid() == 0:
            os.chown(self.dir, 65534, 65534)
        data = self.dir / "data"
        pw = self.dir / "pw"
        pw.write_text(self.PASSWORD)
        if os.geteuid() == 0:
            os.chown(pw, 65534, 65534)
        subprocess.run(as_pg_owner([str(PG_BIN / "initdb"), "-D", str(data), "-U", "pgbay_store",
                                    "--auth=scram-sha-256", f"--pwfile={pw}", "--no-sync",
                                    "-E", "UTF8", "--locale=C"]),
                       check=True, capture_output=True)
        pw.unlink()
        opts = f"-c listen_addresses='' -c unix_socket_directories='{self.dir}'"
        self.port = 5432  # also names the Unix socket
        if tls is not None:
            certs, self.port = tls
            for name in ("api.crt", "api.key"):
                shutil.copy(certs / name, self.dir / name)
                os.chmod(self.dir / name, 0o600)
                if os.geteuid() == 0:
                    os.chown(self.dir / name, 65534, 65534)
            (data / "pg_hba.conf").write_text(
                "local all all scram-sha-256\n"
                "hostssl all all 127.0.0.1/32 scram-sha-256\n"
                "hostnossl all all 127.0.0.1/32 reject\n")
            opts = (f"-c listen_addresses=127.0.0.1 -c port={self.port} "
                    f"-c unix_socket_directories='{self.dir}' -c ssl=on "
                    f"-c ssl_cert_file='{self.dir / 'api.crt'}' "
                    f"-c ssl_key_file='{self.dir / 'api.key'}'")
        subprocess.run(as_pg_owner([str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-l",
                                    str(self.dir / "log"), "-o", opts, "start"]),
                       check=True, capture_output=True)
        self.data = data

    @property
    def url(self) -> str:
        return f"postgres://pgbay_store@localhost/postgres?host={self.dir}"

    def query(self, sql: str) -> list[tuple]:
        with psycopg.connect(host=str(self.dir), port=self.port, user="pgbay_store",
                             dbname="postgres", password=self.PASSWORD) as c:
            return c.execute(sql).fetchall()

    def stop(self):
        subprocess.run(as_pg_owner([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast",
                                    "-w", "stop"]), capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def store_pg():
    pg = StorePostgres()
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture(scope="module")
def node(store_pg):
    srv = PgbayServer("pgstore", env={"PGBAY_STORE": store_pg.url,
                                      "PGPASSWORD": StorePostgres.PASSWORD,
                                      "PGBAY_CLUSTER_KEY": "store-test-cluster-key-0123"})
    try:
        srv.start()
        yield srv
    finally:
        srv.close()


def test_everything_lives_in_the_postgresql_store_and_survives_kill9(node, store_pg):
    c = node.client()
    svc = provision(c, unique("pgs"), plan="hobbyist-2")
    ok(c, c.create_dbaas_pg_database(service_name=svc.name, database_name="app"))
    ok(c, c.create_dbaas_postgres_user(service_name=svc.name, username="appuser"))
    pool_name = unique("p")
    ok(c, c.create_dbaas_pg_connection_pool(
        service_name=svc.name, name=pool_name, database_name="app", mode="transaction",
        size=3, username="appuser"))
    pool = find_pool(c.get_dbaas_service_pg(name=svc.name), pool_name)
    with psycopg.connect(pool["connection-uri"], autocommit=True) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == \
            ("appuser", "app")

    # The state is in PostgreSQL, not in a SQLite file.
    assert not (node.data_dir / "pgbay.sqlite").exists()
    assert (svc.name,) in store_pg.query("SELECT name FROM services")
    assert (pool_name,) in store_pg.query(
        f"SELECT name FROM pools WHERE service = '{svc.name}'")
    assert store_pg.query("SELECT count(*) FROM users WHERE name = 'appuser'") == [(1,)]
    # Passwords are sealed there as in SQLite: no clear text.
    sealed = store_pg.query("SELECT password_enc FROM users WHERE name = 'appuser'")[0][0]
    assert svc.admin_password not in sealed

    node.kill9()
    node.start()
    c = node.client()
    after = c.get_dbaas_service_pg(name=svc.name)
    assert after["state"] == "running"
    assert "app" in after["databases"]
    again = find_pool(after, pool_name)
    assert again["connection-uri"] == pool["connection-uri"]
    with psycopg.connect(again["connection-uri"], autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_an_unreachable_store_stops_start_up_with_one_clear_line(store_pg):
    gone = Path(tempfile.mkdtemp(prefix="pgbay-test-nostore-"))
    srv = PgbayServer("nostore", env={
        "PGBAY_STORE": f"postgres://pgbay_store:hunter2-not-shown@localhost/postgres?host={gone}"})
    try:
        started = time.monotonic()
        with pytest.raises(RuntimeError) as e:
            srv.start()
        assert time.monotonic() - started < 30
        assert srv.proc.returncode not in (0, None)
        log = srv.log_text()
        assert "cannot use the PostgreSQL store" in log, log
        assert "hunter2-not-shown" not in log
    finally:
        srv.close()
        shutil.rmtree(gone, ignore_errors=True)


def test_a_store_over_tls_is_verified_and_every_connection_encrypted(own_certs, tmp_path):
    """`PGBAY_STORE=postgres://…?sslmode=verify-full&sslrootcert=CA` on a store that takes TCP
    connections over TLS only: pgbay starts and serves, and every connection it holds to the
    store (the pool and the change listener) is encrypted. A store whose certificate that CA did
    not sign stops start-up with one clear line."""
    window = PortWindow()
    try:
        pg = StorePostgres(tls=(own_certs, window.lo))
        try:
            def store_env(ca: Path) -> dict:
                return {"PGBAY_STORE": f"postgres://pgbay_store@127.0.0.1:{window.lo}/postgres"
                                       f"?sslmode=verify-full&sslrootcert={ca}",
                        "PGPASSWORD": StorePostgres.PASSWORD,
                        "PGBAY_CLUSTER_KEY": "store-test-cluster-key-0123"}

            srv = PgbayServer("tlsstore", env=store_env(own_certs / "ca.crt"))
            try:
                srv.start()
                assert srv.client().list_dbaas_services()["dbaas-services"] == []
                rows = pg.query("SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a "
                                "USING (pid) WHERE a.usename = 'pgbay_store' "
                                "AND a.client_addr IS NOT NULL")
                assert len(rows) >= 2 and all(ssl for (ssl,) in rows), rows
            finally:
                srv.close()

            openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other.key",
                    "-out", "other.crt", "-days", "2", "-subj", "/CN=another CA", cwd=tmp_path)
            stranger = PgbayServer("tlsstore-ca", env=store_env(tmp_path / "other.crt"))
            try:
                with pytest.raises(RuntimeError):
                    stranger.start()
                log = stranger.log_text()
                assert "cannot use the PostgreSQL store" in log, log
                assert StorePostgres.PASSWORD not in log
            finally:
                stranger.close()
        finally:
            pg.stop()
    finally:
        window.release()
