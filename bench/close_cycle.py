"""The cycle tokio-postgres runs for every `client.query(&str)`: Parse + Describe + Sync, then
Bind + Execute + Sync, then (the statement dropped) Close + Sync, each waited for. PROCS
processes with one TLS connection each run it for SECS seconds through a pooler whose PID is
given; prints cycles per second and the pooler's CPU µs per cycle (user + system).

    CLOSE_CYCLE_URI=URI close_cycle.py PROCS SECS PID     (run by bench/close_cycle.sh; the
    URI, password included, in the environment rather than on the command line)
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from test_notify_budget import RawClient, _msg  # noqa: E402

PARSE = _msg(b"P", b"s0\0select 1\0\0\0") + _msg(b"D", b"Ss0\0") + _msg(b"S", b"")
RUN = _msg(b"B", b"\0s0\0" + b"\0\0" * 3) + _msg(b"E", b"\0\0\0\0\0") + _msg(b"S", b"")
CLOSE = _msg(b"C", b"Ss0\0") + _msg(b"S", b"")


def worker(uri: str, secs: float, out: mp.Queue) -> None:
    c = RawClient(uri)
    c.sock.settimeout(30)
    n, end = 0, time.monotonic() + secs
    while time.monotonic() < end:
        for step in (PARSE, RUN, CLOSE):
            c.sock.sendall(step)
            if any(kind == b"E" for kind, _ in c.until_ready()):
                raise SystemExit("the pooler answered an error")
        n += 1
    c.close()
    out.put(n)


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


if __name__ == "__main__":
    uri = os.environ["CLOSE_CYCLE_URI"]
    procs, secs, pid = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    out: mp.Queue = mp.Queue()
    ps = [mp.Process(target=worker, args=(uri, secs, out)) for _ in range(procs)]
    before = cpu_ticks(pid)
    for p in ps:
        p.start()
    total = sum(out.get() for _ in ps)
    for p in ps:
        p.join()
    used_us = (cpu_ticks(pid) - before) * 1e6 / os.sysconf("SC_CLK_TCK")
    print(f"{total / secs:.0f} cycles/s, pooler CPU {used_us / max(total, 1):.1f} µs per cycle")
