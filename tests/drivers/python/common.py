"""What the Python driver programs of the matrix share: the connection settings pytest hands them
in the environment (the password never in argv), the expected values of the type round trip, and
the step labels that make a failure say where it happened."""

from __future__ import annotations

import contextlib
import datetime
import decimal
import json
import os
import sys
import threading
import time

HOST = os.environ["PGB_HOST"]
PORT = int(os.environ["PGB_PORT"])
USER = os.environ["PGB_USER"]
PASSWORD = os.environ["PGB_PASSWORD"]
DB = os.environ["PGB_DB"]
CA = os.environ["PGB_CA"]
TABLE = os.environ["PGB_TABLE"]
CLIENTS = int(os.environ.get("PGB_CLIENTS", "10"))

# One value of each common type, sent as a parameter and read back.
INT = 42
TEXT = "héllo, 'pool' \\ \"x\""
NUMERIC = decimal.Decimal("12345.678901")
BOOL = True
TS = datetime.datetime(2026, 12, 3, 7, 45, 1, 123456, tzinfo=datetime.timezone.utc)
BYTEA = bytes(range(256))
JSON = {"a": [1, 2, {"b": None}], "c": "d"}
ARRAY = [1, 2, 3, None, 5]
TYPES_SQL = ("SELECT {0}::int, {0}::text, {0}::numeric, {0}::bool, {0}::timestamptz, {0}::bytea, "
             "{0}::json, {0}::int[]")


def check_types(row) -> None:
    got = list(row)
    if isinstance(got[6], str):
        got[6] = json.loads(got[6])
    if isinstance(got[5], memoryview):
        got[5] = bytes(got[5])
    want = [INT, TEXT, NUMERIC, BOOL, TS, BYTEA, JSON, ARRAY]
    for i, (g, w) in enumerate(zip(got, want)):
        if g != w:
            raise AssertionError(f"type round trip, column {i + 1}: got {g!r}, want {w!r}")


def ddl() -> list[str]:
    return [f"CREATE TABLE IF NOT EXISTS {TABLE} (id int, note text, worker int)",
            f"TRUNCATE {TABLE}"]


_step = "start"


@contextlib.contextmanager
def step(name: str):
    """Labels what runs in the block: a failure names the step."""
    global _step
    _step = name
    yield


def run(main) -> None:
    """Runs `main`; any failure exits 1 with the step, the error and its SQLSTATE on stderr."""
    try:
        main()
    except BaseException as e:  # noqa: BLE001 - the exit code and message are the contract
        code = getattr(e, "sqlstate", None) or getattr(getattr(e, "orig", None), "sqlstate", None) \
            or getattr(e, "pgcode", None)
        print(f"FAIL in step {_step!r}: {type(e).__name__}: {e} (SQLSTATE {code})",
              file=sys.stderr)
        sys.exit(1)
    print("OK")


def in_threads(worker) -> None:
    """Runs `worker(w)` for each of the CLIENTS concurrent clients in a thread of its own;
    raises the first failure."""
    errs: list[BaseException] = []

    def guarded(w: int) -> None:
        try:
            worker(w)
        except BaseException as e:  # noqa: BLE001 - raised below, in the main thread
            errs.append(e)

    threads = [threading.Thread(target=guarded, args=(w,)) for w in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
        if t.is_alive():
            raise AssertionError("a client did not finish within 120 s")
    if errs:
        raise errs[0]


def wait_for(pred, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
