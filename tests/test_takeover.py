"""Restart without refusing anyone (issue 16): a second `pgbay serve` on the same data dir takes
over the running one's sockets (the API's and each pooler port's) and clusters. Meanwhile
`pgbench -C` (a login per transaction) sees no refused connection and no failed transaction, and
clients on long connections are closed only between transactions, with 57P01. SIGTERM without a
successor drains the same way.
"""

import os
import signal
import subprocess
import threading
import time

import psycopg
import pytest

from conftest import (
    API_KEY,
    API_SECRET,
    STOP_TIMEOUT,
    PgbayServer,
    find_pool,
    ok,
    provision,
    unique,
)


def successor_of(srv: PgbayServer) -> subprocess.Popen:
    """Starts a second `pgbay serve` with the same data dir, API address and flags as `srv`
    (the API's port as `srv` bound it, where `srv` was told to pick one)."""
    args = list(srv.proc.args)
    args[args.index("--api-listen") + 1] = f"127.0.0.1:{srv.api_port}"
    env = dict(os.environ)
    env.update(PGBAY_API_KEY=API_KEY, PGBAY_API_SECRET=API_SECRET, RUST_BACKTRACE="1")
    env.update(srv.env)
    log = open(srv.log_path, "ab")
    log.write(b"\n===== test harness: starting the successor\n")
    log.flush()
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def node():
    srv = PgbayServer("takeover")
    try:
        srv.start()
        yield srv
    finally:
        srv.close()


@pytest.fixture(scope="module")
def pool_uri(node):
    c = node.client()
    svc = provision(c, unique("tko"), plan="hobbyist-2")
    name = unique("p")
    ok(c, c.create_dbaas_pg_connection_pool(
        service_name=svc.name, name=name, database_name="defaultdb", mode="transaction",
        size=8, username=svc.admin_user))
    pool = find_pool(c.get_dbaas_service_pg(name=svc.name), name)
    with psycopg.connect(svc.uri, autocommit=True) as conn:
        conn.execute("CREATE TABLE steps (txn int, step int)")
    init = subprocess.run(["pgbench", "-i", "-s", "1", "-q", svc.uri], capture_output=True,
                          text=True, timeout=120)
    assert init.returncode == 0, init.stderr
    return pool["connection-uri"]


class LongClient(threading.Thread):
    """A client on one long connection running two-step transactions (BEGIN; step 1; a pause;
    step 2; COMMIT) until its connection is closed. Records what it committed and the error that
    ended it."""

    def __init__(self, uri: str, ident: int):
        super().__init__(daemon=True)
        self.uri, self.client_no = uri, ident
        self.committed = 0
        self.error: psycopg.Error | None = None
        self.failed_inside = False
        self.stop = threading.Event()

    def run(self):
        with psycopg.connect(self.uri, autocommit=True) as conn:
            n = 0
            while not self.stop.is_set():
                n += 1
                txn = self.client_no * 100000 + n
                try:
                    conn.execute("BEGIN")
                except psycopg.Error as e:
                    self.error = e
                    return
                try:
                    conn.execute("INSERT INTO steps VALUES (%s, 1)", (txn,))
                    conn.execute("SELECT pg_sleep(0.2)")
                    conn.execute("INSERT INTO steps VALUES (%s, 2)", (txn,))
                    conn.execute("COMMIT")
                except psycopg.Error as e:
                    # Closed in the middle of a transaction: what the drain must never do.
                    self.error, self.failed_inside = e, True
                    return
                self.committed += 1


def test_takeover_refuses_no_one_and_closes_only_between_transactions(node, pool_uri):
    pids_before = sorted(node.postmaster_pids())
    assert pids_before
    long_clients = [LongClient(pool_uri, i) for i in range(1, 4)]
    for t in long_clients:
        t.start()
    pgbench = subprocess.Popen(
        ["pgbench", "-n", "-C", "-S", "-c", "4", "-T", "14", pool_uri],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Let every client get going, then take over.
    wait_for(lambda: all(t.committed >= 2 for t in long_clients), 30, "long clients to commit")
    old = node.proc
    new = successor_of(node)
    try:
        rc = old.wait(timeout=STOP_TIMEOUT + 30)
        assert rc == 0, f"the predecessor exited with {rc}\n{node.log_tail()}"
        node.proc = new
        out, err = pgbench.communicate(timeout=60)
    except BaseException:
        pgbench.kill()
        new.kill()
        raise
    # pgbench -C: every connection accepted and logged in, every transaction done.
    assert pgbench.returncode == 0, f"pgbench -C failed:\n{out}\n{err}\n{node.log_tail()}"
    assert "number of failed transactions: 0" in out, out
    assert "error" not in err.lower(), err
    # Long connections: each closed with 57P01 at the start of a transaction, never inside one.
    for t in long_clients:
        t.join(timeout=60)
        assert not t.is_alive()
        assert t.error is not None, "a long connection survived the predecessor's exit"
        assert not t.failed_inside, f"closed inside a transaction: {t.error!r}"
        assert t.error.sqlstate == "57P01", repr(t.error)
        assert "restarting" in str(t.error), str(t.error)
    with psycopg.connect(pool_uri, autocommit=True) as conn:
        # Every transaction a long client began was completed: no step 1 without its step 2.
        half = conn.execute(
            "SELECT count(*) FROM steps GROUP BY txn HAVING count(*) <> 2").fetchall()
        assert half == []
        assert conn.execute("SELECT 1").fetchone() == (1,)
    # The successor serves the same API port, adopted the same clusters (not restarted).
    assert node.client().list_dbaas_services()["dbaas-services"]
    assert sorted(node.postmaster_pids()) == pids_before
    assert "took over the sockets of the running pgbay" in node.log_text()


def test_sigterm_drains_clients_between_transactions(node, pool_uri):
    t = LongClient(pool_uri, 9)
    t.start()
    wait_for(lambda: t.committed >= 2, 30, "the long client to commit")
    node.proc.send_signal(signal.SIGTERM)
    rc = node.proc.wait(timeout=STOP_TIMEOUT + 30)
    assert rc == 0
    t.join(timeout=30)
    assert t.error is not None and not t.failed_inside, repr(t.error)
    assert t.error.sqlstate == "57P01" and "shutting down" in str(t.error), repr(t.error)
    node.start()
