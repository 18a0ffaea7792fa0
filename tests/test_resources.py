"""Resources within the plan (issue 15): pg-settings, work-mem, shared-buffers-percentage and the
plan are checked together against the plan's memory, with PostgreSQL's own shared_memory_size of
the candidate configuration; a refusal changes nothing; a change that needs a restart answers a
pending operation at once and restarts in the background.

Each test is the attack as it was tried: two allowed settings whose costs multiply (12.5 GB of
shared memory on a 2 GiB plan), an API call that hung while the cluster restarted with them."""

from __future__ import annotations

import json

import pytest
import requests
from exoscale_auth import ExoscaleV2Auth

from conftest import (
    API_KEY,
    API_SECRET,
    api_error,
    assert_operation_shape,
    check_error_response,
    ok,
    provision,
    psql_ok,
    unique,
)

# The API must answer within this; the restart it may start runs after the answer.
ANSWER_WITHIN = 5.0

ATTACK = {"max_prepared_transactions": 10000, "max_pred_locks_per_transaction": 5000}


def put(server, name: str, body: dict) -> requests.Response:
    """`PUT /dbaas-postgres/{name}` signed as the official client does, with a short timeout:
    a request that hangs fails the test."""
    return requests.put(
        f"{server.url}/dbaas-postgres/{name}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        auth=ExoscaleV2Auth(API_KEY, API_SECRET),
        timeout=ANSWER_WITHIN,
    )


def show(svc, setting: str) -> str:
    return psql_ok(svc.uri, f"SHOW {setting}")[0]


def started_at(svc) -> str:
    return psql_ok(svc.uri, "SELECT pg_postmaster_start_time()")[0]


def snapshot(client, svc) -> tuple:
    """What a refused change must leave as it was: the stored settings and the server's."""
    view = client.get_dbaas_service_pg(name=svc.name)
    stored = tuple(view.get(k) for k in
                   ("plan", "pg-settings", "work-mem", "shared-buffers-percentage", "updated-at"))
    shown = tuple(show(svc, s) for s in
                  ("max_prepared_transactions", "max_pred_locks_per_transaction",
                   "shared_buffers", "work_mem", "max_connections"))
    return stored, shown, started_at(svc)


@pytest.fixture(scope="module")
def svc(client):
    """The smallest plan, as the attacker had it."""
    s = provision(client, unique("res"), plan="hobbyist-2")
    yield s
    ok(client, client.delete_dbaas_service_pg(name=s.name))


def test_two_settings_that_multiply_are_refused_naming_both_and_the_amount(server, client, svc):
    before = snapshot(client, svc)
    resp = put(server, svc.name, {"pg-settings": ATTACK})
    msg = check_error_response(
        resp, 400,
        "pg-settings.max_prepared_transactions", "pg-settings.max_pred_locks_per_transaction",
        "hobbyist-2", "2048 MB", "shared_memory_size")
    # The amount PostgreSQL computed (about 12.5 GB) is in the message.
    need = int(msg.split("would need ")[1].split(" MB")[0])
    assert need > 10_000, msg
    # Nothing changed, in the store or on the server, and it still serves.
    assert snapshot(client, svc) == before
    assert psql_ok(svc.uri, "SELECT 1") == ["1"]


def test_each_setting_alone_fits_and_the_pair_is_still_refused_afterwards(server, client, svc):
    """One of the two is accepted (a restart, answered pending at once); adding the second
    then names only the field that changed."""
    resp = put(server, svc.name, {"pg-settings": {"max_pred_locks_per_transaction": 5000}})
    assert resp.status_code == 200, resp.text
    op = resp.json()
    assert_operation_shape(op)
    assert op["state"] == "pending", op
    final = ok(client, op)
    assert "restarted" in final["message"] and "max_pred_locks_per_transaction" in final["message"]
    assert show(svc, "max_pred_locks_per_transaction") == "5000"
    before = snapshot(client, svc)
    resp = put(server, svc.name, {"pg-settings": {"max_prepared_transactions": 10000}})
    msg = check_error_response(resp, 400, "pg-settings.max_prepared_transactions", "MB")
    assert "pg-settings.max_pred_locks_per_transaction" not in msg, msg
    assert snapshot(client, svc) == before
    ok(client, client.update_dbaas_service_pg(
        name=svc.name, pg_settings={"max_pred_locks_per_transaction": None}))
    assert show(svc, "max_pred_locks_per_transaction") == "64"


