"""The README's walkthrough works as written: its shell block is run as one script.

Only what cannot hold on a test machine is changed: the binary is the one under test instead of
`cargo run --release`, the API port and the port range are free ones instead of 8080 and
21000-21999, the venv is this suite's (it has the official client already), and each `psql` gets a
query instead of an interactive prompt. Everything else is run exactly as a reader would paste it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from conftest import PGBAY_BIN, REPO, PgbayServer, PortWindow, spare_port


def walkthrough() -> str:
    text = (REPO / "README.md").read_text()
    m = re.search(r"<!-- walkthrough:start -->\s*```sh\n(.*?)```\s*<!-- walkthrough:end -->",
                  text, re.S)
    assert m, "README.md has no walkthrough block"
    return m.group(1)


def test_readme_walkthrough_runs_as_written():
    script = walkthrough()
    for expected in ("cargo run --release -p pgbay -- serve &", "http://127.0.0.1:8080/v2",
                     "/tmp/exo", 'psql "$(cat pool-uri.txt)"\n'):
        assert expected in script, f"walkthrough lost {expected!r}; update this test with it"
    api_port = spare_port()
    venv = Path(sys.prefix)
    script = (script
              .replace("cargo run --release -p pgbay -- serve &", f"{PGBAY_BIN} serve &")
              .replace("127.0.0.1:8080", f"127.0.0.1:{api_port}")
              .replace("/tmp/exo", str(venv)))
    query = " -X -A -t -c \"SELECT 'through ' || current_database()\""
    script = re.sub(r'^psql "[^\n]*"$', lambda m: m.group(0) + query, script, flags=re.M)
    ports = PortWindow()
    workdir = Path(tempfile.mkdtemp(prefix="pgbay-test-readme-"))
    os.chmod(workdir, 0o755)
    env = dict(os.environ, PGBAY_PORT_RANGE=str(ports), PGBAY_API_LISTEN=f"127.0.0.1:{api_port}")
    # Its own process group, so that a pgbay left running by a failed step can be stopped; output
    # to files, since a background pgbay would keep a pipe open after the script ends.
    out_path, err_path = workdir / "walkthrough.out", workdir / "walkthrough.err"
    with open(out_path, "w") as out_f, open(err_path, "w") as err_f:
        proc = subprocess.Popen(["bash", "-e", "-c", script], cwd=workdir, env=env,
                                stdout=out_f, stderr=err_f, start_new_session=True)
    try:
        try:
            proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        out, err = out_path.read_text(), err_path.read_text()
        assert proc.returncode == 0, f"walkthrough failed ({proc.returncode}):\n{out}\n{err[-5000:]}"
        # Both psql runs (require, then verify-full against the API's CA) went through the pool.
        assert out.count("through shop") == 2, out
        uri = (workdir / "pool-uri.txt").read_text().strip()
        assert re.fullmatch(r"postgres://avnadmin:[^@]+@127\.0\.0\.1:\d+/shop-pool\?sslmode=require",
                            uri), uri
    finally:
        # Whatever a failed run left behind (a successful one stops pgbay itself).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        leftover = PgbayServer.__new__(PgbayServer)
        leftover.data_dir = workdir / "pgbay-data"
        time.sleep(0.5)
        leftover.kill_clusters()
        leftover.remove_service_users()
        ports.release()
        shutil.rmtree(workdir, ignore_errors=True)
