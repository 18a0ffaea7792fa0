"""Three clients' random sessions through a transaction pool, against PostgreSQL directly.

The companion of test_protocol_differential.py for what a session holds rather than how its
messages are answered: settings (SET, SET LOCAL, RESET, `set_config`, `SET SESSION
CHARACTERISTICS`, settings results are read with, a custom setting), transaction blocks, savepoints and failed
blocks, data written and rolled back, cursors, COPY in and out (also one that fails before it
starts, its data following, and one the client leaves in the middle of), LISTEN/NOTIFY (also
in a failed block, and behind a NOTIFY of the same transaction), `DISCARD ALL`, and clients
that leave in the middle of a transaction and come back as new sessions. Each seed is a script
of simple Queries and extended-protocol transactions, sometimes two in one write; the clients
take turns (only when the one that ran last is outside a transaction block). Directly, each
client has a PostgreSQL connection of its own; through the pool (size 1) all run on one server
connection. Every answer is compared (message types, SQLSTATEs, rows, command tags,
ParameterStatus, the ReadyForQuery status), and at the end the notifications each side
received and the table's contents.

Each side has its own table, channel and advisory lock key, so that the two runs share nothing
on the server.
"""

from __future__ import annotations

import random

import psycopg
import pytest

from conftest import seeds_from_env, unique
from test_notify_budget import RawClient, _msg
from test_protocol_differential import comparable, direct_and_pooled

# PGBAY_FUZZ_SEEDS=FIRST-LAST runs other seeds (a longer hunt than the suite's).
SEEDS = seeds_from_env(range(1, 41))
STEPS = 40
CLIENTS = "ABC"

QUERIES = [
    "insert into {T} values (1)", "insert into {T} select generate_series(1,3)",
    "select count(*), sum(v) from {T}", "update {T} set v = v + 1", "delete from {T} where v > 3",
    "begin", "commit", "rollback", "savepoint a", "rollback to a", "release a",
    "begin isolation level repeatable read", "end", "abort", "set transaction read only",
    "set transaction isolation level serializable", "show transaction_isolation",
    "set session characteristics as transaction isolation level repeatable read",
    "show default_transaction_isolation", "set default_transaction_read_only = on",
    "reset default_transaction_read_only",
    "set search_path = nothere, public", "show search_path", "reset search_path",
    "set timezone = 'Asia/Tokyo'", "set local timezone = 'Europe/Paris'", "show timezone",
    "select '2020-01-02 03:04:05+00'::timestamptz::text", "reset timezone",
    "set datestyle = 'German'", "select '2020-01-02'::date::text", "reset datestyle",
    "set intervalstyle = 'iso_8601'", "select interval '1 day 2 hours'::text",
    "set statement_timeout = '5s'", "set local statement_timeout = 100", "show statement_timeout",
    "set application_name = 'q1'", "show application_name",
    "select set_config('application_name', 'sc', false)",
    "select set_config('timezone', 'America/New_York', true)",
    "set extra_float_digits = 2", "select 0.1::float8::text",
    "set standard_conforming_strings = off", "select 'a\\\\b'", "reset standard_conforming_strings",
    "set bytea_output = 'escape'", "select 'ab'::bytea", "set client_min_messages = 'error'",
    "set lc_numeric = 'C'", "select to_char(1234.5, '9G999D9')",
    "set client_encoding = 'LATIN1'", "reset client_encoding",
    "set work_mem = '8MB'; selec bad", "set work_mem = '9MB'; select 1", "show work_mem",
    "select set_config('work_mem', '10MB', false), 1/0",
    "set search_path = public; select count(*) from {T}",
    "begin; insert into {T} values (7); commit", "insert into {T} values (2); selec bad",
    "reset all", "discard all", "discard plans", "select 1", "selec bad", "select 1/0",
    "declare c cursor for select generate_series(1,5)", "fetch 2 from c", "close c",
    "listen {CH}", "unlisten {CH}", "unlisten *", "notify {CH}, 'x'",
    "select pg_notify('{CH}', 'y')", "select pg_advisory_xact_lock({K})",
    "copy (select v from {T} order by v) to stdout", "set role none", "reset role",
    # A custom setting (NULL directly before any SET, '' through the pool once another client
    # defined it on the shared connection: the same to an application).
    "set app.tenant = 'a1'", "set local app.tenant = 'a2'", "reset app.tenant",
    "select set_config('app.tenant', 'a3', false)", "select set_config('App.Tenant', 'a4', true)",
    "set app.tenant = 'a5'; selec bad", "begin; set app.tenant = a6; commit",
    "set App.Tenant to A7", "set app.tenant = -007", "set \"app\".tenant = 8.50",
    "set app.tenant to default",
    "select coalesce(current_setting('app.tenant', true), '')",
]


def _step(rng: random.Random) -> list[tuple]:
    r = rng.random()
    if r < 0.05:
        return [("leave",)]
    if r < 0.07:
        return [("copy-and-leave", rng.randint(0, 2))]
    if r < 0.12:
        return [("copy-in", rng.randint(0, 3), rng.random() < 0.15)]
    if r < 0.35:
        return [("extended", rng.choice(QUERIES)) for _ in range(rng.randint(1, 2))] + [("S",)]
    return [("Q", rng.choice(QUERIES))]


