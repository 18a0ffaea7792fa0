"""The API over TLS (`--api-tls`), `/metrics` behind the API key pair, and the name rules.

The attacks of issue 15, as they were tried: the API answered in clear (every user's password
crossed the network as plain HTTP), `/metrics` named every service, pool and user to anyone, a
pool could be named `pgbouncer` (then unreachable: it is the admin console's database), and names
with newlines broke SHOW output and log lines. Each test runs the attack against a real `pgbay
serve` and asserts that it now fails safely, and that the legitimate clients (the official
Exoscale client, the `pgbay` CLI, Prometheus' basic auth) work over HTTPS.

The servers here listen on 127.0.0.1, where the default is plain HTTP: `--api-tls` is given (as
its env twin PGBAY_API_TLS) to force TLS on. That the default is `auto` off loopback is a unit
test of the binary (api_tls.rs), since every address a test can bind here is loopback.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import requests
from exoscale.api.v2 import Client
from exoscale_auth import ExoscaleV2Auth

from conftest import (
    API_KEY,
    API_SECRET,
    PGBAY_BIN,
    PgbayServer,
    api_error,
    ok,
    provision,
    spare_port,
    unique,
)

HEADER_TIMEOUT = 2


class TlsServer(PgbayServer):
    """A `PgbayServer` started with PGBAY_* settings of its own (`--api-tls` among them), whose
    API is reached over https:// and verified with `ca` (default: pgbay's CA in the data dir)."""

    def __init__(self, label: str, settings: dict[str, str], ca: Path | None = None) -> None:
        super().__init__(label, env=settings)
        self._ca = ca

    @property
    def ca(self) -> Path:
        return self._ca or self.data_dir / "ca.crt"

    @property
    def origin(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def verify(self) -> str:
        return str(self.ca)

    @property
    def plain_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}/v2"

    def client(self, key: str = API_KEY, secret: str = API_SECRET) -> Client:
        c = Client(key, secret, url=self.url)
        # The client's session verifies with the CA; trust_env off, since requests lets a
        # REQUESTS_CA_BUNDLE of the environment override a session's `verify`.
        c.http_client.verify = self.verify
        c.http_client.trust_env = False
        return c


@pytest.fixture(scope="module")
def auto():
    """`--api-tls auto` on 127.0.0.1, with a short header timeout."""
    with TlsServer("tls-auto", {"PGBAY_API_TLS": "auto",
                                "PGBAY_API_HEADER_TIMEOUT": str(HEADER_TIMEOUT)}) as srv:
        yield srv


@pytest.fixture(scope="module")
def auto_service(auto):
    return provision(auto.client(), unique("tls"), plan="hobbyist-2")


def raw_exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Sends `data` over plain TCP and reads until the server closes (bounded)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk
        raise AssertionError(f"server did not close within {timeout}s; got {out[:200]!r}")


# --------------------------------------------------------------------------------------------
# The API over TLS


def test_official_client_over_https_with_the_data_dir_ca(auto, auto_service):
    c = auto.client()
    svc = c.get_dbaas_service_pg(name=auto_service.name)
    assert svc["name"] == auto_service.name and svc["state"] == "running"
    # The passwords it carries came over TLS: the same server in clear gives nothing (below).
    assert auto_service.admin_password in svc["uri"]


def test_official_client_with_requests_ca_bundle_from_the_api(auto, auto_service, tmp_path,
                                                              monkeypatch):
    # The CA as `GET /v2/dbaas-ca-certificate` gives it (fetched once, here checked against the
    # data dir's: trust on first use would be the reader's own choice).
    r = requests.get(f"{auto.url}/dbaas-ca-certificate", verify=str(auto.ca),
                     auth=ExoscaleV2Auth(API_KEY, API_SECRET), timeout=10)
    assert r.status_code == 200, r.text
    pem = r.json()["certificate"]
    assert pem == auto.ca.read_text()
    bundle = tmp_path / "pgbay-ca.pem"
    bundle.write_text(pem)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    c = Client(API_KEY, API_SECRET, url=auto.url)
    names = [s["name"] for s in c.list_dbaas_services()["dbaas-services"]]
    assert auto_service.name in names
    # Without pgbay's CA the certificate does not verify (certifi's public roots).
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    with pytest.raises(requests.exceptions.SSLError):
        Client(API_KEY, API_SECRET, url=auto.url).list_dbaas_services()


