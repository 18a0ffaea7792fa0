"""The `pgbay` command-line client (`pgbay service|database|user|pool …`) against a running pgbay.

Every command runs as its own process with `PGBAY_URL` pointing at the session server, and what it
did is checked through the official Exoscale client and psql. Error paths check the exact message
that the API gave (the CLI prints `pgbay: <message>` and exits 1).
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import time

import pytest

from conftest import (
    API_KEY,
    API_SECRET,
    PGBAY_BIN,
    find_pool,
    ok,
    psql_ok,
    reveal,
    signed,
    unique,
    user_names,
)


def cli_env(server, creds: bool = True, **extra) -> dict:
    """The CLI's environment: no PGBAY_* of ours but the URL (and the key pair unless `creds` is
    false), then `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGBAY_")}
    env["PGBAY_URL"] = server.url
    if creds:
        env.update(PGBAY_API_KEY=API_KEY, PGBAY_API_SECRET=API_SECRET)
    env.update(extra)
    return env


def run(server, *args: str, creds: bool = True, **extra) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PGBAY_BIN, *args],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        env=cli_env(server, creds, **extra),
    )


def pgbay(server, *args: str, **extra) -> str:
    """Runs the CLI; it must succeed. Returns its stdout."""
    r = run(server, *args, **extra)
    assert r.returncode == 0, f"pgbay {' '.join(args)} exited {r.returncode}: {r.stderr}"
    return r.stdout


def pgbay_json(server, *args: str, **extra):
    return json.loads(pgbay(server, *args, "-o", "json", **extra))


def fails(server, *args: str, **extra) -> str:
    """Runs the CLI; it must fail with exit code 1 and print nothing on stdout. Returns stderr."""
    r = run(server, *args, **extra)
    assert r.returncode == 1, f"expected exit 1, got {r.returncode}: {r.stdout} {r.stderr}"
    assert r.stdout == "", r.stdout
    return r.stderr


def table(text: str) -> list[dict]:
    """An aligned table back as rows of {HEADER: cell}, checking that every cell starts in its
    header's column."""
    lines = text.rstrip("\n").split("\n")
    header = lines[0]
    names = header.split()
    starts = [header.index(n) for n in names]
    rows = []
    for line in lines[1:]:
        row = {}
        for i, (n, s) in enumerate(zip(names, starts)):
            end = starts[i + 1] if i + 1 < len(starts) else len(line)
            assert s == 0 or line[s - 1] == " ", f"cell of {n} not aligned: {line!r}"
            row[n] = line[s:end].strip()
        rows.append(row)
    return rows


def test_whole_flow(server, client):
    name = unique("cli")
    out = pgbay(server, "service", "create", name, "--plan", "startup-4")
    assert out == f"service {name} is running\n"
    assert client.get_dbaas_service_pg(name=name)["state"] == "running"
    try:
        _flow(server, client, name)
    finally:
        run(server, "service", "delete", name)


def _flow(server, client, name):
    # Listing: a table for people, the API's document for scripts.
    rows = table(pgbay(server, "service", "list"))
    mine = [r for r in rows if r["NAME"] == name]
    assert mine and mine[0]["STATE"] == "running" and mine[0]["PLAN"] == "startup-4", rows
    listed = pgbay_json(server, "service", "list")
    assert name in [s["name"] for s in listed["dbaas-services"]]

    assert pgbay(server, "database", "create", name, "appdb") == (
        f"database appdb created in service {name}\n"
    )
    pgbay(server, "user", "create", name, "appuser")
    svc = client.get_dbaas_service_pg(name=name)
    assert "appdb" in svc["databases"] and "appuser" in user_names(svc)

    op = pgbay_json(server, "pool", "create", name, "web", "--database", "appdb",
                    "--user", "appuser", "--mode", "session", "--size", "3")
    assert op["state"] == "success" and op["reference"]["command"], op
    pool = find_pool(client.get_dbaas_service_pg(name=name), "web")
    assert (pool["database"], pool["username"], pool["mode"], pool["size"]) == (
        "appdb", "appuser", "session", 3)

    # `pool uri` prints the URI alone, for psql "$(pgbay pool uri svc web)".
    uri = pgbay(server, "pool", "uri", name, "web")
    assert uri == pool["connection-uri"] + "\n"
    assert psql_ok(uri.strip(), "SELECT current_user, current_database()") == ["appuser|appdb"]
    shell = subprocess.run(
        ["sh", "-c", f'psql -X -A -t -c "SELECT 41 + 1" "$("{PGBAY_BIN}" pool uri {name} web)"'],
        capture_output=True, text=True, timeout=60, env=cli_env(server),
    )
    assert shell.returncode == 0 and shell.stdout.strip() == "42", shell.stderr

    assert pgbay_json(server, "pool", "show", name, "web") == pool
    shown = dict(line.split(None, 1) for line in pgbay(server, "pool", "show", name, "web").splitlines())
    assert shown == {"NAME": "web", "DATABASE": "appdb", "USER": "appuser", "MODE": "session",
                     "SIZE": "3", "URI": pool["connection-uri"]}

    assert pgbay(server, "pool", "update", name, "web", "--size", "5", "--mode", "transaction") == (
        f"pool web of service {name} updated\n"
    )
    pool = find_pool(client.get_dbaas_service_pg(name=name), "web")
    assert (pool["mode"], pool["size"]) == ("transaction", 5)
    assert table(pgbay(server, "pool", "list", name)) == [
        {"POOL": "web", "DATABASE": "appdb", "USER": "appuser", "MODE": "transaction", "SIZE": "5"}
    ]
    assert pgbay_json(server, "pool", "list", name) == [pool]
    assert psql_ok(pgbay(server, "pool", "uri", name, "web").strip(), "SELECT 1") == ["1"]

    shown = pgbay(server, "service", "show", name)
    assert shown.startswith(f"NAME      {name}\n"), shown
    assert "\nSTATE     running\n" in shown and "appdb" in shown and "appuser" in shown
    assert pgbay_json(server, "service", "show", name)["connection-pools"] == [pool]

    # Passwords: shown alone; reset to a chosen one through the environment, not the command line.
    assert pgbay(server, "user", "show-password", name, "appuser") == (
        reveal(client, name, "appuser") + "\n"
    )
    pgbay(server, "user", "reset-password", name, "appuser",
          PGBAY_USER_PASSWORD="chosen-Passw0rd-for-cli")
    assert reveal(client, name, "appuser") == "chosen-Passw0rd-for-cli"
    assert pgbay_json(server, "user", "show-password", name, "appuser") == {
        "username": "appuser", "password": "chosen-Passw0rd-for-cli"}
    pgbay(server, "user", "reset-password", name, "appuser", "--password", "flag-Passw0rd-for-cli")
    assert reveal(client, name, "appuser") == "flag-Passw0rd-for-cli"
    pgbay(server, "user", "reset-password", name, "appuser")
    generated = reveal(client, name, "appuser")
    assert generated not in {"flag-Passw0rd-for-cli", "chosen-Passw0rd-for-cli"}
    assert psql_ok(pgbay(server, "pool", "uri", name, "web").strip(), "SELECT 2") == ["2"]

    assert pgbay(server, "pool", "delete", name, "web") == f"pool web deleted from service {name}\n"
    assert find_pool(client.get_dbaas_service_pg(name=name), "web") is None
    assert fails(server, "pool", "show", name, "web") == (
        f"pgbay: connection pool web not found in service {name}\n"
    )
    pgbay(server, "user", "delete", name, "appuser")
    op = pgbay_json(server, "database", "delete", name, "appdb")
    assert op["state"] == "success", op
    svc = client.get_dbaas_service_pg(name=name)
    assert "appdb" not in svc["databases"] and "appuser" not in user_names(svc)

    assert pgbay(server, "service", "delete", name) == f"service {name} deleted\n"
    assert name not in [s["name"] for s in client.list_dbaas_services()["dbaas-services"]]
    assert fails(server, "service", "show", name) == f"pgbay: service {name} not found\n"


def test_wrong_secret_says_authentication_failed(server):
    err = fails(server, "service", "list", PGBAY_API_SECRET="not-the-secret")
    assert err.startswith("pgbay: authentication failed: invalid request signature"), err
    assert "PGBAY_API_KEY/PGBAY_API_SECRET" in err, err
    assert "not-the-secret" not in err
    err = fails(server, "service", "list", PGBAY_API_KEY="EXOwrongkey")
    assert err.startswith("pgbay: authentication failed: "), err


def test_credentials_from_the_data_dir(server, tmp_path):
    """Without PGBAY_API_KEY/SECRET the CLI reads the `api-credentials` file of --data-dir or
    PGBAY_DATA_DIR, in the format `pgbay serve` writes it."""
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    (good / "api-credentials").write_text(f"key={API_KEY}\nsecret={API_SECRET}\n")
    (bad / "api-credentials").write_text(f"key={API_KEY}\nsecret=wrong\n")
    listed = pgbay_json(server, "service", "list", "--data-dir", str(good), creds=False)
    assert "dbaas-services" in listed
    pgbay(server, "service", "list", creds=False, PGBAY_DATA_DIR=str(good))
    err = fails(server, "service", "list", "--data-dir", str(bad), creds=False)
    assert err.startswith("pgbay: authentication failed: invalid request signature"), err
    assert str(bad / "api-credentials") in err, err
    err = fails(server, "service", "list", "--data-dir", str(tmp_path / "none"), creds=False)
    assert err.startswith("pgbay: no API credentials: PGBAY_API_KEY/PGBAY_API_SECRET are not set"), err
    err = fails(server, "service", "list", creds=False, PGBAY_API_KEY=API_KEY)
    assert err == "pgbay: set both PGBAY_API_KEY and PGBAY_API_SECRET, or neither\n"


def api_message(server, method: str, path: str, body=None) -> str:
    r = signed(server, method, path, body)
    assert r.status_code >= 400, r.text
    return r.json()["message"]


def test_api_errors_print_the_api_message(server, service):
    missing = unique("nosuch")
    assert fails(server, "service", "show", missing) == (
        f"pgbay: {api_message(server, 'GET', f'/dbaas-postgres/{missing}')}\n"
    )
    assert fails(server, "service", "create", missing, "--plan", "gold-1") == (
        "pgbay: " + api_message(server, "POST", f"/dbaas-postgres/{missing}", {"plan": "gold-1"})
        + "\n"
    )
    body = {"name": "p0", "database-name": "defaultdb", "size": 0}
    assert fails(server, "pool", "create", service.name, "p0", "--database", "defaultdb",
                 "--size", "0") == (
        "pgbay: " + api_message(server, "POST", f"/dbaas-postgres/{service.name}/connection-pool",
                                body) + "\n"
    )
    assert fails(server, "database", "delete", service.name, "nosuchdb") == (
        "pgbay: " + api_message(server, "DELETE",
                                f"/dbaas-postgres/{service.name}/database/nosuchdb") + "\n"
    )
    # Unreachable API: says where it tried.
    r = run(server, "service", "list", PGBAY_URL="http://127.0.0.1:9/v2")
    assert r.returncode == 1 and r.stderr.startswith("pgbay: cannot reach pgbay at http://127.0.0.1:9"), r.stderr
    # --url wins over PGBAY_URL.
    pgbay(server, "service", "list", "--url", server.url, PGBAY_URL="http://127.0.0.1:9/v2")
    r = run(server, "service", "list", "--url", "127.0.0.1:8080/v2")
    assert r.returncode == 1 and "must start with http:// or https://" in r.stderr, r.stderr
    # A change needs something to change; a mode must be one of the three (checked by clap: exit 2).
    r = run(server, "pool", "update", service.name, "p0")
    assert r.returncode == 2 and "--size" in r.stderr, r.stderr
    r = run(server, "pool", "create", service.name, "p0", "--database", "d", "--mode", "bogus")
    assert r.returncode == 2 and "session" in r.stderr, r.stderr


def run_on_terminal(server, *args: str) -> tuple[int, str, str]:
    """Runs the CLI with stderr on a pseudo-terminal. Returns (exit code, stdout, terminal output)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([PGBAY_BIN, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=slave, env=cli_env(server))
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        r, _, _ = select.select([master], [], [], 0.5)
        if r:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    out = proc.stdout.read().decode()
    return proc.wait(timeout=60), out, seen.decode(errors="replace")


def test_spinner_on_a_terminal_only_and_no_wait(server, client):
    name = unique("clispin")
    rc, out, term = run_on_terminal(server, "service", "create", name, "--plan", "hobbyist-2")
    try:
        assert rc == 0, term
        assert out == f"service {name} is running\n"
        assert f"creating service {name}" in term and "⠋" in term, term
        # Not on a terminal: no spinner at all (test_whole_flow checks the same of stdout).
        r = run(server, "service", "delete", name)
        assert r.returncode == 0 and r.stderr == "", r.stderr
    finally:
        run(server, "service", "delete", name)

    other = unique("clinowait")
    op = pgbay_json(server, "service", "create", other, "--plan", "hobbyist-2", "--no-wait")
    try:
        assert op["state"] == "pending", op
        ok(client, op)
    finally:
        run(server, "service", "delete", other)
