"""Secure by default: the API cannot starve the data plane, no password in clear outside the
encrypted store, request signatures valid for at most an hour.

A pgbay of its own runs under `prlimit --nofile=4096:4096` with short API timeouts (through their
`PGBAY_*` env twins), so that a flood of idle and half-sent HTTP connections, far more than the
descriptor limit, is tried against it while a client logs in to a pool over TLS. Everything stays
on loopback and every socket count is bounded.
"""

from __future__ import annotations

import contextlib
import re
import socket
import stat
import time
import uuid

import psycopg
import pytest
import requests
from exoscale.api.exceptions import ExoscaleAPIException
from exoscale_auth import ExoscaleV2Auth

from conftest import (
    API_KEY,
    API_SECRET,
    PgbayServer,
    assert_password_refused,
    check_error_response,
    connect_many,
    find_pool,
    ok,
    provision,
    psql_ok,
    raise_own_nofile,
    reveal,
    unique,
    wait_op,
)

NOFILE = 4096
FLOOD = 4500
HEADER_TIMEOUT = 3
BODY_TIMEOUT = 3


@pytest.fixture(scope="module")
def limited():
    """A pgbay started under a 4,096-descriptor limit, with 3 s header and body timeouts."""
    env = {"PGBAY_API_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
           "PGBAY_API_BODY_TIMEOUT": str(BODY_TIMEOUT)}
    with PgbayServer("limited", env=env, nofile=NOFILE) as srv:
        yield srv