def test_the_certificate_names_the_api_host(auto):
    ctx = ssl.create_default_context(cafile=str(auto.ca))
    with socket.create_connection(("127.0.0.1", auto.api_port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            assert s.version() in ("TLSv1.2", "TLSv1.3")
            assert s.selected_alpn_protocol() in (None, "http/1.1")
    # And for localhost, which the CLI on the machine may use.
    r = requests.get(f"https://localhost:{auto.api_port}/v2/dbaas-service", verify=str(auto.ca),
                     auth=ExoscaleV2Auth(API_KEY, API_SECRET), timeout=10)
    assert r.status_code == 200, r.text


def test_plain_http_to_the_tls_port_is_refused(auto, auto_service):
    # The attack: read a service (its URI carries the admin password) in clear.
    path = f"/v2/dbaas-postgres/{auto_service.name}"
    r = requests.get(f"http://127.0.0.1:{auto.api_port}{path}",
                     auth=ExoscaleV2Auth(API_KEY, API_SECRET), timeout=10)
    assert r.status_code == 400, r.text
    assert r.headers.get("connection", "").lower() == "close"
    assert r.json() == {"message": "this port speaks HTTPS only: use https:// to reach pgbay"}
    assert auto_service.admin_password not in r.text
    # The official client pointed at http:// gets the same 400, not the service.
    with api_error(400, "https://"):
        Client(API_KEY, API_SECRET, url=auto.plain_url).get_dbaas_service_pg(
            name=auto_service.name)
    # Raw: the answer, then the server closes (even with a body still coming).
    out = raw_exchange(auto.api_port,
                       b"POST /v2/dbaas-postgres/x HTTP/1.1\r\nHost: x\r\n"
                       b"Content-Length: 100000\r\n\r\n" + b"{" * 5000)
    assert out.startswith(b"HTTP/1.1 400 Bad Request\r\n"), out[:200]
    assert b"use https://" in out


def test_a_stalled_tls_handshake_is_closed_within_the_header_timeout(auto):
    # Half a ClientHello record header, then silence: the connection must not live on.
    start = time.monotonic()
    out = raw_exchange(auto.api_port, b"\x16\x03\x01", timeout=HEADER_TIMEOUT + 8)
    assert out == b""
    assert time.monotonic() - start >= HEADER_TIMEOUT - 0.5
    # A client that sends nothing at all is closed too.
    with socket.create_connection(("127.0.0.1", auto.api_port), timeout=HEADER_TIMEOUT + 8) as s:
        assert s.recv(1) == b""


def silent_holders(port: int, n: int) -> list[socket.socket]:
    """`n` silent connections that each hold one of the API's `n` connection permits. A
    connection refused at once (the 503) found a permit still held by an earlier one (the
    harness's readiness request, closed by the client, until the server has seen it closed):
    it is replaced until none is, so that every permit is known to be held."""
    held: list[socket.socket] = []
    deadline = time.monotonic() + 30
    while len(held) < n:
        assert time.monotonic() < deadline, "the API kept refusing while permits should be free"
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        # A refusal is written at accept; a held connection hears nothing before its timeout.
        readable, _, _ = select.select([s], [], [], 1.5)
        if readable:
            s.close()
            continue
        held.append(s)
    return held


def _refused_late(holders: list[socket.socket]) -> bool:
    """Whether one of `holders` was in fact refused: its 503 came after `silent_holders` stopped
    listening for it (a busy machine), so it held no permit."""
    for s in holders:
        s.settimeout(0.5)
        try:
            if s.recv(64).startswith(b"HTTP/1.1 503"):
                return True
        except OSError:
            pass
    return False


def test_connection_cap_holds_under_tls():
    # A header timeout long enough that the silent sockets below still hold their permits when
    # the fourth connection arrives, even on a busy machine.
    header_timeout = 10
    settings = {"PGBAY_API_TLS": "auto", "PGBAY_API_MAX_CONNECTIONS": "3",
                "PGBAY_API_HEADER_TIMEOUT": str(header_timeout)}
    with TlsServer("tls-cap", settings) as srv:
        # Three silent sockets hold every permit; the next connections are refused at once,
        # with the 503 (not a bare close). A connection admitted instead is a fourth one at
        # once — unless a "holder" was itself refused, its 503 late on a busy machine: then
        # the permits are taken again and the probes go on (a few times at most).
        refused, rounds = 0, 0
        while refused < 5:
            rounds += 1
            assert rounds <= 4, "the holders kept being refused"
            idle = silent_holders(srv.api_port, 3)
            try:
                while refused < 5:
                    out = raw_exchange(srv.api_port, b"", timeout=header_timeout + 8)
                    if not out.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"):
                        assert _refused_late(idle), f"a fourth connection was admitted: {out[:100]!r}"
                        break
                    assert b"too many API connections" in out
                    refused += 1
                else:
                    # The silent ones are closed by the header timeout, and the API serves again.
                    for s in idle:
                        s.settimeout(header_timeout + 8)
                        while s.recv(4096):
                            pass
            finally:
                for s in idle:
                    s.close()
        r = requests.get(f"{srv.url}/dbaas-service", verify=str(srv.ca),
                         auth=ExoscaleV2Auth(API_KEY, API_SECRET), timeout=10)
        assert r.status_code == 200, r.text


def openssl(*args: str, cwd: Path) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def own_certs(tmp_path_factory) -> Path:
    """An operator's CA and a server certificate for 127.0.0.1 signed by it (openssl)."""
    d = tmp_path_factory.mktemp("own-certs")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
            "-days", "2", "-subj", "/CN=operator CA", cwd=d)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "api.key", "-out", "api.csr",
            "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                               "extendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "api.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "api.crt", "-days", "2", "-extfile", "ext.cnf", cwd=d)
    return d


def test_cert_and_key_files(own_certs, tmp_path):
    settings = {"PGBAY_API_TLS": f"{own_certs / 'api.crt'},{own_certs / 'api.key'}"}
    with TlsServer("tls-files", settings, ca=own_certs / "ca.crt") as srv:
        c = srv.client()
        name = unique("files")
        ok(c, c.create_dbaas_service_pg(name=name, plan="hobbyist-2"))
        assert c.get_dbaas_service_pg(name=name)["name"] == name
        # The operator's certificate is served, not one of pgbay's CA.
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"{srv.url}/dbaas-service", verify=str(srv.data_dir / "ca.crt"),
                         timeout=10)
        # The CLI with --ca FILE, and with its env twin.
        env = cli_env(srv)
        shown = cli(env, "service", "show", name, "--ca", str(own_certs / "ca.crt"))
        assert shown.returncode == 0, shown.stderr
        assert name in shown.stdout
        listed = cli(dict(env, PGBAY_CA=str(own_certs / "ca.crt")), "service", "list")
        assert listed.returncode == 0, listed.stderr
        assert name in listed.stdout
        # pgbay's own CA (the data dir's) does not verify the operator's certificate.
        refused = cli(env, "service", "list", "--data-dir", str(srv.data_dir))
        assert refused.returncode == 1
        assert "cannot reach pgbay" in refused.stderr, refused.stderr
        assert str(srv.data_dir / "ca.crt") in refused.stderr, refused.stderr
        ok(c, c.delete_dbaas_service(name=name))


