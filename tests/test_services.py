"""Services: life cycle, shape of GET, validation of create/update, 404/409, settings, CA."""

import re
import time
import uuid
from urllib.parse import urlsplit

import pytest
import requests

from conftest import (
    API_KEY,
    API_SECRET,
    api_error,
    assert_operation_shape,
    check_error_response,
    component_port,
    ok,
    port_accepts,
    psql_ok,
    reveal,
    signed,
    unique,
    user_names,
)


def wait_port_closed(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while port_accepts(port):
        if time.monotonic() > deadline:
            raise AssertionError(f"port {port} still accepts connections {timeout}s after delete")
        time.sleep(0.2)


def assert_absent(client, name: str) -> None:
    with api_error(404, name):
        client.get_dbaas_service_pg(name=name)
    listed = [s["name"] for s in client.list_dbaas_services()["dbaas-services"]]
    assert name not in listed


def test_service_life_cycle(server, client):
    name = unique("life")
    op = client.create_dbaas_service_pg(name=name, plan="hobbyist-2")
    assert_operation_shape(op)
    assert op["state"] == "pending", op

    # Provisioning runs initdb: the service is visible at once, as `rebuilding`.
    svc = client.get_dbaas_service_pg(name=name)
    assert svc["state"] == "rebuilding", svc["state"]

    final = client.wait(op["id"])
    assert final["state"] == "success" and final["id"] == op["id"], final

    svc = client.get_dbaas_service_pg(name=name)
    assert svc["name"] == name
    assert svc["type"] == "pg"
    assert svc["plan"] == "hobbyist-2"
    assert svc["state"] == "running"
    assert svc["zone"] == "local"
    assert str(svc["version"]).split(".")[0] == "15", svc["version"]
    assert "defaultdb" in svc["databases"]
    assert "avnadmin" in user_names(svc)
    assert svc["connection-pools"] == []
    for key in ("uri-params", "connection-info", "created-at", "updated-at", "prometheus-uri",
                "pgbouncer-settings", "ip-filter"):
        assert key in svc, f"GET service lacks {key!r}"
    assert isinstance(svc["ip-filter"], list)
    assert isinstance(svc["pgbouncer-settings"], dict)

    ports = server.ports
    pg_port = component_port(svc, "pg")
    bouncer_port = component_port(svc, "pgbouncer")
    assert pg_port in ports and bouncer_port in ports and pg_port != bouncer_port

    password = reveal(client, name, "avnadmin")
    assert svc["uri"] == (
        f"postgres://avnadmin:{password}@127.0.0.1:{pg_port}/defaultdb?sslmode=require"
    )

    prom = svc["prometheus-uri"]
    r = requests.get(f"http://{prom['host']}:{prom['port']}/metrics", timeout=10,
                     auth=(API_KEY, API_SECRET))
    assert r.status_code == 200, r.text
    assert f'service="{name}"' in r.text

    listed = {s["name"]: s for s in client.list_dbaas_services()["dbaas-services"]}
    assert listed[name]["type"] == "pg" and listed[name]["plan"] == "hobbyist-2"

    # A real PostgreSQL 15 behind the URI, with TLS, logged in as the admin user.
    rows = psql_ok(
        svc["uri"],
        "SELECT current_user, current_database(), current_setting('server_version_num'),"
        " (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())",
    )
    user, db, version_num, ssl = rows[0].split("|")
    assert (user, db, ssl) == ("avnadmin", "defaultdb", "t")
    assert version_num.startswith("15")
    assert any(line.startswith("defaultdb|") for line in psql_ok(svc["uri"], r"\l"))

    op = client.delete_dbaas_service_pg(name=name)
    ok(client, op)
    assert_absent(client, name)
    wait_port_closed(pg_port)


def test_custom_admin_and_termination_protection(client):
    name = unique("guarded")
    admin_password = "Adm1n-pass_" + uuid.uuid4().hex[:8]
    op = client.create_dbaas_service_pg(
        name=name,
        plan="business-8",
        version="15",
        admin_username="boss",
        admin_password=admin_password,
        termination_protection=True,
        ip_filter=["10.20.0.0/16", "127.0.0.0/8"],
        # min_pool_size at its maximum here, on a service with one small pool, rather than on
        # the shared service whose many pools would then hold server connections open.
        pgbouncer_settings={"server_lifetime": 120, "max_prepared_statements": 0,
                            "min_pool_size": 10000},
    )
    ok(client, op)
    svc = client.get_dbaas_service_pg(name=name)
    assert svc["state"] == "running"
    assert svc["termination-protection"] is True
    assert svc["ip-filter"] == ["10.20.0.0/16", "127.0.0.0/8"]
    assert svc["pgbouncer-settings"]["server_lifetime"] == 120
    assert svc["pgbouncer-settings"]["max_prepared_statements"] == 0
    assert svc["pgbouncer-settings"]["min_pool_size"] == 10000
    assert "boss" in user_names(svc)
    pg_port = component_port(svc, "pg")
    assert svc["uri"] == (
        f"postgres://boss:{admin_password}@127.0.0.1:{pg_port}/defaultdb?sslmode=require"
    )
    assert reveal(client, name, "boss") == admin_password
    assert psql_ok(svc["uri"], "SELECT current_user") == ["boss"]

    # The pool's default user is the service's admin user, whatever its name.
    ok(client, client.create_dbaas_pg_connection_pool(
        service_name=name, name="p", database_name="defaultdb"))
    [pool] = client.get_dbaas_service_pg(name=name)["connection-pools"]
    assert pool["username"] == "boss"

    # The admin password is part of the service and pool URIs: a reset shows in both.
    new_password = "Rotated-" + uuid.uuid4().hex[:12]
    ok(client, client.reset_dbaas_postgres_user_password(
        service_name=name, username="boss", password=new_password))
    svc = client.get_dbaas_service_pg(name=name)
    assert svc["uri"] == (
        f"postgres://boss:{new_password}@127.0.0.1:{pg_port}/defaultdb?sslmode=require"
    )
    pool_uri = svc["connection-pools"][0]["connection-uri"]
    assert pool_uri.startswith(f"postgres://boss:{new_password}@")
    assert psql_ok(svc["uri"], "SELECT current_user") == ["boss"]

    # Termination protection refuses both delete endpoints, and the refusal changes nothing.
    with api_error(409, "termination"):
        client.delete_dbaas_service_pg(name=name)
    with api_error(409, "termination"):
        client.delete_dbaas_service(name=name)
    svc = client.get_dbaas_service_pg(name=name)
    assert svc["state"] == "running" and svc["termination-protection"] is True
    assert psql_ok(svc["uri"], "SELECT 1") == ["1"]

    ok(client, client.update_dbaas_service_pg(name=name, termination_protection=False))
    assert client.get_dbaas_service_pg(name=name)["termination-protection"] is False
    ok(client, client.delete_dbaas_service(name=name))
    assert_absent(client, name)
    wait_port_closed(pg_port)


def test_duplicate_service_name_conflicts(client, service):
    before = client.get_dbaas_service_pg(name=service.name)
    with api_error(409, service.name):
        client.create_dbaas_service_pg(name=service.name, plan="premium-2")
    after = client.get_dbaas_service_pg(name=service.name)
    assert after["plan"] == before["plan"]
    assert after["uri"] == before["uri"]


@pytest.mark.parametrize(
    "fields,named",
    [
        ({"plan": "hobbyist"}, "plan"),
        ({"plan": "gold-2"}, "plan"),
        ({"plan": "hobbyist-x"}, "plan"),
        ({"plan": "Hobbyist-2"}, "plan"),
        ({"plan": ""}, "plan"),
        ({"plan": 2}, "plan"),
        ({"termination_protection": False}, "plan"),  # plan missing
        ({"plan": "hobbyist-2", "version": "14"}, "version"),
        ({"plan": "hobbyist-2", "version": "16"}, "version"),
        ({"plan": "hobbyist-2", "version": 15}, "version"),
        ({"plan": "hobbyist-2", "admin_username": "-bad"}, "admin-username"),
        ({"plan": "hobbyist-2", "admin_username": "x" * 65}, "admin-username"),
        ({"plan": "hobbyist-2", "admin_password": "short7c"}, "admin-password"),
        ({"plan": "hobbyist-2", "admin_password": "has space!"}, "admin-password"),
        ({"plan": "hobbyist-2", "termination_protection": "yes"}, "termination-protection"),
        ({"plan": "hobbyist-2", "ip_filter": "0.0.0.0/0"}, "ip-filter"),
        ({"plan": "hobbyist-2", "pgbouncer_settings": {"server_lifetime": 59}}, "server_lifetime"),
        ({"plan": "hobbyist-2", "pgbouncer_settings": {"no_such_setting": 1}}, "no_such_setting"),
    ],
)
def test_create_service_refused(client, fields, named):
    name = unique("bad")
    with api_error(400, named):
        client.create_dbaas_service_pg(name=name, **fields)
    assert_absent(client, name)


def test_create_service_name_too_long(client):
    name = "n" * 64
    with api_error(400, "name"):
        client.create_dbaas_service_pg(name=name, plan="hobbyist-2")
    listed = [s["name"] for s in client.list_dbaas_services()["dbaas-services"]]
    assert name not in listed


def test_create_service_unknown_field_refused(server, client):
    name = unique("unknown")
    r = signed(server, "POST", f"/dbaas-postgres/{name}",
               {"plan": "hobbyist-2", "no-such-field": True})
    check_error_response(r, 400, "no-such-field")
    assert_absent(client, name)


@pytest.mark.parametrize(
    "body",
    [b'{"plan": "hobbyist-2"', b"plan=hobbyist-2", b"[]", b'"hobbyist-2"', b""],
    ids=["truncated", "form", "array", "string", "empty"],
)
def test_create_service_malformed_json(server, client, body):
    name = unique("malformed")
    r = signed(server, "POST", f"/dbaas-postgres/{name}", body)
    check_error_response(r, 400)
    assert_absent(client, name)


@pytest.mark.parametrize(
    "settings",
    [
        {"server_lifetime": 60},
        {"server_lifetime": 86400},
        {"max_prepared_statements": 0},
        {"max_prepared_statements": 3000},
        {"min_pool_size": 0},  # 10000 is in test_custom_admin_and_termination_protection
        {"server_idle_timeout": 0},
        {"server_idle_timeout": 86400},
        {"server_reset_query_always": True},
        {"ignore_startup_parameters": ["extra_float_digits", "search_path"]},
        {"autodb_pool_mode": "session"},
    ],
    ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()),
)
def test_update_pgbouncer_settings_inside_limits(client, service, settings):
    ok(client, client.update_dbaas_service_pg(name=service.name, pgbouncer_settings=settings))
    got = client.get_dbaas_service_pg(name=service.name)["pgbouncer-settings"]
    for k, v in settings.items():
        assert got.get(k) == v, f"{k}: {got}"


