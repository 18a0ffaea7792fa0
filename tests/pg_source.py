"""A PostgreSQL server a test starts as the source of a migration (or any outside server):
initdb as nobody when we are root, a Unix socket in its own directory only (no TCP port to race
for; libpq takes the directory as a host name), SCRAM passwords."""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg

PG_BIN = Path(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
              .stdout.strip())
if not (PG_BIN / "initdb").exists():
    PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]


def _as_owner(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] + cmd
    return cmd


class SourcePostgres:
    SUPERUSER = "srcadmin"

    def __init__(self, label: str):
        self.password = "src-" + os.urandom(8).hex()
        self.dir = Path(tempfile.mkdtemp(prefix=f"pgbay-test-{label}-"))
        os.chmod(self.dir, 0o755)
        if os.geteuid() == 0:
            os.chown(self.dir, 65534, 65534)
        self.data = self.dir / "data"
        pw = self.dir / "pw"
        pw.write_text(self.password)
        if os.geteuid() == 0:
            os.chown(pw, 65534, 65534)
        subprocess.run(_as_owner([str(PG_BIN / "initdb"), "-D", str(self.data), "-U",
                                  self.SUPERUSER, "--auth=scram-sha-256", f"--pwfile={pw}",
                                  "--no-sync", "-E", "UTF8", "--locale=C"]),
                       check=True, capture_output=True)
        pw.unlink()
        subprocess.run(_as_owner([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-l",
                                  str(self.dir / "log"), "-o",
                                  f"-c listen_addresses='' -c unix_socket_directories='{self.dir}'"
                                  " -c fsync=off", "start"]),
                       check=True, capture_output=True)

    @property
    def host(self) -> str:
        """The socket directory, which libpq (and so pg_dump) takes as a host."""
        return str(self.dir)

    def connect(self, dbname: str = "postgres", **kw) -> psycopg.Connection:
        return psycopg.connect(host=str(self.dir), port=5432, user=self.SUPERUSER,
                               password=self.password, dbname=dbname, **kw)

    def stop(self) -> None:
        subprocess.run(_as_owner([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m",
                                  "immediate", "-w", "stop"]), capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)