def test_a_certificate_file_that_is_not_one_stops_the_start(own_certs):
    settings = {"PGBAY_API_TLS": f"{own_certs / 'api.key'},{own_certs / 'api.key'}"}
    srv = TlsServer("tls-bad-files", settings)
    try:
        with pytest.raises(RuntimeError, match="exited"):
            srv.start()
        log = srv.log_text()
        assert "Error: --api-tls: the certificate file holds no certificate" in log, log
    finally:
        srv.close()


def test_a_taken_api_port_stops_the_start_and_names_it():
    """The API's address in use: pgbay exits at once saying which, before it starts anything
    (the API is bound before the control plane)."""
    port = spare_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", port))
        held.listen()
        srv = PgbayServer("api-taken", api_listen=f"127.0.0.1:{port}")
        try:
            with pytest.raises(RuntimeError, match="exited"):
                srv.start()
            log = srv.log_text()
            assert f"binding API on 127.0.0.1:{port}" in log, log
            assert "Address already in use" in log, log
            assert "pgbay serving" not in log and not (srv.data_dir / "ca.crt").exists(), log
        finally:
            srv.close()


# --------------------------------------------------------------------------------------------
# The CLI over https


def cli_env(srv: TlsServer) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGBAY_")}
    env.update(PGBAY_URL=srv.url, PGBAY_API_KEY=API_KEY, PGBAY_API_SECRET=API_SECRET)
    # Run from a directory without a ./pgbay-data, so that only what a test passes is trusted.
    return env


def cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PGBAY_BIN, *args], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, env=env, cwd="/")


def test_cli_trusts_the_data_dir_ca_or_ca_flag(auto, auto_service, tmp_path):
    env = cli_env(auto)
    # The data dir's CA, as on pgbay's own machine.
    r = cli(env, "service", "show", auto_service.name, "--data-dir", str(auto.data_dir))
    assert r.returncode == 0, r.stderr
    assert auto_service.name in r.stdout
    # --ca, from anywhere.
    ca = tmp_path / "ca.pem"
    ca.write_text(auto.ca.read_text())
    r = cli(env, "service", "list", "--ca", str(ca))
    assert r.returncode == 0, r.stderr
    assert auto_service.name in r.stdout
    # Neither: the public roots do not know pgbay's CA, and the message says what to pass.
    r = cli(env, "service", "list")
    assert r.returncode == 1
    assert "cannot reach pgbay" in r.stderr and "--ca" in r.stderr, r.stderr
    # A --ca that is not a certificate is named.
    bad = tmp_path / "not-a-cert.pem"
    bad.write_text("hello\n")
    r = cli(env, "service", "list", "--ca", str(bad))
    assert r.returncode == 1
    assert str(bad) in r.stderr, r.stderr


# --------------------------------------------------------------------------------------------
# /metrics behind the key pair


def test_metrics_refuse_anonymous_scrapes(auto, auto_service):
    url = f"https://127.0.0.1:{auto.api_port}/metrics"
    # The attack: read every service's, pool's and user's names without credentials.
    r = requests.get(url, verify=str(auto.ca), timeout=10)
    assert r.status_code == 401, r.text
    assert r.headers.get("www-authenticate") == 'Basic realm="pgbay"'
    assert "missing Authorization header" in r.json()["message"]
    assert auto_service.name not in r.text
    for key, secret in [(API_KEY, "wrong"), ("EXOnotthekey", API_SECRET)]:
        r = requests.get(url, verify=str(auto.ca), auth=(key, secret), timeout=10)
        assert r.status_code == 401, r.text
        assert r.json()["message"].startswith("authentication failed: invalid API key or secret")
    r = requests.get(url, verify=str(auto.ca), auth=ExoscaleV2Auth(API_KEY, "wrong"), timeout=10)
    assert r.status_code == 401, r.text


def test_metrics_answer_basic_auth_and_signed_requests(auto, auto_service):
    url = f"https://127.0.0.1:{auto.api_port}/metrics"
    # What Prometheus' basic_auth sends: user = key, password = secret.
    r = requests.get(url, verify=str(auto.ca), auth=(API_KEY, API_SECRET), timeout=10)
    assert r.status_code == 200, r.text
    assert f'pgbay_service_up{{service="{auto_service.name}"}} 1' in r.text
    r = requests.get(url, verify=str(auto.ca), auth=ExoscaleV2Auth(API_KEY, API_SECRET),
                     timeout=10)
    assert r.status_code == 200, r.text
    assert f'service="{auto_service.name}"' in r.text


# --------------------------------------------------------------------------------------------
# Names