def test_create_with_the_pair_is_refused_and_creates_nothing(client):
    name = unique("res-bad")
    with api_error(400, "pg-settings.max_prepared_transactions",
                   "pg-settings.max_pred_locks_per_transaction", "hobbyist-2", "MB"):
        client.create_dbaas_service_pg(name=name, plan="hobbyist-2", pg_settings=ATTACK)
    listed = [s["name"] for s in client.list_dbaas_services()["dbaas-services"]]
    assert name not in listed


def test_large_fitting_change_answers_pending_at_once_and_then_succeeds(server, client, svc):
    start = started_at(svc)
    body = {"pg-settings": {"max_prepared_transactions": 1000,
                            "max_locks_per_transaction": 256}}
    resp = put(server, svc.name, body)
    assert resp.status_code == 200, resp.text
    op = resp.json()
    assert_operation_shape(op)
    assert op["state"] == "pending", op
    assert "restarting" in op["message"], op
    # The store has the change at once; the server has it once the operation succeeded.
    assert client.get_dbaas_service_pg(name=svc.name)["pg-settings"]["max_prepared_transactions"] == 1000
    final = ok(client, op)
    assert "restarted" in final["message"], final
    for k in ("max_prepared_transactions", "max_locks_per_transaction"):
        assert k in final["message"], final
    assert show(svc, "max_prepared_transactions") == "1000"
    assert show(svc, "max_locks_per_transaction") == "256"
    assert started_at(svc) != start
    ok(client, client.update_dbaas_service_pg(name=svc.name, pg_settings={
        "max_prepared_transactions": None, "max_locks_per_transaction": None}))


def test_work_mem_beyond_the_budget_is_refused(server, client, svc):
    before = snapshot(client, svc)
    resp = put(server, svc.name, {"work-mem": 64})
    check_error_response(resp, 400, "work-mem", "hobbyist-2", "MB", "work_mem")
    assert snapshot(client, svc) == before


def test_shared_buffers_percentage_at_its_maximum_on_the_smallest_plan_is_capped(client, svc):
    # README: shared_buffers is the percentage of the plan's memory, capped at 1 GB per cluster;
    # 60 % of hobbyist-2's 2 GiB is over the cap, and the capped cluster fits the plan.
    ok(client, client.update_dbaas_service_pg(name=svc.name, shared_buffers_percentage=60))
    assert show(svc, "shared_buffers") == "1GB"
    assert client.get_dbaas_service_pg(name=svc.name)["shared-buffers-percentage"] == 60


@pytest.fixture(scope="module")
def big(client):
    """A startup-4 service with a work-mem that fits 4 GiB but not 2 GiB."""
    s = provision(client, unique("res-big"), plan="startup-4", work_mem=40)
    yield s
    ok(client, client.delete_dbaas_service_pg(name=s.name))


def test_plan_downgrade_that_no_longer_fits_is_refused(server, client, big):
    assert show(big, "work_mem") == "40MB"
    before = snapshot(client, big)
    resp = put(server, big.name, {"plan": "hobbyist-2"})
    check_error_response(resp, 400, "`plan`", "hobbyist-2", "2048 MB", "work_mem 40960 kB")
    assert snapshot(client, big) == before
    assert psql_ok(big.uri, "SELECT 1") == ["1"]
    # Lowering work-mem in the same request makes it fit.
    ok(client, client.update_dbaas_service_pg(name=big.name, plan="hobbyist-2", work_mem=4))
    assert show(big, "shared_buffers") == "512MB" and show(big, "work_mem") == "4MB"
