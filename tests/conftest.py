"""Fixtures and helpers of the pgbay end-to-end suite.

Every test drives a real `pgbay serve` process (the binary named by `PGBAY_BIN`) through the
official Exoscale client (`exoscale.api.v2.Client`), and checks the PostgreSQL side with real
clients (psql, psycopg). Nothing is mocked.

Set PGBAY_TEST_KEEP=1 to keep each server's work dir (data dir and `pgbay.log`) after the run.

The session-scoped `server` is shared by most tests, and so is one provisioned `service`
(provisioning runs initdb, which costs seconds). Tests that must kill pgbay start their own
`PgbayServer` on their own data dir and port window.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import pytest
import requests
from exoscale.api.exceptions import ExoscaleAPIAuthException, ExoscaleAPIException
from exoscale.api.v2 import Client
from exoscale_auth import ExoscaleV2Auth

REPO = Path(__file__).resolve().parent.parent
PGBAY_BIN = os.environ.get("PGBAY_BIN") or str(REPO / "target" / "debug" / "pgbay")
PSQL = shutil.which("psql") or "/usr/lib/postgresql/15/bin/psql"

API_KEY = "EXOpgbaytestkey0123456789abcdef"
API_SECRET = "pgbay-test-secret-" + "s3cr3t" * 4

# Service clusters and pooler listeners of each server come from its own window of this span, so
# that servers of one session, and concurrent sessions on the machine, never compete for a port.
# The span is below the kernel's ephemeral range (net.ipv4.ip_local_port_range, 32768-60999 by
# default): a client connection's local port is never one a server is about to listen on.
def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


PORT_SPAN = (22000, min(32000, _ephemeral_low()))
PORT_WINDOW = 200

# Bounds of the polling loops (they bound waiting; no assertion is about how long anything took).
READY_TIMEOUT = 60.0
OPERATION_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0

# Servers alive right now, so that a failing test's report carries their log tails.
LIVE_SERVERS: list["PgbayServer"] = []


# --------------------------------------------------------------------------------------------
# Ports


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class PortWindow:
    """A range of ports reserved for one pgbay server (its `--port-range`).

    The reservation is an flock on a file named after the window, held while the server may use
    it, so that two pytest sessions running at once on the machine never pick the same window.
    """

    def __init__(self) -> None:
        lo_span, hi_span = PORT_SPAN
        starts = list(range(lo_span, hi_span - PORT_WINDOW + 1, PORT_WINDOW))
        random.shuffle(starts)
        for start in starts:
            lock_path = Path(tempfile.gettempdir()) / f"pgbay-test-ports-{start}.lock"
            fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            if all(_port_is_free(p) for p in range(start, start + PORT_WINDOW)):
                self.lo, self.hi, self._fd = start, start + PORT_WINDOW - 1, fd
                return
            os.close(fd)
        raise RuntimeError(f"no free port window in {PORT_SPAN[0]}-{PORT_SPAN[1] - 1}")

    def __contains__(self, port: int) -> bool:
        return self.lo <= port <= self.hi

    def __str__(self) -> str:
        return f"{self.lo}-{self.hi}"

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


_spare: "PortWindow | None" = None
_spare_next = 0


def spare_port() -> int:
    """A port of a window this session holds (`PortWindow`) that no test was given yet and
    nothing listens on: for a server a test starts itself on a port it must name beforehand (a
    source PostgreSQL, an exporter, the README's pgbay), or a port that must stay closed. Held by
    the window's reservation, never picked free and let go."""
    global _spare, _spare_next
    while True:
        if _spare is None or _spare_next > _spare.hi:
            # A used-up window stays held until the session ends.
            _spare = PortWindow()
            _spare_next = _spare.lo
        port = _spare_next
        _spare_next += 1
        if _port_is_free(port):
            return port


def port_accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def connect_many(port: int, count: int, timeout: float, bound: float = 60.0):
    """Opens up to `count` TCP connections to 127.0.0.1:`port` (each connect bounded by
    `timeout`), yielding each as it is connected. A refused or timed-out connect is skipped, and
    opening stops after `bound` seconds: a server that stops accepting makes connects time out.
    The caller closes what it got."""
    deadline = time.monotonic() + bound
    for _ in range(count):
        if time.monotonic() > deadline:
            return
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        except OSError:
            continue
        yield s


def raise_own_nofile(need: int) -> None:
    """Lets this process open `need` descriptors (for the flood tests), or skips the test when
    the hard limit is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"this test needs {need} descriptors, the hard limit is {hard}")
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


# --------------------------------------------------------------------------------------------
# The pgbay server process


class PgbayServer:
    """One `pgbay serve` process on its own data dir, API port and port window.

    `env` is added to the environment pgbay starts with (the `PGBAY_*` env twins of its flags),
    without touching this process's own. `nofile` starts it under `prlimit --nofile=N:N`, which
    execs pgbay: `proc.pid` stays pgbay's own pid.

    `start()` may be called again after `kill9()` or `stop()`: the new process reuses the data dir,
    the port window, `env` and `nofile` (a restart), on a fresh API port. `close()` stops the
    process and kills any PostgreSQL cluster left running under the data dir. As a context
    manager, the server is started on entry (closed again if it does not come up) and closed on
    exit.
    """

    def __init__(self, label: str, env: dict[str, str] | None = None,
                 nofile: int | None = None, public_host: str = "127.0.0.1",
                 ports: "PortWindow | None" = None, api_listen: str = "127.0.0.1:0") -> None:
        # The clusters run as their services' OS users when we are root: every ancestor of the
        # data dir must be traversable by them, which a 0700 temp dir is not.
        self.workdir = Path(tempfile.mkdtemp(prefix=f"pgbay-test-{label}-"))
        os.chmod(self.workdir, 0o755)
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "pgbay.log"
        # Nodes of one store share one window (a service's ports are unique across them).
        self.ports = ports or PortWindow()
        self.public_host = public_host
        self.api_port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.label = label
        self.env = dict(env or {})
        self.nofile = nofile
        # Port 0 (the default): pgbay binds a port of its own choosing and says which.
        self.api_listen = api_listen

    def __enter__(self) -> "PgbayServer":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def origin(self) -> str:
        """Scheme, host and port of the API (`/metrics` and the web console live here)."""
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def url(self) -> str:
        return f"{self.origin}/v2"

    @property
    def verify(self) -> bool | str:
        """What `requests` verifies the API's certificate with (`verify=`)."""
        return True

    def client(self, key: str = API_KEY, secret: str = API_SECRET) -> Client:
        return Client(key, secret, url=self.url)

    def start(self) -> None:
        if not os.access(PGBAY_BIN, os.X_OK):
            raise RuntimeError(f"pgbay binary not found at {PGBAY_BIN} (set PGBAY_BIN)")
        limit = []
        if self.nofile is not None:
            prlimit = shutil.which("prlimit")
            if prlimit is None:
                pytest.skip("prlimit (util-linux) is not installed")
            limit = [prlimit, f"--nofile={self.nofile}:{self.nofile}", "--"]
        # pgbay binds a port of its own choosing and says which (`_wait_ready`).
        self.api_port = None
        env = dict(os.environ)
        env.update(
            PGBAY_API_KEY=API_KEY,
            PGBAY_API_SECRET=API_SECRET,
            RUST_BACKTRACE="1",
        )
        env.update(self.env)
        cmd = limit + [
            PGBAY_BIN,
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--api-listen",
            self.api_listen,
            "--public-host",
            self.public_host,
            "--port-range",
            str(self.ports),
        ]
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== test harness: starting {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        if self not in LIVE_SERVERS:
            LIVE_SERVERS.append(self)
        self._wait_ready()

    def _bound_api_port(self) -> int | None:
        """The API port pgbay's current start says it serves on, once it said so."""
        try:
            text = self.log_text()
        except OSError:
            return None
        this_start = text[text.rfind("===== test harness: starting"):]
        m = re.search(r"pgbay serving api=127\.0\.0\.1:(\d+)", this_start)
        return int(m.group(1)) if m else None

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"pgbay exited with {self.proc.returncode} before answering\n{self.log_tail()}"
                )
            if self.api_port is None:
                self.api_port = self._bound_api_port()
                if self.api_port is None:
                    time.sleep(0.1)
                    continue
            try:
                r = requests.get(
                    f"{self.url}/dbaas-service",
                    auth=ExoscaleV2Auth(API_KEY, API_SECRET),
                    verify=self.verify,
                    timeout=5,
                )
                if r.status_code == 200:
                    return
                if r.status_code == 403:
                    # Up, but refusing what the official signer sends: waiting will not help.
                    raise RuntimeError(
                        "pgbay refuses a request signed by exoscale_auth.ExoscaleV2Auth with the "
                        f"key/secret it was given: {r.status_code} {r.text}\n{self.log_tail()}"
                    )
                last = f"{r.status_code} {r.text[:200]}"
            except OSError as e:
                # requests' errors, and a CA file `verify` names that pgbay has not written yet.
                last = repr(e)
            time.sleep(0.1)
        raise RuntimeError(
            f"pgbay API not ready after {READY_TIMEOUT}s ({last})\n{self.log_tail()}"
        )

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        """SIGKILL pgbay itself (not its clusters): a crash."""
        assert self.running(), "pgbay is not running"
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT)
        self._log_marker("killed with SIGKILL")

    def stop(self) -> int | None:
        """SIGTERM, bounded wait, then SIGKILL. Returns the exit code of a graceful stop."""
        if not self.running():
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=STOP_TIMEOUT)
            self._log_marker(f"stopped by SIGTERM, exit code {rc}")
            return rc
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)
            self._log_marker("did not stop on SIGTERM: killed with SIGKILL")
            return None

    def postmaster_pids(self) -> list[int]:
        """Pids of live PostgreSQL postmasters whose data directory is under our data dir."""
        pids = []
        if not self.data_dir.exists():
            return pids
        for pidfile in self.data_dir.rglob("postmaster.pid"):
            try:
                pid = int(pidfile.read_text().splitlines()[0])
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except (OSError, ValueError, IndexError):
                continue
            if b"postgres" in cmdline:
                pids.append(pid)
        return pids

    def helper_pids(self) -> list[int]:
        """Pids of live Patroni and etcd processes pgbay started for this data dir (their command
        lines name a file under it)."""
        pids = []
        marker = str(self.data_dir).encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if marker in cmdline and (b"patroni" in cmdline or b"etcd" in cmdline):
                pids.append(int(proc.name))
        return pids

    def kill_clusters(self) -> None:
        for pid in self.helper_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in self.postmaster_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + STOP_TIMEOUT
        while self.postmaster_pids() and time.monotonic() < deadline:
            time.sleep(0.1)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self.kill_clusters()
            self.remove_service_users()
            self.ports.release()
            if self in LIVE_SERVERS:
                LIVE_SERVERS.remove(self)
            if os.environ.get("PGBAY_TEST_KEEP"):
                print(f"\nkept {self.workdir} (PGBAY_TEST_KEEP)")
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def remove_service_users(self) -> None:
        """Removes the OS users pgbay (as root) made for the services still on the data dir: the
        owners of their directories, named `pgbay-…`. Deleted services took theirs along."""
        services = self.data_dir / "services"
        if os.geteuid() != 0 or not services.is_dir():
            return
        import pwd

        for d in services.iterdir():
            try:
                name = pwd.getpwuid(d.lstat().st_uid).pw_name
            except (OSError, KeyError):
                continue
            if name.startswith("pgbay-"):
                subprocess.run(["userdel", name], capture_output=True, timeout=60)

    def log_text(self) -> str:
        """Everything pgbay (and the harness's markers) wrote to `pgbay.log` so far."""
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_text()
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _log_marker(self, what: str) -> None:
        with open(self.log_path, "ab") as log:
            log.write(f"===== test harness: pgbay {what}\n".encode())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for srv in LIVE_SERVERS:
            rep.sections.append((f"pgbay log tail ({srv.label})", srv.log_tail()))