@pytest.mark.parametrize("bad", ["evil\nLOG:  forged line", "tab\there", "esc\x1b[31m", "del\x7f"])
def test_names_with_control_characters_are_refused(auto, auto_service, bad):
    c = auto.client()
    s = auto_service.name
    with api_error(400, "`database-name`", "control characters"):
        c.create_dbaas_pg_database(service_name=s, database_name=bad)
    with api_error(400, "`username`", "control characters"):
        c.create_dbaas_postgres_user(service_name=s, username=bad)
    with api_error(400, "`name`", "control characters"):
        c.create_dbaas_pg_connection_pool(service_name=s, name=bad, database_name="defaultdb")
    with api_error(400, "`database-name`", "control characters"):
        c.create_dbaas_pg_connection_pool(service_name=s, name=unique("p"), database_name=bad)
    svc = c.get_dbaas_service_pg(name=s)
    assert bad not in (svc.get("databases") or [])
    assert bad not in [u["username"] for u in svc.get("users") or []]
    assert bad not in [p["name"] for p in svc.get("connection-pools") or []]


def test_pgbouncer_is_not_a_pool_name(auto, auto_service):
    c = auto.client()
    with api_error(400, "`name`", "pgbouncer", "admin console"):
        c.create_dbaas_pg_connection_pool(service_name=auto_service.name, name="pgbouncer",
                                                database_name="defaultdb")
    svc = c.get_dbaas_service_pg(name=auto_service.name)
    assert "pgbouncer" not in [p["name"] for p in svc.get("connection-pools") or []]
    # A name that only starts like it is fine.
    op = c.create_dbaas_pg_connection_pool(service_name=auto_service.name,
                                                 name="pgbouncer2", database_name="defaultdb")
    ok(c, op)
    ok(c, c.delete_dbaas_pg_connection_pool(service_name=auto_service.name,
                                                  connection_pool_name="pgbouncer2"))


def test_quoted_and_unicode_names_still_work(auto, auto_service):
    c = auto.client()
    db = 'a "quoted" é db'
    ok(c, c.create_dbaas_pg_database(service_name=auto_service.name, database_name=db))
    ok(c, c.delete_dbaas_pg_database(service_name=auto_service.name, database_name=db))


# --------------------------------------------------------------------------------------------
# The web console over HTTPS, from a host that is not loopback to the browser


@pytest.fixture
def browser(tmp_path, auto):
    """Headless Chromium that reaches the TLS server as `pgbay.test` (not a potentially
    trustworthy origin: over plain HTTP there, Web Crypto would not exist) and accepts its
    certificate (which does not name pgbay.test)."""
    from test_web_console import chromium
    with chromium(tmp_path, "--host-resolver-rules=MAP pgbay.test 127.0.0.1",
                  accept_insecure_certs=True) as driver:
        yield driver


def test_web_console_over_https(auto, auto_service, browser):
    from test_web_console import DASH, cell, css, flash_text, type_into, wait_for
    driver = browser
    c = auto.client()
    pool = unique("webtls")
    ok(c, c.create_dbaas_pg_connection_pool(service_name=auto_service.name, name=pool,
                                            database_name="defaultdb"))
    try:
        driver.get(f"https://pgbay.test:{auto.api_port}/")
        wait_for("the login form", lambda: css(driver, "#login-form"))
        assert driver.execute_script("return window.isSecureContext") is True
        assert driver.execute_script("return !!(window.crypto && crypto.subtle)") is True
        type_into(driver, "#login-key", API_KEY)
        type_into(driver, "#login-secret", API_SECRET)
        css(driver, "#login-form button").click()
        wait_for("the shared service's row",
                 lambda: css(driver, f'#services tr[data-service="{auto_service.name}"]'))
        assert not flash_text(driver)
        driver.get(f"https://pgbay.test:{auto.api_port}/#/service/{auto_service.name}")
        row_sel = f'#pools tbody[data-pool="{pool}"]'
        # The live numbers come from /metrics, which the page signs: a number, not a dash.
        wait_for("the pool's live numbers",
                 lambda: cell(css(driver, row_sel), "clients-active") not in ("", DASH))
        assert not flash_text(driver)
    finally:
        ok(c, c.delete_dbaas_pg_connection_pool(service_name=auto_service.name,
                                                connection_pool_name=pool))