@pytest.mark.parametrize(
    "settings,named",
    [
        ({"server_lifetime": 59}, "server_lifetime"),
        ({"server_lifetime": 86401}, "server_lifetime"),
        ({"server_lifetime": "3600"}, "server_lifetime"),
        ({"max_prepared_statements": -1}, "max_prepared_statements"),
        ({"max_prepared_statements": 3001}, "max_prepared_statements"),
        ({"min_pool_size": 10001}, "min_pool_size"),
        ({"server_idle_timeout": -1}, "server_idle_timeout"),
        ({"server_idle_timeout": 86401}, "server_idle_timeout"),
        ({"server_reset_query_always": "yes"}, "server_reset_query_always"),
        ({"ignore_startup_parameters": ["application_name"]}, "ignore_startup_parameters"),
        ({"autodb_pool_mode": "pooled"}, "autodb_pool_mode"),
        ({"no_such_setting": 1}, "no_such_setting"),
        ({"server_lifetime": 60, "bogus_key": 1}, "bogus_key"),
    ],
    ids=lambda x: str(x),
)
def test_update_pgbouncer_settings_outside_limits(client, service, settings, named):
    before = client.get_dbaas_service_pg(name=service.name)
    with api_error(400, named):
        client.update_dbaas_service_pg(name=service.name, pgbouncer_settings=settings)
    after = client.get_dbaas_service_pg(name=service.name)
    assert after["pgbouncer-settings"] == before["pgbouncer-settings"]
    assert after["updated-at"] == before["updated-at"]


