"""The rest of the official DBaaS PostgreSQL surface (issue 10): plans, pg-settings on the real
server, logs, metrics, replication, maintenance, upgrade check, and 501 for what pgbay does not
serve. Every effect is checked in PostgreSQL itself; every refusal changes nothing."""

from __future__ import annotations

import inspect
import time

import pytest
from exoscale.api.exceptions import ExoscaleAPIException
from exoscale.api.v2 import Client

from conftest import (
    api_error,
    ok,
    provision,
    psql,
    psql_ok,
    signed,
    check_error_response,
    find_pool,
    unique,
    uri_with,
)

GIB = 1 << 30


def assert_absent_service(client, name: str) -> None:
    listed = [s["name"] for s in client.list_dbaas_services()["dbaas-services"]]
    assert name not in listed


def show(svc, setting: str) -> str:
    return psql_ok(svc.uri, f"SHOW {setting}")[0]


@pytest.fixture(scope="module")
def svc(client):
    """A hobbyist-2 service created with pg-settings and work-mem; the tests below change its
    plan and settings (and restart it), so it is not the shared one."""
    s = provision(client, unique("surface"), plan="hobbyist-2",
                  pg_settings={"log_min_duration_statement": 250,
                               "autovacuum": {"autovacuum_naptime": 45}},
                  work_mem=8)
    yield s
    ok(client, client.delete_dbaas_service_pg(name=s.name))


# ---------------------------------------------------------------------------------------------
# Service types and plans


def test_service_types_list_the_pg_plans(client):
    types = client.list_dbaas_service_types()["dbaas-service-types"]
    assert [t["name"] for t in types] == ["pg"]
    pg = client.get_dbaas_service_type(service_type_name="pg")
    assert pg["available-versions"] == ["15"] and pg["default-version"] == "15"
    plans = {p["name"]: p for p in pg["plans"]}
    for name in ("hobbyist-2", "startup-4", "startup-8", "business-4", "premium-225"):
        assert name in plans, name
    assert plans["hobbyist-2"]["node-memory"] == 2 * GIB
    assert plans["startup-8"]["node-memory"] == 8 * GIB
    assert plans["business-4"]["node-count"] == 2 and plans["premium-4"]["node-count"] == 3
    assert all(p["node-cpu-count"] > 0 and p["disk-space"] > 0 for p in plans.values())


def test_service_type_of_other_engine_is_501_and_unknown_is_404(client):
    with api_error(501, "mysql", "not served by pgbay"):
        client.get_dbaas_service_type(service_type_name="mysql")
    with api_error(404, "nosuchengine"):
        client.get_dbaas_service_type(service_type_name="nosuchengine")


def test_plan_sets_the_memory_settings_at_creation(client, svc):
    # hobbyist-2: 2 GiB → shared_buffers a quarter, effective_cache_size three quarters.
    assert show(svc, "shared_buffers") == "512MB"
    assert show(svc, "effective_cache_size") == "1536MB"
    assert show(svc, "max_connections") == "200"
    view = client.get_dbaas_service_pg(name=svc.name)
    assert view["node-memory"] == 2 * GIB and view["max-connections"] == 200


def test_settings_given_at_creation_reach_postgresql(client, svc):
    assert show(svc, "log_min_duration_statement") == "250ms"
    assert show(svc, "autovacuum_naptime") == "45s"
    assert show(svc, "work_mem") == "8MB"
    view = client.get_dbaas_service_pg(name=svc.name)
    assert view["pg-settings"]["log_min_duration_statement"] == 250
    assert view["pg-settings"]["autovacuum"] == {"autovacuum_naptime": 45}
    assert view["work-mem"] == 8


