"""Before authentication, a pool port gives nothing away and holds little (issue 15).

The attacks, as they were found:
- thousands of idle TCP connections to one service's pool port (nothing sent) used up pgbay's
  open-files limit: every service's pools timed out and the cluster supervisor failed with "Too
  many open files";
- a startup user name with a newline forged a line in pgbay's log;
- wrong-password answers told whether a pool exists and whose it is.

A pgbay of its own runs under `prlimit --nofile=4096:4096` with a short login timeout (its
`PGBAY_CLIENT_LOGIN_TIMEOUT` env twin); 4,500 idle sockets are opened to one service's pool port
from this process. Everything stays on loopback, every count and wait is bounded, every socket is
closed in a `finally`.
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import time
from urllib.parse import urlsplit

import psycopg
import pytest

from conftest import (
    PgbayServer,
    connect_many,
    find_pool,
    metrics,
    ok,
    provision,
    psql,
    psql_ok,
    raise_own_nofile,
    reveal,
    unique,
    uri_with,
)

NOFILE = 4096
FLOOD = 4500
LOGIN_TIMEOUT = 6
REASONS = ("pending_logins", "fd_reserve", "max_client_conn", "login_timeout")


@pytest.fixture(scope="module")
def limited():
    """A pgbay under a 4,096-descriptor limit whose pool ports close logins after 6 s."""
    env = {"PGBAY_CLIENT_LOGIN_TIMEOUT": str(LOGIN_TIMEOUT)}
    with PgbayServer("preauth", env=env, nofile=NOFILE) as srv:
        yield srv


@pytest.fixture(scope="module")
def tenants(limited):
    """Two services: `victim`, whose pool port is flooded, and `other`, with a pool of its user."""
    client = limited.client()
    victim = provision(client, unique("victim"))
    other = provision(client, unique("other"))
    ok(client, client.create_dbaas_postgres_user(service_name=other.name, username="app"))
    pool = unique("op")
    ok(client, client.create_dbaas_pg_connection_pool(
        service_name=other.name, name=pool, database_name="defaultdb", mode="transaction",
        size=3, username="app"))
    uri = find_pool(client.get_dbaas_service_pg(name=other.name), pool)["connection-uri"]
    return victim, other, uri


def refused(server: PgbayServer, service: str) -> dict[str, int]:
    found = {}
    for m in re.finditer(r'^pgbay_pooler_refused_connections_total\{service="([^"]*)",'
                         r'reason="([^"]*)"\} (\d+)$', metrics(server), re.M):
        if m.group(1) == service:
            found[m.group(2)] = int(m.group(3))
    return found


def wait_all_closed(socks: list[socket.socket], bound: float) -> list[socket.socket]:
    """Waits (at most `bound` seconds) until the server closed every socket; returns those it
    did not close."""
    open_ = {s.fileno(): s for s in socks}
    deadline = time.monotonic() + bound
    poller = select.poll()
    for fd in open_:
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    while open_ and time.monotonic() < deadline:
        for fd, _ in poller.poll(200):
            s = open_.get(fd)
            if s is None:
                continue
            try:
                data = s.recv(4096, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                poller.unregister(fd)
                del open_[fd]
    return list(open_.values())


def test_idle_flood_on_one_pool_port_starves_nobody(limited, tenants):
    victim, other, other_uri = tenants
    client = limited.client()
    raise_own_nofile(FLOOD + 512)
    socks: list[socket.socket] = []
    try:
        # The attack: connect to the victim's pool port and send nothing.
        socks.extend(connect_many(victim.bouncer_port, FLOOD, timeout=2))
        assert len(socks) > NOFILE, f"only {len(socks)} connections opened"
        opened = time.monotonic()

        # Another service's pool serves a new client at once, over TLS.
        start = time.monotonic()
        with psycopg.connect(other_uri, connect_timeout=10, autocommit=True) as conn:
            assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
            assert conn.info.pgconn.ssl_in_use
        assert time.monotonic() - start < 10
        # The API answers, and the supervisor can still act on a cluster, promptly (not once
        # the idle sockets happen to time out).
        start = time.monotonic()
        names = [s["name"] for s in client.list_dbaas_services()["dbaas-services"]]
        assert victim.name in names and other.name in names
        assert time.monotonic() - start < 10, f"API took {time.monotonic() - start:.1f}s"
        start = time.monotonic()
        ok(client, client.create_dbaas_pg_database(service_name=other.name,
                                                   database_name="during_flood"))
        assert psql_ok(other.uri_for(dbname="during_flood"), "SELECT 1") == ["1"]
        took = time.monotonic() - start
        assert took < 30, f"creating a database took {took:.1f}s under the flood"

        # Every idle socket is closed: over the cap at once, the others at the login timeout.
        left = wait_all_closed(socks, LOGIN_TIMEOUT + 20)
        took = time.monotonic() - opened
        assert not left, f"{len(left)} idle sockets still open {took:.0f}s after the flood"
    finally:
        for s in socks:
            s.close()

    # Every accepted socket was counted once: refused over the cap, or timed out.
    deadline = time.monotonic() + 20
    while True:
        counts = refused(limited, victim.name)
        total = counts.get("pending_logins", 0) + counts.get("login_timeout", 0)
        if total >= len(socks) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    print(f"flood: {len(socks)} sockets, all closed {took:.1f}s after opening; refused {counts}")
    assert set(counts) == set(REASONS), counts
    assert counts["pending_logins"] > 0 and counts["login_timeout"] > 0, counts
    assert total == len(socks), (counts, len(socks))
    assert counts["fd_reserve"] == 0 and counts["max_client_conn"] == 0, counts
    assert refused(limited, other.name) == dict.fromkeys(REASONS, 0)
    assert limited.running()
    log = limited.log_text()
    assert "Too many open files" not in log
    # The flood does not flood the log: refusals are counted, and logged a few times at most.
    assert log.count("refusing connections before login") <= 10, log[-3000:]
    assert log.count("client_login_timeout") <= 10, log[-3000:]
    lines = [line for line in log.splitlines() if "pooler client sockets limit" in line]
    assert lines and "client_sockets=2560" in lines[-1], lines


def test_idle_socket_is_closed_at_the_login_timeout_with_pgbouncers_words(limited, tenants):
    victim, _, _ = tenants
    with socket.create_connection(("127.0.0.1", victim.bouncer_port), timeout=5) as s:
        start = time.monotonic()
        s.settimeout(LOGIN_TIMEOUT + 10)
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(4096):
                data += chunk
        took = time.monotonic() - start
    assert LOGIN_TIMEOUT - 1 < took < LOGIN_TIMEOUT + 5, took
    assert data.startswith(b"E") and b"C08P01" in data and b"Mclient_login_timeout" in data, data


def test_newline_in_a_user_name_cannot_forge_a_log_line(limited, tenants):
    _, other, other_uri = tenants
    forged = "x\nFORGED line"
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(uri_with(other_uri, user=forged, password="wrong"), connect_timeout=10)
    assert "password authentication failed for user" in str(info.value), str(info.value)
    deadline = time.monotonic() + 10
    while True:
        log = limited.log_text()
        if r"x\nFORGED line" in log or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r'password authentication failed for user "x\nFORGED line"' in log, log[-3000:]
    assert not [line for line in log.splitlines() if line.startswith("FORGED")]


def refusal(uri: str) -> str:
    r = psql(uri, "SELECT 1")
    assert r.returncode != 0, r.stdout
    # libpq prefixes the server's message with the address it tried.
    return r.stderr.strip().splitlines()[-1].split("FATAL:", 1)[-1].strip()


def test_wrong_password_answers_reveal_neither_pool_nor_owner(limited, tenants):
    victim, other, other_uri = tenants
    client = limited.client()
    # A pool of another user of the same service, and one of another service's admin.
    ok(client, client.create_dbaas_postgres_user(service_name=other.name, username="bob"))
    bobs = unique("bp")
    ok(client, client.create_dbaas_pg_connection_pool(
        service_name=other.name, name=bobs, database_name="defaultdb", username="bob"))
    later = unique("later")
    app_pw = reveal(client, other.name, "app")

    apps = urlsplit(other_uri).path.lstrip("/")

    def answers(user: str) -> dict[str, str]:
        return {pool: refusal(uri_with(other_uri, user=user, password="wrong", dbname=pool))
                for pool in (apps, bobs, later, "nosuchpool")}

    # Before the pool `later` exists, and after: the same answer for every pool.
    for round_ in ("before", "after"):
        for user in ("app", "bob", victim.admin_user, "nobody_here"):
            got = answers(user)
            expected = f'password authentication failed for user "{user}"'
            assert set(got.values()) == {expected}, (round_, user, got)
        if round_ == "before":
            ok(client, client.create_dbaas_pg_connection_pool(
                service_name=other.name, name=later, database_name="defaultdb", username="bob"))
    # With the right password the pooler may say what is wrong.
    assert refusal(uri_with(other_uri, password=app_pw, dbname="nosuchpool")) == \
        'pool "nosuchpool" does not exist'
    assert refusal(uri_with(other_uri, password=app_pw, dbname=bobs)) == \
        f'user "app" may not use pool "{bobs}"'