def test_update_plan_and_ip_filter(client, service):
    ok(client, client.update_dbaas_service_pg(name=service.name, ip_filter=["127.0.0.0/8"]))
    assert client.get_dbaas_service_pg(name=service.name)["ip-filter"] == ["127.0.0.0/8"]
    for bad in (["10.0.0.0/33"], ["not-a-network"], "127.0.0.0/8", [8]):
        with api_error(400, "ip-filter"):
            client.update_dbaas_service_pg(name=service.name, ip_filter=bad)
    assert client.get_dbaas_service_pg(name=service.name)["ip-filter"] == ["127.0.0.0/8"]
    ok(client, client.update_dbaas_service_pg(name=service.name, plan="startup-8"))
    assert client.get_dbaas_service_pg(name=service.name)["plan"] == "startup-8"
    with api_error(400, "plan"):
        client.update_dbaas_service_pg(name=service.name, plan="mega-8")
    svc = client.get_dbaas_service_pg(name=service.name)
    assert svc["plan"] == "startup-8"
    # The service keeps working through updates.
    assert psql_ok(svc["uri"], "SELECT 1") == ["1"]


def test_missing_service_is_404(server, client):
    name = unique("ghost")
    with api_error(404, name):
        client.get_dbaas_service_pg(name=name)
    with api_error(404, name):
        client.update_dbaas_service_pg(name=name, termination_protection=False)
    with api_error(404, name):
        client.delete_dbaas_service_pg(name=name)
    with api_error(404, name):
        client.delete_dbaas_service(name=name)
    with api_error(404, name):
        client.create_dbaas_pg_database(service_name=name, database_name="db")
    with api_error(404, name):
        client.create_dbaas_postgres_user(service_name=name, username="u")
    with api_error(404, name):
        client.create_dbaas_pg_connection_pool(service_name=name, name="p",
                                               database_name="defaultdb")
    with api_error(404, name):
        client.reveal_dbaas_postgres_user_password(service_name=name, username="avnadmin")
    assert_absent(client, name)