# --------------------------------------------------------------------------------------------
# API helpers


def seeds_from_env(default: range) -> range:
    """The seeds of a randomized test: `default`, or PGBAY_FUZZ_SEEDS=FIRST-LAST (inclusive)."""
    spec = os.environ.get("PGBAY_FUZZ_SEEDS")
    if not spec:
        return default
    first, _, last = spec.partition("-")
    return range(int(first), int(last or first) + 1)


def wait_for(what, timeout, check, every=0.2):
    """Polls `check` until it returns something truthy (returned), bounded by `timeout` seconds;
    the last exception it raised is reported on timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            got = check()
            if got:
                return got
        except Exception as e:  # noqa: BLE001 - reported on timeout
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(every)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_op(client: Client, op: dict, timeout: float = OPERATION_TIMEOUT) -> dict:
    """Poll an operation until it leaves `pending` (bounded); returns its final form.

    `Client.wait()` sleeps at least 3 s between polls; the suite uses it where the client's own
    waiting is the point, and this faster loop elsewhere.
    """
    assert isinstance(op, dict) and "id" in op, f"not an operation: {op!r}"
    deadline = time.monotonic() + timeout
    cur = op
    while cur.get("state") == "pending":
        if time.monotonic() > deadline:
            raise AssertionError(f"operation {op['id']} still pending after {timeout}s: {cur}")
        time.sleep(0.2)
        cur = client.get_operation(id=op["id"])
    return cur


def ok(client: Client, op: dict) -> dict:
    """The operation reaches `success`, and has the documented shape."""
    assert_operation_shape(op)
    final = wait_op(client, op)
    assert final["state"] == "success", f"operation failed: {final}"
    assert final["id"] == op["id"]
    return final


def assert_operation_shape(op: dict) -> None:
    assert isinstance(op, dict), op
    uuid.UUID(op["id"])
    assert op["state"] in {"pending", "success", "failure", "timeout"}, op
    ref = op.get("reference")
    assert isinstance(ref, dict), f"operation without reference: {op}"
    for k in ("id", "link", "command"):
        assert k in ref, f"operation reference without {k}: {op}"
    assert "message" in op, f"operation without message: {op}"
    if op["state"] in {"failure", "timeout"}:
        assert op.get("reason"), f"failed operation without reason: {op}"


def _message_matches(message: str, words) -> list[str]:
    missing = []
    low = message.lower()
    for w in words:
        alts = w if isinstance(w, tuple) else (w,)
        if not any(a.lower() in low for a in alts):
            missing.append(" or ".join(map(repr, alts)))
    return missing


def check_error_response(resp: requests.Response, status: int, *words) -> str:
    """An error response: the status, a JSON body `{"message": ...}` naming each of `words`
    (a tuple among `words` means any one of its items)."""
    assert resp.status_code == status, f"expected {status}, got {resp.status_code}: {resp.text}"
    try:
        body = resp.json()
    except ValueError:
        raise AssertionError(f"error body is not JSON: {resp.text!r}") from None
    assert isinstance(body, dict) and isinstance(body.get("message"), str), body
    missing = _message_matches(body["message"], words)
    assert not missing, f"error message {body['message']!r} does not name {', '.join(missing)}"
    return body["message"]


@contextlib.contextmanager
def api_error(status: int, *words):
    """The client call in the block fails with `status`, and the message names each of `words`."""
    with pytest.raises(ExoscaleAPIException) as info:
        yield info
    exc = info.value
    assert exc.response is not None, f"no HTTP response: {exc}"
    if status == 403:
        assert isinstance(exc, ExoscaleAPIAuthException), repr(exc)
    check_error_response(exc.response, status, *words)


def signed(server: PgbayServer, method: str, path: str, body=None, **kw) -> requests.Response:
    """A request signed with the official EXO2-HMAC-SHA256 signer, for bodies that the generated
    client cannot send (malformed JSON, unknown fields). `body` is raw bytes/str or a JSON value."""
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    headers = {"Content-Type": "application/json"} if body is not None else {}
    return requests.request(
        method,
        f"{server.url}{path}",
        data=body,
        headers=headers,
        auth=ExoscaleV2Auth(API_KEY, API_SECRET),
        timeout=30,
        **kw,
    )


def metrics(server: PgbayServer) -> str:
    """The text of `/metrics`, which answers only the API key pair (as Prometheus' basic_auth
    sends it)."""
    r = requests.get(f"{server.origin}/metrics", auth=(API_KEY, API_SECRET),
                     verify=server.verify, timeout=10)
    assert r.status_code == 200, r.text[:500]
    return r.text


def component_port(svc: dict, name: str) -> int:
    comps = [c for c in svc.get("components", []) if c.get("component") == name]
    assert len(comps) == 1, f"expected one {name!r} component: {svc.get('components')}"
    # One node: its public host, 127.0.0.1; several nodes on one machine: 127.0.0.N.
    assert comps[0]["host"].startswith("127.0.0.") or comps[0]["host"] == "localhost", comps[0]
    return comps[0]["port"]


def find_pool(svc: dict, name: str) -> dict | None:
    pools = [p for p in svc.get("connection-pools") or [] if p["name"] == name]
    assert len(pools) <= 1, pools
    return pools[0] if pools else None


def user_names(svc: dict) -> list[str]:
    return [u["username"] for u in svc.get("users") or []]


def reveal(client: Client, service: str, user: str) -> str:
    r = client.reveal_dbaas_postgres_user_password(service_name=service, username=user)
    assert r.get("username", user) == user, r
    pw = r["password"]
    assert isinstance(pw, str) and pw, r
    return pw


def wait_service_running(client: Client, name: str, timeout: float = OPERATION_TIMEOUT) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        svc = client.get_dbaas_service_pg(name=name)
        if svc["state"] == "running":
            return svc
        if time.monotonic() > deadline:
            raise AssertionError(f"service {name} not running after {timeout}s: {svc['state']}")
        time.sleep(0.2)


# --------------------------------------------------------------------------------------------
# PostgreSQL side


def uri_with(uri: str, *, user: str | None = None, password: str | None = None,
             dbname: str | None = None) -> str:
    """The same URI with another user, password or database."""
    u = urlsplit(uri)
    user = quote(user if user is not None else unquote(u.username or ""), safe="")
    password = quote(password if password is not None else unquote(u.password or ""), safe="")
    path = "/" + quote(dbname, safe="") if dbname is not None else u.path
    netloc = f"{user}:{password}@{u.hostname}:{u.port}"
    return urlunsplit((u.scheme, netloc, path, u.query, u.fragment))


def psql(uri: str, sql: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PGCONNECT_TIMEOUT="10")
    return subprocess.run(
        [PSQL, uri, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def psql_ok(uri: str, sql: str) -> list[str]:
    """Run `sql` with psql; it must succeed. Returns the output lines (unaligned, tuples only)."""
    r = psql(uri, sql)
    assert r.returncode == 0, f"psql failed ({r.returncode}) on {sql!r}: {r.stderr}"
    return [line for line in r.stdout.splitlines() if line]


def assert_password_refused(uri: str) -> None:
    """Login fails with invalid_password (28P01). libpq does not expose the SQLSTATE of a failed
    startup, so the check is on the server's message for exactly that error code."""
    r = psql(uri, "SELECT 1")
    assert r.returncode != 0, "login with the old password still works"
    assert "password authentication failed for user" in r.stderr, r.stderr


