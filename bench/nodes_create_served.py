#!/usr/bin/env python3
"""Create -> served latency of a pool (issue 16), side by side: one node on its SQLite default,
one node on a PostgreSQL store, and three nodes on one PostgreSQL store (public hosts 127.0.0.1,
.2, .3). For each setup, one hobbyist-2 service, then ROUNDS pools created one after the other
through the API (through the second node when there are three): the time until the create
call returns `success` (every live node serves the pool), and until a psql login through the
pool succeeds on every node's public host.

Usage: PGBAY_BIN=target/release/pgbay .venv/bin/python bench/nodes_create_served.py
"""

import os
import statistics
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
os.environ.setdefault("PGBAY_BIN", str(Path("target/release/pgbay").resolve()))

from conftest import PgbayServer, PortWindow, find_pool, ok, provision  # noqa: E402
from test_store_pg import StorePostgres  # noqa: E402

ROUNDS = int(os.environ.get("ROUNDS", "20"))
KEY = "bench-cluster-key-" + os.urandom(8).hex()


def on_host(uri: str, host: str) -> str:
    scheme, rest = uri.split("://", 1)
    userinfo, hostport = rest.split("@", 1)
    return f"{scheme}://{userinfo}@{host}:{hostport.split(':', 1)[1]}"


def login_until_ok(uri: str, deadline: float) -> None:
    while True:
        try:
            with psycopg.connect(uri, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
                return
        except psycopg.Error:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def run(label: str, nodes: list, hosts: list[str]) -> dict:
    c = nodes[0].client()
    svc = provision(c, f"lat-{len(nodes)}", plan="hobbyist-2")
    ok(c, c.create_dbaas_postgres_user(service_name=svc.name, username="app"))
    via = nodes[1 if len(nodes) > 1 else 0].client()
    op_ms, served_ms = [], []
    for i in range(ROUNDS):
        name = f"p{i}"
        t0 = time.monotonic()
        op = via.create_dbaas_pg_connection_pool(
            service_name=svc.name, name=name, database_name="defaultdb", mode="transaction",
            size=2, username="app")
        ok(via, op)
        t1 = time.monotonic()
        uri = find_pool(via.get_dbaas_service_pg(name=svc.name), name)["connection-uri"]
        t_uri = time.monotonic()
        for h in hosts:
            login_until_ok(on_host(uri, h), t_uri + 30)
        t2 = time.monotonic()
        op_ms.append((t1 - t0) * 1000)
        # The GET between is not part of serving: count from the create to the last login,
        # minus the time the GET took.
        served_ms.append((t2 - t0 - (t_uri - t1)) * 1000)
    out = {
        "setup": label,
        "op_median": statistics.median(op_ms),
        "op_p90": sorted(op_ms)[int(0.9 * len(op_ms)) - 1],
        "served_median": statistics.median(served_ms),
        "served_p90": sorted(served_ms)[int(0.9 * len(served_ms)) - 1],
    }
    print(f"{label:<32} op success median {out['op_median']:.0f} ms p90 {out['op_p90']:.0f} ms; "
          f"login on every node median {out['served_median']:.0f} ms p90 "
          f"{out['served_p90']:.0f} ms", flush=True)
    return out


def main():
    rows = []
    with PgbayServer("bench-one") as one:
        rows.append(run("1 node, SQLite store", [one], ["127.0.0.1"]))
    store = StorePostgres()
    try:
        env = {"PGBAY_STORE": store.url, "PGPASSWORD": StorePostgres.PASSWORD,
               "PGBAY_CLUSTER_KEY": KEY, "PGBAY_NODE_NAME": "solo"}
        with PgbayServer("bench-onepg", env=env) as one:
            rows.append(run("1 node, PostgreSQL store", [one], ["127.0.0.1"]))
    finally:
        store.stop()
    store = StorePostgres()
    window = PortWindow()
    nodes = []
    hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    try:
        for i, h in enumerate(hosts, start=1):
            env = {"PGBAY_STORE": store.url, "PGPASSWORD": StorePostgres.PASSWORD,
                   "PGBAY_CLUSTER_KEY": KEY, "PGBAY_NODE_NAME": f"n{i}"}
            n = PgbayServer(f"bench-n{i}", env=env, public_host=h, ports=window)
            nodes.append(n)
            n.start()
        rows.append(run("3 nodes, PostgreSQL store", nodes, hosts))
    finally:
        for n in nodes:
            n.close()
        window.release()
        store.stop()
    print("\n| setup | create → success, median (p90) | create → login on every node, "
          "median (p90) |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['setup']} | {r['op_median']:.0f} ms ({r['op_p90']:.0f}) | "
              f"{r['served_median']:.0f} ms ({r['served_p90']:.0f}) |")


if __name__ == "__main__":
    main()
