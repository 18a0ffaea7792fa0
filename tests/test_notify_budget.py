"""Bounded memory for notifications (issue 15).

The attack: clients LISTEN through a transaction pool and never read; a sender floods their
channels with ~8 KB notifications. pgbay used to queue every notification for every such client
(~105 MB per client, kept after they left, a warning line per dropped notification). Now each
client has a byte budget (`--notify-client-budget`) and the pooler one in total
(`--notify-total-budget`): a client past its budget is disconnected with FATAL 53200 naming the
budget, one log line each (rate-limited), a client that reads keeps receiving, and the memory is
given back when the slow clients leave.

The slow clients are raw protocol clients (TLS + SCRAM in a few lines) with a small SO_RCVBUF set
before connecting, so that the kernel buffers little and the pooler's own queue fills quickly.
pgbay's memory is read from /proc/<pid>/status (VmRSS).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import secrets
import socket
import ssl
import struct
import threading
import time
from urllib.parse import unquote, urlsplit

import psycopg
import pytest

from conftest import PgbayServer, find_pool, ok, provision, unique

CLIENT_BUDGET = 512 * 1024
TOTAL_BUDGET = 64 * 1024 * 1024
SLOW_CLIENTS = 20
PAYLOAD = 7900
# Notifications per slow client's channel: far past its budget and the kernel's buffers
# (20 x 600 x 8 KB = 96 MB through the pooler).
PER_CHANNEL = 600
BATCH = 100
# Lines about disconnected clients per 10 s (the pooler's `notify::budget::LOG_BURST`).
LOG_BURST = 10
MiB = 1024 * 1024


def rss(pid: int) -> int:
    """Resident set size of a process, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def eventually(cond, timeout: float, what: str, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(step)


# --------------------------------------------------------------------------------------------
# A raw PostgreSQL client: enough protocol to log in over TLS with SCRAM, LISTEN, and later read
# everything the pooler sent.


def _msg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


class RawClient:
    def __init__(self, uri: str, rcvbuf: int = 4096) -> None:
        u = urlsplit(uri)
        self.user, self.password = unquote(u.username), unquote(u.password)
        self.database = u.path.lstrip("/")
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Before connect, so that the window the client advertises stays small.
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        raw.settimeout(10)
        raw.connect((u.hostname, u.port))
        raw.sendall(struct.pack("!II", 8, 80877103))
        assert raw.recv(1) == b"S"
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.sock = ctx.wrap_socket(raw)
        self.buf = b""
        self._login()

    def _recv_msg(self) -> tuple[bytes, bytes]:
        while True:
            if len(self.buf) >= 5:
                (length,) = struct.unpack("!I", self.buf[1:5])
                if len(self.buf) >= 1 + length:
                    kind, body = self.buf[:1], self.buf[5 : 1 + length]
                    self.buf = self.buf[1 + length :]
                    return kind, body
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk

    def _login(self) -> None:
        params = b"user\0" + self.user.encode() + b"\0database\0" + self.database.encode() + b"\0\0"
        body = struct.pack("!I", 196608) + params
        self.sock.sendall(struct.pack("!I", len(body) + 4) + body)
        nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        first_bare = f"n=,r={nonce}"
        salted = None
        while True:
            kind, body = self._recv_msg()
            if kind == b"E":
                raise AssertionError(f"login refused: {parse_error(body)}")
            if kind == b"Z":
                return
            if kind != b"R":
                continue
            (code,) = struct.unpack("!I", body[:4])
            if code == 10:
                first = ("n,," + first_bare).encode()
                payload = b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first
                self.sock.sendall(_msg(b"p", payload))
            elif code == 11:
                server_first = body[4:].decode()
                attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
                salted = hashlib.pbkdf2_hmac(
                    "sha256", self.password.encode(), base64.b64decode(attrs["s"]),
                    int(attrs["i"]))
                final_bare = f"c=biws,r={attrs['r']}"
                auth = f"{first_bare},{server_first},{final_bare}".encode()
                client_key = hmac.digest(salted, b"Client Key", "sha256")
                signature = hmac.digest(hashlib.sha256(client_key).digest(), auth, "sha256")
                proof = bytes(a ^ b for a, b in zip(client_key, signature))
                final = f"{final_bare},p={base64.b64encode(proof).decode()}"
                self.sock.sendall(_msg(b"p", final.encode()))
            elif code in (0, 12):
                continue
            else:
                raise AssertionError(f"unexpected authentication request {code}")

    def query(self, sql: str) -> list[tuple[bytes, bytes]]:
        self.sock.sendall(_msg(b"Q", sql.encode() + b"\0"))
        return self.until_ready()

    def until_ready(self) -> list[tuple[bytes, bytes]]:
        """Every message up to and including the next ReadyForQuery: (type, body)."""
        got = []
        while True:
            kind, body = self._recv_msg()
            got.append((kind, body))
            if kind == b"Z":
                return got

    def drain(self, quiet: float = 5.0) -> tuple[int, dict | None, bool]:
        """Reads everything until the pooler closes the connection (or nothing arrives for
        `quiet` seconds): (notifications read, the ErrorResponse's fields if one came, closed)."""
        self.sock.settimeout(quiet)
        notes, error = 0, None
        try:
            while True:
                kind, body = self._recv_msg()
                if kind == b"A":
                    notes += 1
                elif kind == b"E":
                    error = parse_error(body)
        except (EOFError, ssl.SSLError, ConnectionError):
            return notes, error, True
        except socket.timeout:
            return notes, error, False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def parse_error(body: bytes) -> dict:
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return fields


# --------------------------------------------------------------------------------------------
# Fixtures: a pgbay of its own, started with small budgets through the env twins of the flags.


@pytest.fixture(scope="module")
def node():
    env = {"PGBAY_NOTIFY_CLIENT_BUDGET": str(CLIENT_BUDGET),
           "PGBAY_NOTIFY_TOTAL_BUDGET": str(TOTAL_BUDGET)}
    with PgbayServer("notify", env=env) as srv:
        yield srv


@pytest.fixture(scope="module")
def setup(node):
    client = node.client()
    svc = provision(client, unique("ntf"))
    ok(client, client.create_dbaas_pg_database(service_name=svc.name, database_name="app"))
    ok(client, client.create_dbaas_postgres_user(service_name=svc.name, username="appuser"))
    name = unique("ntfpool")
    ok(client, client.create_dbaas_pg_connection_pool(
        service_name=svc.name, name=name, database_name="app", mode="transaction", size=2,
        username="appuser"))
    pool = find_pool(client.get_dbaas_service_pg(name=svc.name), name)
    return svc, pool["connection-uri"]


class Reader(threading.Thread):
    """A client that LISTENs through the pool and reads everything that arrives."""

    def __init__(self, uri: str, channel: str) -> None:
        super().__init__(daemon=True)
        self.conn = psycopg.connect(uri, autocommit=True)
        self.conn.execute(f"LISTEN {channel}")
        self.count = 0
        self.stop = threading.Event()
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                for _ in self.conn.notifies(timeout=0.2):
                    self.count += 1
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e


class Peak(threading.Thread):
    """Samples a process's RSS until stopped; keeps the highest."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak = pid, rss(pid)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.05):
            self.peak = max(self.peak, rss(self.pid))


def flood(direct_uri: str, channels: int, per_channel: int) -> None:
    """Unique ~8 KB notifications, round-robin over ch0..ch{channels-1} (NOTIFY in one
    transaction folds duplicates, hence the number in each payload)."""
    total = channels * per_channel
    with psycopg.connect(direct_uri, autocommit=True) as conn:
        for start in range(0, total, BATCH):
            conn.execute(
                "SELECT count(pg_notify('ch' || mod(i, %s::int), i || repeat('x', %s::int))) "
                "FROM generate_series(%s::int, %s::int) i",
                (channels, PAYLOAD, start, min(start + BATCH, total) - 1))


def budget_lines(node) -> list[str]:
    return [line for line in node.log_text().splitlines() if "notification budget" in line]


def test_clients_that_never_read_are_disconnected_and_memory_comes_back(node, setup):
    svc, pool_uri = setup
    pid = node.proc.pid
    # Warm up the pool's listener and the allocator before the baseline.
    warm = Reader(pool_uri, "warm")
    warm.start()
    with psycopg.connect(svc.uri_for(dbname="app"), autocommit=True) as conn:
        conn.execute("SELECT pg_notify('warm', i || repeat('x', 7900)) FROM generate_series(1, 50) i")
    eventually(lambda: warm.count == 50, 10, "warm-up notifications")
    warm.stop.set()
    warm.join(5)
    warm.conn.close()
    base = rss(pid)

    slow = []
    for i in range(SLOW_CLIENTS):
        c = RawClient(pool_uri)
        c.query(f"LISTEN ch{i}")
        slow.append(c)
    reader = Reader(pool_uri, "ch0")
    reader.start()
    peak = Peak(pid)
    peak.start()
    try:
        flood(svc.uri_for(dbname="app"), SLOW_CLIENTS, PER_CHANNEL)
        with psycopg.connect(svc.uri_for(dbname="app"), autocommit=True) as conn:
            conn.execute("NOTIFY ch0, 'end'")
        # The reader on the same channel as slow client 0 got every one of them, the last
        # after the listener had offered the whole flood to everyone.
        eventually(lambda: reader.count >= PER_CHANNEL + 1 or reader.error, 60,
                   "the reading client's notifications")
        assert reader.error is None, reader.error
        assert reader.count == PER_CHANNEL + 1
    finally:
        peak.stop.set()
        peak.join(5)
        print(f"\nRSS baseline {base / MiB:.1f} MiB, peak {peak.peak / MiB:.1f} MiB, "
              f"now {rss(pid) / MiB:.1f} MiB; reader got {reader.count}")
    grown = peak.peak - base
    # The old behaviour held every notification for every slow client: ~96 MB here. Now each
    # holds at most its budget (20 x 512 KiB = 10 MiB) plus what is in flight.
    assert grown < 40 * MiB, f"RSS grew by {grown / MiB:.1f} MiB during the flood"

    # Each slow client, reading at last, finds what the kernel held for it, then the FATAL.
    for i, c in enumerate(slow):
        notes, error, closed = c.drain()
        assert error is not None, f"slow client {i} got no error ({notes} notifications)"
        assert error["S"] == "FATAL"
        assert error["C"] == "53200"
        assert "notification budget" in error["M"]
        assert str(CLIENT_BUDGET) in error["M"]
        assert closed
        assert notes < PER_CHANNEL
        c.close()

    # At most one line per client, and fewer under a flood of them (rate-limited: 10 per 10 s);
    # no line per dropped notification.
    lines = budget_lines(node)
    assert 1 <= len(lines) <= LOG_BURST, "\n".join(lines)
    assert all("budget=\"client\"" in line and "53200" in line for line in lines)
    assert "one dropped" not in node.log_text()

    # The reader still receives.
    with psycopg.connect(svc.uri_for(dbname="app"), autocommit=True) as conn:
        conn.execute("NOTIFY ch0, 'after'")
    eventually(lambda: reader.count == PER_CHANNEL + 2, 10, "a notification after the flood")
    reader.stop.set()
    reader.join(5)
    reader.conn.close()

    # Memory comes back once they are gone.
    eventually(lambda: rss(pid) - base < 5 * MiB, 30,
               f"RSS back near its baseline of {base / MiB:.1f} MiB")


def test_notifications_held_for_a_block_count_against_the_budget(node, setup):
    """A transaction-mode client reads its notifications only after its block (as PostgreSQL
    delivers them), so the pooler holds them meanwhile: past the client's budget it is
    disconnected with 53200 before any of them reached it inside the block, and its
    transaction is rolled back (the pool's server connection is not left in it)."""
    svc, pool_uri = setup
    direct = svc.uri_for(dbname="app")
    c = RawClient(pool_uri, rcvbuf=1 << 20)
    try:
        c.query("LISTEN blk")
        assert c.query("BEGIN")[-1] == (b"Z", b"T")
        got = c.query("SELECT pg_advisory_xact_lock(4242)")
        assert got[-1] == (b"Z", b"T"), got
        with psycopg.connect(direct, autocommit=True) as conn:
            # The block holds the lock: another session cannot take it.
            assert conn.execute("SELECT pg_try_advisory_lock(4242)").fetchone()[0] is False
            # ~1 MB for the client's channel, twice its budget, while its block is open.
            conn.execute(
                "SELECT count(pg_notify('blk', i || repeat('x', %s::int))) "
                "FROM generate_series(1, 128) i", (PAYLOAD,))
        notes, error, closed = c.drain()
        assert error is not None and closed, (notes, error, closed)
        assert error["C"] == "53200" and "notification budget" in error["M"], error
        assert notes == 0, f"{notes} notifications reached the client inside its block"
    finally:
        c.close()
    with psycopg.connect(direct, autocommit=True) as conn:
        eventually(
            lambda: conn.execute("SELECT pg_try_advisory_lock(4242)").fetchone()[0], 10,
            "the disconnected client's transaction to end")
        conn.execute("SELECT pg_advisory_unlock(4242)")
    # The pool's connections serve a new client outside any transaction.
    after = RawClient(pool_uri)
    try:
        for _ in range(4):
            assert after.query("SELECT 1")[-1] == (b"Z", b"I")
    finally:
        after.close()