# --------------------------------------------------------------------------------------------
# Shared fixtures


@pytest.fixture(scope="session")
def server():
    with PgbayServer("session") as srv:
        yield srv


@pytest.fixture(scope="session")
def client(server) -> Client:
    return server.client()


@dataclass
class Service:
    """A provisioned service as the tests see it."""

    name: str
    admin_user: str
    admin_password: str
    uri: str
    pg_port: int
    bouncer_port: int

    def uri_for(self, user=None, password=None, dbname=None) -> str:
        return uri_with(self.uri, user=user, password=password, dbname=dbname)


def provision(client: Client, name: str, **kwargs) -> Service:
    op = client.create_dbaas_service_pg(name=name, plan=kwargs.pop("plan", "startup-4"), **kwargs)
    ok(client, op)
    svc = wait_service_running(client, name)
    admin = urlsplit(svc["uri"]).username
    return Service(
        name=name,
        admin_user=admin,
        admin_password=reveal(client, name, admin),
        uri=svc["uri"],
        pg_port=component_port(svc, "pg"),
        bouncer_port=component_port(svc, "pgbouncer"),
    )


@pytest.fixture(scope="session")
def service(client) -> Service:
    """One service shared by the database, user and pool tests (unique object names per test)."""
    return provision(client, unique("shared"))