def test_plan_change_restarts_with_the_new_memory(client, svc):
    ok(client, client.create_dbaas_pg_connection_pool(
        service_name=svc.name, name="through", database_name="defaultdb", mode="session"))
    pool_uri = find_pool(client.get_dbaas_service_pg(name=svc.name), "through")["connection-uri"]
    assert psql_ok(pool_uri, "SELECT 1") == ["1"]
    pid_before = psql_ok(svc.uri, "SELECT pg_postmaster_start_time()")[0]
    final = ok(client, client.update_dbaas_service_pg(name=svc.name, plan="startup-4"))
    assert "restarted" in final["message"] and "shared_buffers" in final["message"], final
    assert show(svc, "shared_buffers") == "1GB"
    assert show(svc, "effective_cache_size") == "3GB"
    assert psql_ok(svc.uri, "SELECT pg_postmaster_start_time()")[0] != pid_before
    view = client.get_dbaas_service_pg(name=svc.name)
    assert view["plan"] == "startup-4" and view["node-memory"] == 4 * GIB
    # The pool serves again after the restart, on the new server.
    assert psql_ok(pool_uri, "SHOW shared_buffers") == ["1GB"]
    # shared-buffers-percentage scales it (capped at 1 GB per cluster, see README).
    ok(client, client.update_dbaas_service_pg(name=svc.name, shared_buffers_percentage=20))
    assert show(svc, "shared_buffers") == "819MB"


@pytest.mark.parametrize(
    "fields,named",
    [
        ({"plan": "premium-2"}, "plan"),
        ({"plan": "startup-3"}, "plan"),
        ({"work_mem": 0}, "work-mem"),
        ({"work_mem": 1025}, "work-mem"),
        ({"shared_buffers_percentage": 61}, "shared-buffers-percentage"),
        ({"pg_settings": {"no_such_setting": 1}}, "no_such_setting"),
        ({"pg_settings": {"deadlock_timeout": 100}}, "deadlock_timeout"),
        ({"pg_settings": {"deadlock_timeout": "1s"}}, "deadlock_timeout"),
        ({"pg_settings": {"autovacuum_naptime": 30}}, "autovacuum_naptime"),
        ({"pg_settings": {"autovacuum": {"jit": True}}}, "autovacuum.jit"),
        ({"pg_settings": {"autovacuum": {"autovacuum_vacuum_scale_factor": 1.5}}},
         "autovacuum_vacuum_scale_factor"),
        ({"pg_settings": {"io_method": "sync"}}, "io_method"),
        ({"pg_settings": {"pg_stat_statements.track": "all"}}, "pg_stat_statements.track"),
        ({"pg_settings": {"timezone": "Mars/Olympus_Mons"}}, "timezone"),
        ({"pg_settings": {"track_functions": "some"}}, "track_functions"),
        ({"pg_settings": {"jit": "on"}}, "jit"),
        ({"pg_settings": "jit=on"}, "pg-settings"),
    ],
)
def test_update_refused_changes_nothing(client, svc, fields, named):
    before = client.get_dbaas_service_pg(name=svc.name)
    shown = [show(svc, s) for s in ("deadlock_timeout", "work_mem", "shared_buffers")]
    with api_error(400, named):
        client.update_dbaas_service_pg(name=svc.name, **fields)
    after = client.get_dbaas_service_pg(name=svc.name)
    for k in ("plan", "pg-settings", "work-mem", "updated-at"):
        assert after.get(k) == before.get(k), k
    assert [show(svc, s) for s in ("deadlock_timeout", "work_mem", "shared_buffers")] == shown


@pytest.mark.parametrize(
    "fields,named",
    [
        ({"plan": "startup-2"}, "plan"),
        ({"plan": "hobbyist-2", "pg_settings": {"max_connections": 50}}, "max_connections"),
        ({"plan": "hobbyist-2", "work_mem": 2000}, "work-mem"),
    ],
)
def test_create_refused(client, fields, named):
    name = unique("bad")
    with api_error(400, named):
        client.create_dbaas_service_pg(name=name, **fields)
    assert_absent_service(client, name)