def _wire(parts: list[tuple], side: dict) -> bytes:
    out = b""
    for p in parts:
        text = p[1].format(**side).encode() if p[0] in ("Q", "extended") else b""
        if p[0] == "Q":
            out += _msg(b"Q", text + b"\0")
        elif p[0] == "extended":
            out += (_msg(b"P", b"\0" + text + b"\0\0\0") + _msg(b"B", b"\0\0" + b"\0\0" * 3)
                    + _msg(b"E", b"\0\0\0\0\0"))
        elif p[0] == "S":
            out += _msg(b"S", b"")
        elif p[0] != "leave":
            out += _msg(b"Q", f"copy {side['T']} from stdin\0".encode())
            out += b"".join(_msg(b"d", f"{i + 10}\n".encode()) for i in range(p[1]))
            if p[0] == "copy-in":
                out += _msg(b"f", b"client says no\0") if p[2] else _msg(b"c", b"")
    return out


@pytest.fixture(scope="module")
def sides(client):
    s, direct, pooled = direct_and_pooled(client, "sdiff")
    return s.uri_for(dbname="app"), {"direct": direct, "pooled": pooled}


@pytest.mark.parametrize("seed", SEEDS)
def test_three_sessions_hold_what_they_would_hold_directly(sides, seed):
    admin_uri, uris = sides
    rng = random.Random(seed)
    tag = unique("s").replace("-", "_")
    side = {"direct": {"T": f"d_{tag}", "CH": "chd", "K": 7},
            "pooled": {"T": f"p_{tag}", "CH": "chp", "K": 8}}
    with psycopg.connect(admin_uri, autocommit=True) as admin:
        for lab in side:
            admin.execute(f"CREATE TABLE {side[lab]['T']} (v int)")
            admin.execute(f"GRANT ALL ON {side[lab]['T']} TO appuser")
    conns = {lab: {c: RawClient(uris[lab]) for c in CLIENTS} for lab in uris}
    # Notifications each client received, per side (a client that leaves drops its own: those
    # it had not read yet are lost on both sides, however late each side delivered them).
    notes = {lab: {c: [] for c in CLIENTS} for lab in uris}
    status, cur, script = {c: "I" for c in CLIENTS}, "A", []

    def fail(what: str) -> None:
        lines = "\n".join(f"  {c} {p}" for c, p in script)
        pytest.fail(f"seed {seed}, step {len(script)}:\n{lines}\n{what}")

    try:
        for _ in range(STEPS):
            if status[cur] == "I" and rng.random() < 0.4:
                cur = rng.choice([c for c in CLIENTS if c != cur])
            parts = _step(rng)
            if parts[0][0] not in ("leave", "copy-and-leave") and rng.random() < 0.2:
                more = _step(rng)
                if more[0][0] not in ("leave", "copy-and-leave"):
                    parts += more
            script.append((cur, parts))
            if parts[0][0] in ("leave", "copy-and-leave"):
                # The client leaves (in the middle of its COPY, or wherever it is) and comes
                # back as a new session: nothing it had not committed may stay.
                for lab in uris:
                    conns[lab][cur].sock.sendall(_wire(parts, side[lab]))
                    conns[lab][cur].close()
                    conns[lab][cur] = RawClient(uris[lab])
                    notes[lab][cur] = []
                status[cur] = "I"
                continue
            readies = sum(p[0] in ("S", "Q", "copy-in") for p in parts)
            got = {}
            for lab in uris:
                raw = conns[lab][cur]
                raw.sock.sendall(_wire(parts, side[lab]))
                got[lab] = [a for _ in range(readies)
                            for a in comparable(raw.until_ready(), notes[lab][cur])]
            if got["direct"] != got["pooled"]:
                fail(f"PostgreSQL: {got['direct']}\npooled:     {got['pooled']}")
            status[cur] = got["direct"][-1][1]
        # The end: blocks left open are rolled back (those clients first: the pool's one
        # connection is theirs); each client has every notification PostgreSQL gave it (the
        # pool's listener may deliver a little later: RawClient's timeout bounds the wait),
        # and nothing else; each side's table holds the same.
        for lab in uris:
            for c in sorted(CLIENTS, key=lambda c: status[c] == "I"):
                raw = conns[lab][c]
                if status[c] != "I":
                    comparable(raw.query("ROLLBACK"), notes[lab][c])
                comparable(raw.query("SELECT 1"), notes[lab][c])
        for c in CLIENTS:
            while len(notes["pooled"][c]) < len(notes["direct"][c]):
                comparable([conns["pooled"][c]._recv_msg()], notes["pooled"][c])
            mine = {lab: sorted(p for _, p in notes[lab][c]) for lab in uris}
            if mine["direct"] != mine["pooled"]:
                fail(f"client {c}'s notifications: PostgreSQL {mine['direct']}, "
                     f"pooled {mine['pooled']}")
        rows = {lab: comparable(conns[lab]["A"].query(f"SELECT count(*), sum(v) FROM {side[lab]['T']}"))
                for lab in uris}
        if rows["direct"] != rows["pooled"]:
            fail(f"table: PostgreSQL {rows['direct']}, pooled {rows['pooled']}")
    finally:
        for raws in conns.values():
            for raw in raws.values():
                raw.close()
