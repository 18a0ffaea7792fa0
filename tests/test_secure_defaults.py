"""Secure defaults (issue 8): TLS on every user connection, names that PostgreSQL keeps whole,
statement mode that refuses a transaction block cleanly, and a default database that cannot be
pulled from under the service's URIs.

Real clients only: psql and psycopg against the pooler port and the service's own PostgreSQL port.
"""

from __future__ import annotations

import socket
import struct
from urllib.parse import unquote, urlsplit

import psycopg
import pytest

from conftest import api_error, find_pool, ok, psql, unique


def with_sslmode(uri: str, mode: str) -> str:
    return uri.replace("sslmode=require", f"sslmode={mode}")


@pytest.fixture(scope="module")
def pool(client, service):
    name = unique("tls")
    ok(client, client.create_dbaas_pg_connection_pool(
        service_name=service.name, name=name, database_name="defaultdb", mode="transaction",
        size=2))
    return find_pool(client.get_dbaas_service_pg(name=service.name), name)


# --------------------------------------------------------------------------------------------
# TLS required


def plaintext_startup_error(uri: str) -> dict:
    """Sends a plaintext StartupMessage to the URI's host and port; returns the fields of the
    ErrorResponse that answers it."""
    u = urlsplit(uri)
    params = b"user\0" + unquote(u.username).encode() + b"\0database\0" + u.path[1:].encode() \
        + b"\0\0"
    body = struct.pack("!I", 196608) + params
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        s.sendall(struct.pack("!I", len(body) + 4) + body)
        head = s.recv(5, socket.MSG_WAITALL)
        assert head[:1] == b"E", head
        (length,) = struct.unpack("!I", head[1:])
        payload = s.recv(length - 4, socket.MSG_WAITALL)
    return {f[:1].decode(): f[1:].decode() for f in payload.split(b"\0") if f}


def test_pooler_refuses_a_plaintext_login_with_28000(pool):
    uri = with_sslmode(pool["connection-uri"], "disable")
    with pytest.raises(psycopg.OperationalError) as e:
        psycopg.connect(uri, connect_timeout=10)
    assert "SSL required" in str(e.value) and "TLS" in str(e.value), str(e.value)
    # libpq does not hand out the SQLSTATE of a failed startup: read the ErrorResponse itself.
    fields = plaintext_startup_error(pool["connection-uri"])
    assert fields["S"] == "FATAL" and fields["C"] == "28000", fields
    assert pool["name"] in fields["M"], fields
    r = psql(uri, "SELECT 1")
    assert r.returncode != 0 and "SSL" in r.stderr, r.stderr


def test_pooler_accepts_require_and_prefer(pool):
    for mode in ("require", "prefer"):
        with psycopg.connect(with_sslmode(pool["connection-uri"], mode)) as conn:
            assert conn.pgconn.ssl_in_use
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_service_port_refuses_plaintext_tcp(service):
    uri = with_sslmode(service.uri, "disable")
    with pytest.raises(psycopg.OperationalError) as e:
        psycopg.connect(uri, connect_timeout=10)
    assert "no encryption" in str(e.value), str(e.value)
    r = psql(uri, "SELECT 1")
    assert r.returncode != 0 and "no encryption" in r.stderr, r.stderr
    with psycopg.connect(service.uri) as conn:
        assert conn.pgconn.ssl_in_use


def test_service_port_accepts_verify_full(client, service, tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text(client.get_dbaas_ca_certificate()["certificate"])
    uri = with_sslmode(service.uri, f"verify-full&sslrootcert={ca}")
    with psycopg.connect(uri) as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                            ).fetchone() == (True,)


def test_pooler_reaches_a_local_cluster_over_its_unix_socket(service, pool):
    with psycopg.connect(pool["connection-uri"]) as conn:
        row = conn.execute("SELECT client_addr IS NULL, inet_server_addr() IS NULL"
                           " FROM pg_stat_activity WHERE pid = pg_backend_pid()").fetchone()
    # A Unix-socket backend has no client address and no server address.
    assert row == (True, True), row


# --------------------------------------------------------------------------------------------
# Identifiers in bytes


def two_byte_name(chars: int) -> str:
    return ("é" * chars)


@pytest.mark.parametrize("field,call", [
    ("database-name", lambda c, s, n: c.create_dbaas_pg_database(
        service_name=s, database_name=n)),
    ("username", lambda c, s, n: c.create_dbaas_postgres_user(service_name=s, username=n)),
    ("name", lambda c, s, n: c.create_dbaas_pg_connection_pool(
        service_name=s, name=n, database_name="defaultdb")),
], ids=["database", "user", "pool"])
def test_names_longer_than_63_bytes_are_refused(client, service, field, call):
    name = two_byte_name(32)  # 32 characters, 64 bytes
    before = client.get_dbaas_service_pg(name=service.name)
    with api_error(400, field, "63 bytes"):
        call(client, service.name, name)
    after = client.get_dbaas_service_pg(name=service.name)
    for k in ("databases", "users", "connection-pools"):
        assert after.get(k) == before.get(k)


def test_a_63_byte_name_is_kept_whole_by_postgresql(client, service):
    name = "d" + two_byte_name(31)  # 32 characters, 63 bytes
    ok(client, client.create_dbaas_pg_database(service_name=service.name, database_name=name))
    try:
        with psycopg.connect(service.uri) as conn:
            assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s",
                                (name,)).fetchone() == (1,)
    finally:
        ok(client, client.delete_dbaas_pg_database(service_name=service.name,
                                                   database_name=name))


# --------------------------------------------------------------------------------------------
# Statement mode and transaction blocks


def test_statement_mode_refuses_begin_with_one_error(client, service):
    name = unique("stmt")
    ok(client, client.create_dbaas_pg_connection_pool(
        service_name=service.name, name=name, database_name="defaultdb", mode="statement",
        size=2))
    uri = find_pool(client.get_dbaas_service_pg(name=service.name), name)["connection-uri"]
    with psycopg.connect(uri, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.ActiveSqlTransaction) as e:
            conn.execute("BEGIN")
        assert e.value.sqlstate == "25001"
        assert "statement" in str(e.value)
        # The client stays usable, outside any transaction.
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with psycopg.connect(uri) as conn:  # psycopg's own implicit BEGIN
        with pytest.raises(psycopg.errors.ActiveSqlTransaction):
            conn.execute("SELECT 1")


# --------------------------------------------------------------------------------------------
# The default database


def test_default_database_cannot_be_deleted(client, service):
    with api_error(409, "defaultdb"):
        client.delete_dbaas_pg_database(service_name=service.name, database_name="defaultdb")
    assert "defaultdb" in client.get_dbaas_service_pg(name=service.name)["databases"]