def test_pg_settings_reload_and_unset(client, svc):
    final = ok(client, client.update_dbaas_service_pg(
        name=svc.name,
        pg_settings={"deadlock_timeout": 2500, "jit": False, "bg-writer": {"bgwriter_delay": 300}},
        work_mem=16))
    assert "reloaded" in final["message"] and "deadlock_timeout" in final["message"], final
    assert show(svc, "deadlock_timeout") == "2500ms"
    assert show(svc, "jit") == "off"
    assert show(svc, "bgwriter_delay") == "300ms"
    assert show(svc, "work_mem") == "16MB"
    view = client.get_dbaas_service_pg(name=svc.name)
    # Settings merge: the ones given at creation stay.
    assert view["pg-settings"]["log_min_duration_statement"] == 250
    assert view["pg-settings"]["deadlock_timeout"] == 2500
    assert view["pg-settings"]["bg-writer"] == {"bgwriter_delay": 300}
    # null unsets: PostgreSQL's default comes back.
    ok(client, client.update_dbaas_service_pg(name=svc.name, pg_settings={"deadlock_timeout": None}))
    assert show(svc, "deadlock_timeout") == "1s"
    assert "deadlock_timeout" not in client.get_dbaas_service_pg(name=svc.name)["pg-settings"]


def test_pg_setting_that_needs_a_restart(client, svc):
    final = ok(client, client.update_dbaas_service_pg(
        name=svc.name, pg_settings={"max_locks_per_transaction": 128}))
    assert "restarted" in final["message"] and "max_locks_per_transaction" in final["message"]
    assert show(svc, "max_locks_per_transaction") == "128"


def test_settings_schema_is_served(client):
    pg = client.get_dbaas_settings_pg()["settings"]["pg"]
    props = pg["properties"]
    assert props["deadlock_timeout"]["minimum"] == 500
    assert "autovacuum_naptime" in props["autovacuum"]["properties"]
    count = sum(len(p["properties"]) if "properties" in p else 1 for p in props.values())
    assert count >= 55
    assert "pgbouncer" in client.get_dbaas_settings_pg()["settings"]


# ---------------------------------------------------------------------------------------------
# Users: allow-replication


def test_allow_replication_sets_the_role_flag(server, client, service):
    user = unique("repl")
    ok(client, client.create_dbaas_postgres_user(service_name=service.name, username=user))
    q = f"SELECT rolreplication FROM pg_roles WHERE rolname = '{user}'"
    assert psql_ok(service.uri, q) == ["f"]
    r = client.update_dbaas_postgres_allow_replication(
        service_name=service.name, username=user, allow_replication=True)
    assert {u["username"]: u["allow-replication"] for u in r["users"]}[user] is True
    assert psql_ok(service.uri, q) == ["t"]
    view = client.get_dbaas_service_pg(name=service.name)
    assert [u["allow-replication"] for u in view["users"] if u["username"] == user] == [True]
    client.update_dbaas_postgres_allow_replication(
        service_name=service.name, username=user, allow_replication=False)
    assert psql_ok(service.uri, q) == ["f"]
    with api_error(409, service.admin_user, "REPLICATION"):
        client.update_dbaas_postgres_allow_replication(
            service_name=service.name, username=service.admin_user, allow_replication=False)
    admin_q = f"SELECT rolreplication FROM pg_roles WHERE rolname = '{service.admin_user}'"
    assert psql_ok(service.uri, admin_q) == ["t"]
    with api_error(404, "nosuchuser"):
        client.update_dbaas_postgres_allow_replication(
            service_name=service.name, username="nosuchuser", allow_replication=True)
    resp = signed(server, "PUT",
                  f"/dbaas-postgres/{service.name}/user/{user}/allow-replication", {})
    check_error_response(resp, 400, "allow-replication")
    assert psql_ok(service.uri, q) == ["f"]
    ok(client, client.delete_dbaas_postgres_user(service_name=service.name, username=user))


# ---------------------------------------------------------------------------------------------
# Maintenance and upgrade check