def test_missing_operation_is_404(client):
    op_id = str(uuid.uuid4())
    with api_error(404, (op_id, "operation")):
        client.get_operation(id=op_id)


def test_operations_stay_retrievable(client, service):
    op = client.create_dbaas_pg_database(service_name=service.name, database_name=unique("opdb"))
    assert op["state"] == "success", op
    again = client.get_operation(id=op["id"])
    assert again["id"] == op["id"] and again["state"] == "success"
    assert again["reference"] == op["reference"]


def test_settings_pg_has_pgbouncer_schema(client):
    settings = client.get_dbaas_settings_pg()["settings"]
    props = settings["pgbouncer"]["properties"]
    assert props["server_lifetime"]["minimum"] == 60
    assert props["server_lifetime"]["maximum"] == 86400
    assert props["max_prepared_statements"]["maximum"] == 3000


def test_ca_certificate(client):
    cert = client.get_dbaas_ca_certificate()["certificate"]
    assert cert.startswith("-----BEGIN CERTIFICATE-----"), cert[:80]
    assert cert.rstrip().endswith("-----END CERTIFICATE-----")
    # The CA is created once: the same on every call.
    assert client.get_dbaas_ca_certificate()["certificate"] == cert


def test_list_services_shape(client, service):
    listed = client.list_dbaas_services()["dbaas-services"]
    mine = [s for s in listed if s["name"] == service.name]
    assert len(mine) == 1
    assert mine[0]["type"] == "pg"
    assert mine[0]["state"] == "running"
    assert re.fullmatch(r"(hobbyist|startup|business|premium)-[0-9]+", mine[0]["plan"])
    assert urlsplit(service.uri).port == service.pg_port