def api_socket(port: int, timeout: float = 5) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_until_closed(s: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes (or `timeout`), and how long that took."""
    start = time.monotonic()
    s.settimeout(timeout)
    data = b""
    with contextlib.suppress(ConnectionResetError, socket.timeout):
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data, time.monotonic() - start


def test_raises_open_files_limit_and_logs_it(limited):
    log = limited.log_text()
    lines = [line for line in log.splitlines() if "open files limit" in line]
    assert lines, log[-2000:]
    assert f"soft={NOFILE}" in lines[-1] and f"hard={NOFILE}" in lines[-1], lines[-1]


def test_half_sent_request_is_closed_after_header_timeout(limited):
    with api_socket(limited.api_port) as s:
        s.sendall(b"GET /v2/dbaas-service HT")
        data, took = read_until_closed(s, HEADER_TIMEOUT + 10)
    assert took < HEADER_TIMEOUT + 5, f"half-sent request still open after {took:.1f}s"
    assert b"200 OK" not in data


def test_idle_connection_is_closed_after_header_timeout(limited):
    with api_socket(limited.api_port) as s:
        _, took = read_until_closed(s, HEADER_TIMEOUT + 10)
    assert took < HEADER_TIMEOUT + 5, f"idle connection still open after {took:.1f}s"


def test_half_sent_body_gets_408(limited):
    with api_socket(limited.api_port) as s:
        s.sendall(b"POST /v2/dbaas-postgres/x/database HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"data")
        data, took = read_until_closed(s, BODY_TIMEOUT + 10)
    assert took < BODY_TIMEOUT + 5, f"half-sent body still open after {took:.1f}s"
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert b'"message"' in data and b"body" in data, data


def test_connection_flood_does_not_starve_the_pooler(limited):
    client = limited.client()
    s = provision(client, unique("flood"))
    ok(client, client.create_dbaas_postgres_user(service_name=s.name, username="flooduser"))
    name = unique("fp")
    ok(client, client.create_dbaas_pg_connection_pool(
        service_name=s.name, name=name, database_name="defaultdb", mode="transaction", size=5,
        username="flooduser"))
    uri = find_pool(client.get_dbaas_service_pg(name=s.name), name)["connection-uri"]
    assert "sslmode=require" in uri

    raise_own_nofile(FLOOD + 256)
    socks: list[socket.socket] = []
    try:
        # Refused/reset under the flood is fine (skipped): the point is what pgbay keeps serving.
        for i, sock in enumerate(connect_many(limited.api_port, FLOOD, timeout=1)):
            socks.append(sock)
            # A third send half a request line, a third a request head cut short, a third nothing.
            partial = {0: b"GET /v2/dbaas-serv", 1: b"POST /v2/dbaas-postgres/x HTTP/1.1\r\nHo"}
            if i % 3 in partial:
                with contextlib.suppress(OSError):
                    sock.sendall(partial[i % 3])
        assert len(socks) > NOFILE, f"only {len(socks)} connections opened"

        # The newest connection is not queued behind the others: over the cap it is answered at
        # once with 503 and closed; if earlier ones timed out meanwhile (opening thousands takes
        # longer than the header timeout on a loaded machine) it is closed by that timeout.
        data, took = read_until_closed(socks[-1], HEADER_TIMEOUT + 10)
        assert took < HEADER_TIMEOUT + 5, f"newest connection kept open {took:.1f}s"
        assert data == b"" or data.startswith(b"HTTP/1.1 503"), data[:200]

        start = time.monotonic()
        with psycopg.connect(uri, connect_timeout=10, autocommit=True) as conn:
            assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
            assert conn.info.pgconn.ssl_in_use
        took = time.monotonic() - start
        assert took < 15, f"pool login and query took {took:.1f}s under the flood"
    finally:
        for sock in socks:
            sock.close()
    # pgbay still answers its API (the cap frees permits as soon as the sockets close).
    deadline = time.monotonic() + 10
    while True:
        try:
            client.list_dbaas_services()
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert limited.running()


# --------------------------------------------------------------------------------------------
# No password in clear outside the encrypted store


@pytest.fixture(scope="module")
def fresh():
    """A pgbay of its own, so that the scan below covers every file of a complete data dir."""
    with PgbayServer("secrets") as srv:
        yield srv


def test_no_clear_password_in_data_dir_or_logs(fresh):
    client = fresh.client()
    s = provision(client, unique("sec"))
    passwords = {"admin": s.admin_password}

    a, b = "alice", "bob"
    ok(client, client.create_dbaas_postgres_user(service_name=s.name, username=a))
    ok(client, client.create_dbaas_postgres_user(service_name=s.name, username=b))
    passwords["alice-created"] = reveal(client, s.name, a)
    ok(client, client.reset_dbaas_postgres_user_password(service_name=s.name, username=a))
    passwords["alice-reset"] = reveal(client, s.name, a)
    chosen = "Chosen-" + uuid.uuid4().hex
    ok(client, client.reset_dbaas_postgres_user_password(
        service_name=s.name, username=b, password=chosen))
    passwords["bob-chosen"] = chosen
    assert reveal(client, s.name, b) == chosen

    # `public` passes the API's checks but PostgreSQL refuses it (a reserved role name), which
    # makes the server log the failed CREATE ROLE statement.
    with contextlib.suppress(ExoscaleAPIException):
        op = client.create_dbaas_postgres_user(service_name=s.name, username="public")
        wait_op(client, op)

    # The verifiers work: direct logins to PostgreSQL (TLS) and through a pool.
    assert psql_ok(s.uri_for(user=b, password=chosen), "SELECT current_user") == [b]
    assert psql_ok(s.uri_for(user=a, password=passwords["alice-reset"]),
                   "SELECT current_user") == [a]
    assert_password_refused(s.uri_for(user=a, password=passwords["alice-created"]))
    # The admin is not a superuser and cannot read pg_authid: the stored verifiers are read from
    # the catalog's file (pg_authid is global/1260), after a checkpoint wrote it out. Every
    # version of each role's row holds a SCRAM verifier right after its 64-byte name.
    psql_ok(s.uri, "CHECKPOINT")
    authid = (fresh.data_dir / "services" / s.name / "pgdata" / "global" / "1260").read_bytes()
    for name in (s.admin_user, a, b):
        key = name.encode().ljust(64, b"\0")
        rows = [m.end() for m in re.finditer(re.escape(key), authid)]
        assert rows and all(b"SCRAM-SHA-256$4096:" in authid[i:i + 40] for i in rows), name
    pool = unique("sp")
    ok(client, client.create_dbaas_pg_connection_pool(
        service_name=s.name, name=pool, database_name="defaultdb", mode="session", size=2,
        username=b))
    pool_uri = find_pool(client.get_dbaas_service_pg(name=s.name), pool)["connection-uri"]
    assert psql_ok(pool_uri, "SELECT current_user") == [b]

    logs = sorted(fresh.data_dir.rglob("*.log"))
    assert logs, "no cluster log found"
    for log in logs:
        mode = stat.S_IMODE(log.stat().st_mode)
        assert mode == 0o600, f"{log} has mode {oct(mode)}"
    text = b"".join(log.read_bytes() for log in logs)
    assert re.search(rb"PASSWORD '(?!SCRAM-SHA-256\$)", text) is None, "a clear PASSWORD was logged"

    files = [p for p in fresh.data_dir.rglob("*") if p.is_file() and not p.is_symlink()]
    files.append(fresh.log_path)
    found = []
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as e:  # a file removed while we scan (WAL recycling) holds nothing new
            if not path.exists():
                continue
            raise AssertionError(f"cannot read {path}: {e}") from e
        for label, pw in passwords.items():
            if pw.encode() in data:
                found.append(f"{label} in {path}")
    assert not found, found


# --------------------------------------------------------------------------------------------
# Bounded signatures


def signed_with_expiry(server, expires: int) -> requests.Response:
    """GET /dbaas-service signed by the official signer, expiring at `expires` (the signer's
    public entry point always signs 10 minutes ahead; its `_sign_request` takes the expiry)."""
    req = requests.Request("GET", f"{server.url}/dbaas-service").prepare()
    ExoscaleV2Auth(API_KEY, API_SECRET)._sign_request(req, expires)
    with requests.Session() as session:
        return session.send(req, timeout=30)


def test_signature_expiring_within_the_hour_is_accepted(server):
    r = signed_with_expiry(server, int(time.time()) + 50 * 60)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("ahead", [2 * 3600, 5 * 365 * 86400], ids=["2-hours", "5-years"])
def test_signature_expiring_more_than_an_hour_ahead_is_refused(server, ahead):
    r = signed_with_expiry(server, int(time.time()) + ahead)
    message = check_error_response(r, 403)
    assert "more than 1 hour ahead" in message, message