def test_maintenance_vacuums_every_database(client, service):
    table = unique("maint").replace("-", "_")
    psql_ok(service.uri, f"CREATE TABLE {table} (i int); INSERT INTO {table} SELECT generate_series(1, 100)")
    op = client.start_dbaas_pg_maintenance(name=service.name)
    final = ok(client, op)
    assert "VACUUM (ANALYZE)" in final["message"] and "defaultdb" in final["message"], final
    row = psql_ok(service.uri, "SELECT last_vacuum IS NOT NULL, last_analyze IS NOT NULL "
                               f"FROM pg_stat_user_tables WHERE relname = '{table}'")
    assert row == ["t|t"]
    psql_ok(service.uri, f"DROP TABLE {table}")
    with api_error(404, "nosuchservice"):
        client.start_dbaas_pg_maintenance(name="nosuchservice")


def test_upgrade_check_answers_not_available(client, service):
    r = client.create_dbaas_pg_upgrade_check(service=service.name, target_version="16")
    assert r["success"] is False and "not available" in r["result"], r
    assert r["task-type"] == "upgrade_check" and r["id"]
    r = client.create_dbaas_pg_upgrade_check(service=service.name, target_version="15")
    assert r["success"] is False and "already runs PostgreSQL 15" in r["result"], r
    with api_error(400, "target-version"):
        client.create_dbaas_pg_upgrade_check(service=service.name, target_version="12")
    with api_error(404, "nosuchservice"):
        client.create_dbaas_pg_upgrade_check(service="nosuchservice", target_version="16")


# ---------------------------------------------------------------------------------------------
# Logs and metrics


def test_logs_show_the_server_log_with_paging(client, service):
    marker = unique("marker").replace("-", "_")
    r = __import__("conftest").psql(service.uri, f"SELECT {marker}()")
    assert r.returncode != 0
    logs = client.get_dbaas_service_logs(service_name=service.name, limit=50)
    entries = logs["logs"]
    assert 0 < len(entries) <= 50
    assert any(marker in e["message"] for e in entries), entries[-5:]
    assert any(marker in e["message"] and e["unit"] == "postgresql" for e in entries)
    for e in entries:
        assert e["unit"] in ("postgresql", "pgbouncer", "pgbackrest") and e["node"] == f"{service.name}-1"
        assert e["time"].endswith("Z") and "T" in e["time"], e
    times = [e["time"] for e in entries]
    assert times == sorted(times, reverse=True)
    page1 = client.get_dbaas_service_logs(service_name=service.name, limit=2)
    page2 = client.get_dbaas_service_logs(service_name=service.name, limit=2,
                                          offset=page1["offset"])
    assert len(page1["logs"]) == 2 and len(page2["logs"]) == 2
    assert page2["logs"][0]["time"] <= page1["logs"][1]["time"]
    assert page2["logs"][0] != page1["logs"][1]
    asc = client.get_dbaas_service_logs(service_name=service.name, limit=3, sort_order="asc")
    assert [e["time"] for e in asc["logs"]] == sorted(e["time"] for e in asc["logs"])
    first = client.get_dbaas_service_logs(service_name=service.name, limit=1, sort_order="asc")
    assert first["offset"] == first["first-log-offset"] == asc["first-log-offset"]
    assert first["logs"] == asc["logs"][:1]
    # Byte offsets, which pgbay gave before pooler lines were included, are still read.
    assert client.get_dbaas_service_logs(service_name=service.name, limit=1, offset="0",
                                         sort_order="asc")["logs"]
    for kwargs, named in [({"limit": 501}, "limit"), ({"limit": 0}, "limit"),
                          ({"sort_order": "up"}, "sort-order"), ({"offset": "abc"}, "offset")]:
        with api_error(400, named):
            client.get_dbaas_service_logs(service_name=service.name, **kwargs)
    with api_error(404, "nosuchservice"):
        client.get_dbaas_service_logs(service_name="nosuchservice")


