"""The driver matrix (issue 20): each driver a small program in its own language, through a pgbay
transaction pool of 3 server connections with 10 concurrent clients, over TLS with verify-full
against pgbay's CA (`GET /v2/dbaas-ca-certificate`).

Every program (tests/drivers/<lang>/) runs parameters of the common types, its driver's own
prepared-statement path and cache eviction, a transaction with a savepoint rolled back, the cancel
of a pg_sleep, COPY in and out and LISTEN/NOTIFY where the driver has them, and 10 concurrent
clients; it exits non-zero naming the failed step (and the SQLSTATE). The connection settings reach
it in the environment (`PGB_*`; the password never in argv). Programs that compile (Go, Java, Rust)
are built once per run, into a temp dir.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import psycopg
import pytest

from conftest import REPO, find_pool, ok, psql_ok, unique

DRIVERS = REPO / "tests" / "drivers"
RUN_TIMEOUT = 180
BUILD_TIMEOUT = 600


@pytest.fixture(scope="module")
def matrix(client, service):
    """A database and a user of their own on the shared service, and pgbay's CA in a file."""
    db, user = unique("drv").replace("-", "_"), unique("drvuser").replace("-", "_")
    ok(client, client.create_dbaas_pg_database(service_name=service.name, database_name=db))
    ok(client, client.create_dbaas_postgres_user(service_name=service.name, username=user))
    # PostgreSQL 15 no longer lets every role create in `public`.
    psql_ok(service.uri_for(dbname=db), f'GRANT CREATE ON SCHEMA public TO "{user}"')
    tmp = Path(tempfile.mkdtemp(prefix="drivers-"))
    ca = tmp / "ca.pem"
    ca.write_text(client.get_dbaas_ca_certificate()["certificate"])
    yield {"service": service, "db": db, "user": user, "ca": ca, "tmp": tmp, "client": client}
    shutil.rmtree(tmp, ignore_errors=True)


def pool_env(m: dict, driver: str) -> dict[str, str]:
    """A transaction pool of size 3 for `driver`, as the `PGB_*` environment of its program."""
    client, service = m["client"], m["service"]
    name = unique(f"drv-{driver}")[:63]
    ok(client, client.create_dbaas_pg_connection_pool(
        service_name=service.name, name=name, database_name=m["db"], mode="transaction", size=3,
        username=m["user"]))
    pool = find_pool(client.get_dbaas_service_pg(name=service.name), name)
    u = urlsplit(pool["connection-uri"])
    # The server certificate names `localhost` and 127.0.0.1; the URI's host is the latter.
    return {
        "PGB_HOST": u.hostname, "PGB_PORT": str(u.port), "PGB_USER": unquote(u.username),
        "PGB_PASSWORD": unquote(u.password), "PGB_DB": u.path.lstrip("/"), "PGB_CA": str(m["ca"]),
        "PGB_TABLE": "drv_" + re.sub(r"\W", "_", driver), "PGB_CLIENTS": "10",
    }


def run_checked(cmd, *, cwd, env, timeout, what):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, (
        f"{what} exited {r.returncode}\n--- stderr ---\n{r.stderr[-6000:]}\n"
        f"--- stdout ---\n{r.stdout[-3000:]}")
    return r


def need(program: str, package: str) -> str:
    path = shutil.which(program)
    assert path, f"{program} is not installed (Debian package {package}; .ci/run installs it)"
    return path


# Each driver: how to build it (into `out`, once per run) and the command that runs it.

def python(script):
    def cmd(out, env):
        return [sys.executable, str(DRIVERS / "python" / script)]
    return None, cmd


def node(script):
    def build(out, env):
        npm_ci()

    def cmd(out, env):
        return [need("node", "nodejs"), str(DRIVERS / "node" / script)]
    return build, cmd


def npm_ci():
    """The node packages of package-lock.json, once (scripts/test.sh runs `npm ci` too)."""
    node_dir = DRIVERS / "node"
    if not (node_dir / "node_modules" / "postgres").is_dir():
        run_checked([need("npm", "npm"), "ci", "--no-audit", "--no-fund"], cwd=node_dir,
                    env=dict(os.environ), timeout=BUILD_TIMEOUT, what="npm ci")


def go_gopath(tag: str, sources: str, package: str):
    """The Go program of `tests/drivers/go` built with `-tags TAG` (its own file and the shared
    `common.go`) against Debian's Go sources, GOPATH style (no module proxy, no network);
    `sources` is the library's directory there, from Debian package `package`."""
    binary = f"{tag}-driver"

    def build(out, env):
        benv = dict(env, GO111MODULE="off", GOPATH="/usr/share/gocode", GOFLAGS="",
                    GOCACHE=str(out / "gocache"))
        if not (out / binary).exists():
            assert Path("/usr/share/gocode/src", sources).is_dir(), (
                f"{sources} sources missing (Debian package {package})")
            run_checked([need("go", "golang-go"), "build", "-tags", tag, "-o", str(out / binary),
                         "."], cwd=str(DRIVERS / "go"), env=benv, timeout=BUILD_TIMEOUT,
                        what="go build")

    def cmd(out, env):
        return [str(out / binary)]
    return build, cmd


