"""Backups in an S3-compatible object store (issue 18): with `--backup-s3-*` every service's
pgBackRest repository is a prefix of its own in one bucket. The store here is moto's S3 server
over HTTPS with a certificate of the test's own CA (verified by pgBackRest); the key and secret
reach pgbay through its environment only.
"""

import os
import select
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest

from conftest import PgbayServer, ok, provision, unique, wait_for

pytestmark = pytest.mark.skipif(shutil.which("pgbackrest") is None,
                                reason="pgbackrest is not installed (.ci/run installs it)")

KEY, SECRET = "pgbaytestkey", "pgbay-test-s3-secret-0123456789"
BUCKET = "pgbay-backups"


def _localhost() -> tuple[int, str]:
    """The address `localhost` resolves to first (what pgBackRest connects to): pgBackRest 2.45
    verifies a certificate's DNS names only, so the store is reached by name."""
    family, _, _, _, addr = socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM)[0]
    return family, addr[0]


MOTO_ON_ANY_PORT = """
import os
import threading
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer("127.0.0.1", 0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
os.dup2(2, 1)  # anything printed later goes to the log, not to a pipe no one reads
threading.Event().wait()
"""


class TlsFront:
    """HTTPS in front of moto's plain HTTP server. moto's own HTTPS closes connections without
    TLS close_notify, which OpenSSL 3 (pgBackRest) reports as "unexpected eof while reading";
    this front ends each connection with close_notify, as S3 servers do."""

    def __init__(self, family: int, host: str, backend: int, cert: Path, key: Path) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.backend = backend
        self.sock = socket.socket(family)
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            tls = self.ctx.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError):
            conn.close()
            return
        try:
            back = socket.create_connection(("127.0.0.1", self.backend))
        except OSError:
            tls.close()
            return
        # One thread per connection, which alone uses the TLS socket (OpenSSL's are not for two
        # threads at once).
        reading = [tls, back]
        try:
            while True:
                ready = [tls] if tls.pending() else select.select(reading, [], [], 120)[0]
                if not ready:
                    break
                if tls in ready:
                    data = tls.recv(65536)
                    if data:
                        back.sendall(data)
                    else:
                        back.shutdown(socket.SHUT_WR)
                        reading.remove(tls)
                if back in ready:
                    data = back.recv(65536)
                    if not data:
                        break
                    tls.sendall(data)
            tls.unwrap()  # close_notify
        except (OSError, ssl.SSLError):
            pass
        finally:
            back.close()
            tls.close()

    def close(self) -> None:
        self.closed = True
        self.sock.close()


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    pytest.importorskip("moto.server", reason="moto[server] is not installed "
                        "(tests/requirements.txt)")
    d = tmp_path_factory.mktemp("s3")
    os.chmod(d, 0o755)
    cert, key = d / "s3.crt", d / "s3.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                    "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    os.chmod(cert, 0o644)
    family, host = _localhost()
    # moto's server in a process of its own, on a port it binds itself (0: the kernel's
    # pick), which it prints once it listens.
    log = open(d / "moto.log", "wb")
    proc = subprocess.Popen([sys.executable, "-c", MOTO_ON_ANY_PORT], stdout=subprocess.PIPE,
                            stderr=log, start_new_session=True)
    backend = int(proc.stdout.readline() or 0)
    if not backend:
        proc.kill()
        raise AssertionError(f"moto's server did not start: {(d / 'moto.log').read_text()}")
    front = TlsFront(family, host, backend, cert, key)
    port = front.port
    try:
        import boto3
        client = boto3.client("s3", endpoint_url=f"https://localhost:{port}",
                              aws_access_key_id=KEY, aws_secret_access_key=SECRET,
                              region_name="us-east-1", verify=str(cert))
        wait_for("moto's S3 server", 30, lambda: client.list_buckets() is not None)
        client.create_bucket(Bucket=BUCKET)
        yield {"endpoint": f"localhost:{port}", "ca": cert, "client": client}
    finally:
        front.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def node(s3):
    srv = PgbayServer("backups-s3", env={
        "PGBAY_BACKUP_S3_ENDPOINT": s3["endpoint"],
        "PGBAY_BACKUP_S3_BUCKET": BUCKET,
        "PGBAY_BACKUP_S3_CA_FILE": str(s3["ca"]),
        "PGBAY_BACKUP_S3_KEY": KEY,
        "PGBAY_BACKUP_S3_KEY_SECRET": SECRET,
    })
    try:
        srv.start()
        yield srv
    finally:
        srv.close()


def objects(s3, prefix: str) -> dict[str, int]:
    out = {}
    for page in s3["client"].get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix=prefix):
        for o in page.get("Contents", []):
            out[o["Key"]] = o["Size"]
    return out


def test_services_archive_back_up_and_fork_through_an_s3_store(node, s3):
    c = node.client()
    svc = provision(c, unique("s3src"), plan="hobbyist-2")
    doc = wait_for("a backup listed", 120, lambda: (
        d := c.get_dbaas_service_pg(name=svc.name), d["backups"] and d)[1], every=0.5)
    assert doc["backups"][0]["backup-name"].endswith("F")

    # The repository is the service's prefix in the bucket, nothing on the local disk; its
    # files are encrypted with the service's own key.
    held = objects(s3, f"{svc.name}/")
    assert any("/archive/" in k for k in held) and any("/backup/" in k for k in held), held
    assert not (node.data_dir / "backups" / svc.name).exists()
    info = s3["client"].get_object(Bucket=BUCKET, Key=f"{svc.name}/backup/pgbay/backup.info")
    assert info["Body"].read().startswith(b"Salted__")

    # The secret is only in the service's 0600 pgBackRest configuration: not in pgbay's log,
    # not on any command line.
    conf = node.data_dir / "services" / svc.name / "pgbackrest.conf"
    assert oct(conf.stat().st_mode & 0o777) == "0o600"
    assert SECRET not in node.log_path.read_text(errors="replace")
    ps = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
    assert SECRET not in ps

    # A fork without a time holds every committed row; the source's user logs in to it.
    with psycopg.connect(svc.uri, autocommit=True) as conn:
        conn.execute("CREATE TABLE t AS SELECT generate_series(1, 500) AS id")
    fork = unique("s3fork")
    ok(c, c.create_dbaas_service_pg(name=fork, plan="hobbyist-2", fork_from_service=svc.name))
    fdoc = c.get_dbaas_service_pg(name=fork)
    assert fdoc["state"] == "running"
    with psycopg.connect(fdoc["uri"], autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 500
    # The fork's repository is a prefix of its own (its stanza is made as it starts).
    wait_for("the fork's own repository", 120, lambda: objects(s3, f"{fork}/"), every=0.5)

    # Deleting a service removes its prefix; the other one's stays.
    for name in (fork, svc.name):
        ok(c, c.delete_dbaas_service(name=name))
    assert objects(s3, f"{svc.name}/") == {} and objects(s3, f"{fork}/") == {}


def test_a_service_deleted_while_its_backup_runs_leaves_no_object(node, s3):
    """A backup ended by the service's deletion writes nothing after its prefix is removed."""
    from conftest import delete_while_backing_up

    def wait_for_backup(c, name):
        wait_for("a backup listed", 120, lambda: c.get_dbaas_service_pg(name=name)["backups"],
                 every=0.5)

    name = delete_while_backing_up(node, wait_for_backup)
    assert objects(s3, f"{name}/") == {}