def test_logs_merge_pooler_and_server_lines_and_page_across_them(client, service):
    pool = unique("logpool")
    ok(client, client.create_dbaas_pg_connection_pool(
        service_name=service.name, name=pool, database_name="defaultdb", mode="transaction"))
    pool_uri = find_pool(client.get_dbaas_service_pg(name=service.name), pool)["connection-uri"]
    assert psql_ok(pool_uri, "SELECT 1") == ["1"]
    # The pooler refuses a plaintext login and a wrong password; then PostgreSQL logs an error.
    r = psql(pool_uri.replace("sslmode=require", "sslmode=disable"), "SELECT 1")
    assert r.returncode != 0 and "SSL required" in r.stderr, r.stderr
    r = psql(uri_with(pool_uri, password="not-the-password"), "SELECT 1")
    assert r.returncode != 0 and "password authentication failed" in r.stderr, r.stderr
    marker = unique("logmarker").replace("-", "_")
    assert psql(service.uri, f"SELECT {marker}()").returncode != 0

    entries = client.get_dbaas_service_logs(service_name=service.name, limit=500)["logs"]
    times = [e["time"] for e in entries]
    assert times == sorted(times, reverse=True)
    assert all(e["node"] == f"{service.name}-1" and e["time"].endswith("Z") for e in entries)
    bouncer = [e for e in entries if e["unit"] == "pgbouncer"]
    ssl = [e for e in bouncer if "login refused" in e["message"] and f'pool "{pool}"' in e["message"]]
    assert len(ssl) == 1, bouncer[:10]
    ssl = ssl[0]
    assert "SSL required" in ssl["message"] and 'code="28000"' in ssl["message"], ssl
    assert ssl["message"].startswith("INFO client{addr=127.0.0.1:"), ssl
    password = [e for e in bouncer if "password authentication failed" in e["message"]
                and 'code="28P01"' in e["message"] and e["time"] >= ssl["time"]]
    assert password, bouncer[:10]
    password = password[-1]
    assert not any("not-the-password" in e["message"] for e in entries)
    server = [e for e in entries if e["unit"] == "postgresql" and marker in e["message"]]
    assert server, entries[:10]
    assert password["time"] <= server[-1]["time"]

    # Paging with the returned offset: every entry once, across both units, in both orders.
    wanted = [ssl, password, server[-1]]
    pages, offsets = [], []
    while not all(w in [e for p in pages for e in p] for w in wanted):
        assert len(pages) < 200, "the lines were not reached by paging"
        kwargs = {"offset": offsets[-1]} if offsets else {}
        page = client.get_dbaas_service_logs(service_name=service.name, limit=3, **kwargs)
        assert 0 < len(page["logs"]) <= 3, page
        pages.append(page["logs"])
        offsets.append(page["offset"])
    walked = [e for p in pages for e in p]
    assert {e["unit"] for e in walked} == {"postgresql", "pgbouncer"}
    assert [e["time"] for e in walked] == sorted((e["time"] for e in walked), reverse=True)
    if len(pages) > 1:
        # What is older than the first page, in one call: the same entries.
        older = client.get_dbaas_service_logs(service_name=service.name,
                                              limit=len(walked) - len(pages[0]),
                                              offset=offsets[0])
        assert older["logs"] == walked[len(pages[0]):]
    # Back up in ascending order from the oldest entry walked: the same entries, reversed.
    back = client.get_dbaas_service_logs(service_name=service.name, limit=len(walked) - 1,
                                         offset=offsets[-1], sort_order="asc")
    assert back["logs"] == list(reversed(walked[:-1]))