def pgbackrest_pids(server: PgbayServer, service: str, command: str | None = None) -> list[int]:
    """The pgBackRest processes running for `service` (their command line names its
    configuration), those running `command` (e.g. "backup") only when given."""
    conf = f"--config={server.data_dir / 'services' / service / 'pgbackrest.conf'}"
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True,
                         text=True).stdout
    pids = []
    for line in out.splitlines():
        pid, _, args = line.strip().partition(" ")
        words = args.split()
        if words and words[0].endswith("pgbackrest") and conf in words and (
                command is None or command in words):
            pids.append(int(pid))
    return pids


def schedule_now_and_away() -> tuple[dict, dict]:
    """A `backup-schedule` that is due now (this UTC hour and minute) and one twelve hours away.
    The scheduler backs up a service whose hour is now and whose minute has passed, once a day;
    in the hour's last half minute the next hour is waited for, so that "now" stays due for
    the scheduler's next looks at the clock."""
    import datetime
    wait_for("a UTC minute other than the hour's last half minute", 40, lambda: not (
        (t := datetime.datetime.now(datetime.timezone.utc)).minute == 59 and t.second >= 30))
    now = datetime.datetime.now(datetime.timezone.utc)
    return ({"backup-hour": now.hour, "backup-minute": now.minute},
            {"backup-hour": (now.hour + 12) % 24, "backup-minute": now.minute})


def delete_while_backing_up(server: PgbayServer, wait_for_backup) -> str:
    """Makes a service whose daily backup (about 150 MB) is due now, deletes it while that
    backup runs, and checks that no pgBackRest process of it outlives the deletion and that
    the ended backup is not counted against a service that is gone. Returns its name."""
    import psycopg
    c = server.client()
    now, away = schedule_now_and_away()
    svc = provision(c, unique("bkdel"), plan="hobbyist-2", backup_schedule=away)
    wait_for_backup(c, svc.name)
    with psycopg.connect(svc.uri, autocommit=True) as conn:
        conn.execute("CREATE TABLE filler AS SELECT i, md5(i::text) || md5((-i)::text) AS pad "
                     "FROM generate_series(1, 1500000) i")
    ok(c, c.update_dbaas_service_pg(name=svc.name, backup_schedule=now))
    wait_for("the scheduled backup to run", 120,
             lambda: pgbackrest_pids(server, svc.name, "backup"), every=0.05)
    ok(c, c.delete_dbaas_service(name=svc.name))
    assert pgbackrest_pids(server, svc.name) == []
    assert f'service="{svc.name}"' not in metrics(server)
    return svc.name