PGJDBC_JAR = "/usr/share/java/postgresql.jar"


def pgjdbc():
    def build(out, env):
        assert Path(PGJDBC_JAR).is_file(), (
            f"{PGJDBC_JAR} missing (Debian package libpostgresql-jdbc-java)")
        if not (out / "PgjdbcDriver.class").exists():
            run_checked([need("javac", "default-jdk-headless"), "-cp", PGJDBC_JAR, "-d", str(out),
                         str(DRIVERS / "java" / "PgjdbcDriver.java")], cwd=str(out), env=env,
                        timeout=BUILD_TIMEOUT, what="javac")

    def cmd(out, env):
        return [need("java", "default-jre-headless"), "-cp", f"{out}:{PGJDBC_JAR}",
                "PgjdbcDriver"]
    return build, cmd


def script(interpreter, package, path):
    def cmd(out, env):
        return [need(interpreter, package), str(DRIVERS / path)]
    return None, cmd


def rust_example(name):
    def build(out, env):
        # scripts/test.sh built every example already (`--all-targets`): a no-op then.
        run_checked([need("cargo", "cargo"), "build", "-q", "-p", "pgbay-pooler", "--example",
                     name], cwd=str(REPO), env=env, timeout=BUILD_TIMEOUT, what="cargo build")

    def cmd(out, env):
        target = Path(env.get("CARGO_TARGET_DIR") or REPO / "target")
        return [str(target / "debug" / "examples" / name)]
    return build, cmd


DRIVER_SPECS = {
    "psycopg3-sqlalchemy": python("psycopg3_sqlalchemy.py"),
    "psycopg2": python("psycopg2_driver.py"),
    "asyncpg": python("asyncpg_driver.py"),
    "pg8000": python("pg8000_driver.py"),
    "django": python("django_driver.py"),
    "node-postgres": node("node_postgres.js"),
    "postgres.js": node("postgres_js.js"),
    "pgx-v4": go_gopath("pgx", "github.com/jackc/pgx/v4", "golang-github-jackc-pgx-v4-dev"),
    "lib-pq": go_gopath("libpq", "github.com/lib/pq", "golang-github-lib-pq-dev"),
    "pgjdbc": pgjdbc(),
    "activerecord": script("ruby", "ruby-activerecord", "ruby/activerecord_driver.rb"),
    "php-pdo": script("php", "php-cli", "php/pdo_driver.php"),
    "tokio-postgres-deadpool": rust_example("driver_tokio_postgres"),
    "sqlx": rust_example("driver_sqlx"),
}


@pytest.mark.parametrize("driver", list(DRIVER_SPECS))
def test_driver(matrix, driver):
    build, cmd = DRIVER_SPECS[driver]
    out = matrix["tmp"] / driver
    out.mkdir(exist_ok=True)
    env = dict(os.environ)
    if build is not None:
        build(out, env)
    env.update(pool_env(matrix, driver))
    r = run_checked(cmd(out, env), cwd=str(out), env=env, timeout=RUN_TIMEOUT,
                    what=f"the {driver} program")
    if r.stderr.strip():
        print(r.stderr)


def test_cancel_over_tls_is_closed_in_order(matrix):
    """libpq 17 sends its CancelRequest over TLS and reports a connection closed without TLS
    close_notify as a failed cancel ("SSL error: unexpected eof while reading"): pgbay closes
    the cancel connection in order."""
    env = pool_env(matrix, "cancel")
    kw = dict(host=env["PGB_HOST"], port=int(env["PGB_PORT"]), dbname=env["PGB_DB"],
              user=env["PGB_USER"], password=env["PGB_PASSWORD"], sslmode="verify-full",
              sslrootcert=env["PGB_CA"], autocommit=True)
    with psycopg.connect(**kw) as conn, psycopg.connect(**kw) as watcher:
        caught: list[BaseException] = []

        def sleeper():
            try:
                conn.execute("SELECT pg_sleep(60) /* drivers-tls-cancel */")
            except BaseException as e:  # noqa: BLE001
                caught.append(e)

        t = threading.Thread(target=sleeper)
        t.start()
        deadline = time.monotonic() + 30
        while watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE "
                "'%drivers-tls-cancel%' AND pid <> pg_backend_pid()").fetchone()[0] != 1:
            assert time.monotonic() < deadline, "pg_sleep did not start"
            time.sleep(0.05)
        conn.cancel_safe(timeout=10)  # raises on a failed cancel
        t.join(30)
        assert not t.is_alive()
        assert len(caught) == 1 and isinstance(caught[0], psycopg.errors.QueryCanceled), caught
        assert conn.execute("SELECT 1").fetchone() == (1,)