def test_metrics_are_sampled_in_the_background(client, service):
    # Transactions for the sampler to see.
    psql_ok(service.uri, "; ".join(["SELECT 1"] * 200))
    # Two points of the hour ring need two 30 s intervals after the first sample (5 s).
    deadline = time.monotonic() + 75
    while True:
        m = client.get_dbaas_service_metrics(service_name=service.name, period="hour")["metrics"]
        rows = m["connections"]["data"]["rows"]
        if len(rows) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(rows) >= 2, m
    for key in ("connections", "tps", "cache_hit_ratio", "database_size"):
        cols = m[key]["data"]["cols"]
        assert cols[0]["label"] == "time" and cols[1]["label"] == f"{service.name}-1"
        assert m[key]["data"]["rows"], key
    assert all(r[1] >= 1 for r in m["connections"]["data"]["rows"])
    assert all(0 <= r[1] <= 100 for r in m["cache_hit_ratio"]["data"]["rows"])
    assert all(r[1] > 1_000_000 for r in m["database_size"]["data"]["rows"])
    assert all(r[1] >= 0 for r in m["tps"]["data"]["rows"])
    assert "pool_client_connections" in m and "pool_server_connections" in m
    week = client.get_dbaas_service_metrics(service_name=service.name, period="week")
    assert week["metrics"]["connections"]["data"]["rows"]
    with api_error(400, "period"):
        client.get_dbaas_service_metrics(service_name=service.name, period="minute")
    with api_error(404, "nosuchservice"):
        client.get_dbaas_service_metrics(service_name="nosuchservice", period="hour")


# ---------------------------------------------------------------------------------------------
# Not served: 501 naming it; typos still 404


def test_unserved_endpoints_are_501_naming_them(server, client, service):
    with api_error(404, "has no migration"):
        client.stop_dbaas_pg_migration(name=service.name)
    with api_error(501, "get-dbaas-service-mysql", "not served by pgbay"):
        client.get_dbaas_service_mysql(name="x")
    with api_error(501, "list-dbaas-external-endpoint-types"):
        client.list_dbaas_external_endpoint_types()
    check_error_response(signed(server, "GET", "/dbaas-postgress/x"), 404, "no such endpoint")
    check_error_response(signed(server, "GET", "/dbaas-mysql/x/nope"), 404)


# ---------------------------------------------------------------------------------------------
# Coverage: every DBaaS PostgreSQL method of the official client answers something but 404

OTHER_ENGINES = ("mysql", "kafka", "opensearch", "valkey", "grafana", "thanos", "clickhouse",
                 "elasticsearch", "rsyslog", "datadog", "prometheus")


def pg_methods() -> set[str]:
    names = {n for n, _ in inspect.getmembers(Client, callable) if not n.startswith("_")}
    return {n for n in names if "dbaas" in n and ("_pg" in n or "postgres" in n
            or not any(e in n for e in OTHER_ENGINES))}


def test_every_pg_method_of_the_official_client_is_answered(client):
    name = unique("cover")
    db, user, pool = "coverdb", unique("coveruser"), "coverpool"
    gone = unique("gone")
    ok(client, client.create_dbaas_service_pg(name=gone, plan="hobbyist-2"))
    calls = [
        ("create_dbaas_service_pg", dict(name=name, plan="hobbyist-2")),
        ("get_dbaas_service_pg", dict(name=name)),
        ("list_dbaas_services", {}),
        ("update_dbaas_service_pg", dict(name=name, termination_protection=False)),
        ("create_dbaas_pg_database", dict(service_name=name, database_name=db)),
        ("create_dbaas_postgres_user", dict(service_name=name, username=user)),
        ("reveal_dbaas_postgres_user_password", dict(service_name=name, username=user)),
        ("reset_dbaas_postgres_user_password", dict(service_name=name, username=user)),
        ("update_dbaas_postgres_allow_replication",
         dict(service_name=name, username=user, allow_replication=True)),
        ("create_dbaas_pg_connection_pool",
         dict(service_name=name, name=pool, database_name=db, username=user)),
        ("update_dbaas_pg_connection_pool",
         dict(service_name=name, connection_pool_name=pool, size=5)),
        ("get_dbaas_settings_pg", {}),
        ("get_dbaas_ca_certificate", {}),
        ("list_dbaas_service_types", {}),
        ("get_dbaas_service_type", dict(service_type_name="pg")),
        ("get_dbaas_service_logs", dict(service_name=name)),
        ("get_dbaas_service_metrics", dict(service_name=name)),
        ("start_dbaas_pg_maintenance", dict(name=name)),
        ("create_dbaas_pg_upgrade_check", dict(service=name, target_version="16")),
        ("stop_dbaas_pg_migration", dict(name=name)),
        ("get_dbaas_migration_status", dict(name=name)),
        ("create_dbaas_task_migration_check", dict(service=name, source_service_uri="postgres://x")),
        ("get_dbaas_task", dict(service=name, id="00000000-0000-0000-0000-000000000000")),
        ("list_dbaas_integration_types", {}),
        ("create_dbaas_integration", dict(integration_type="read_replica",
                                          source_service=name, dest_service=name)),
        ("get_dbaas_integration", dict(id="00000000-0000-0000-0000-000000000000")),
        ("update_dbaas_integration", dict(id="00000000-0000-0000-0000-000000000000",
                                          settings={})),
        ("delete_dbaas_integration", dict(id="00000000-0000-0000-0000-000000000000")),
        ("list_dbaas_integration_settings",
         dict(integration_type="read_replica", source_type="pg", dest_type="pg")),
        ("list_dbaas_external_integrations", dict(service_name=name)),
        ("get_dbaas_external_integration", dict(integration_id="00000000-0000-0000-0000-000000000000")),
        ("list_dbaas_external_endpoint_types", {}),
        ("list_dbaas_external_endpoints", {}),
        ("attach_dbaas_service_to_endpoint", dict(source_service_name=name,
                                                  dest_endpoint_id="00000000-0000-0000-0000-000000000000",
                                                  type="prometheus")),
        ("detach_dbaas_service_from_endpoint", dict(source_service_name=name,
                                                    integration_id="00000000-0000-0000-0000-000000000000")),
        ("delete_dbaas_pg_connection_pool", dict(service_name=name, connection_pool_name=pool)),
        ("delete_dbaas_postgres_user", dict(service_name=name, username=user)),
        ("delete_dbaas_pg_database", dict(service_name=name, database_name=db)),
        ("delete_dbaas_service_pg", dict(name=name)),
        ("delete_dbaas_service", dict(name=gone)),
    ]
    assert {c for c, _ in calls} == pg_methods(), "the client has methods this test does not call"
    answered = {}
    for method, kwargs in calls:
        try:
            out = getattr(client, method)(**kwargs)
            if isinstance(out, dict) and out.get("state") == "pending" and "id" in out:
                out = ok(client, out)
            answered[method] = 200
        except ExoscaleAPIException as e:
            status = e.response.status_code if e.response is not None else None
            answered[method] = status
        if method == "create_dbaas_service_pg":
            from conftest import wait_service_running
            wait_service_running(client, name)
    # A service created without a `migration` has no migration status: that 404 names it.
    not_found = {m: st for m, st in answered.items()
                 if st == 404 and m not in ("get_dbaas_migration_status", "stop_dbaas_pg_migration",
                                            "get_dbaas_task", "get_dbaas_integration",
                                            "update_dbaas_integration",
                                            "delete_dbaas_integration")}
    assert not not_found, answered
    served = {m for m, st in answered.items() if st == 200}
    assert served >= {"create_dbaas_service_pg", "update_dbaas_postgres_allow_replication",
                      "start_dbaas_pg_maintenance", "get_dbaas_service_logs",
                      "get_dbaas_service_metrics", "create_dbaas_pg_upgrade_check",
                      "get_dbaas_service_type", "delete_dbaas_service_pg",
                      "create_dbaas_task_migration_check"}, answered
    # A service is not its own read replica (400 naming the field); no integration has the nil id.
    assert answered["create_dbaas_integration"] == 400, answered
    assert answered["get_dbaas_integration"] == 404, answered
