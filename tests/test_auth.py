"""EXO2-HMAC-SHA256 authentication: what the official signer sends passes, anything else is 403.

Requests with a tampered, expired or absent signature are built with the official signer
(`exoscale_auth.ExoscaleV2Auth`) and then altered, so that the only difference from an accepted
request is the one under test.
"""

import json
import time

import pytest
import requests
from exoscale_auth import ExoscaleV2Auth

from conftest import API_KEY, API_SECRET, api_error, check_error_response, unique


def build(server, method, path, body=None, params=None) -> requests.PreparedRequest:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    return requests.Request(method, f"{server.url}{path}", data=body, params=params,
                            headers=headers).prepare()


def sign(req, key=API_KEY, secret=API_SECRET, expires=None) -> requests.PreparedRequest:
    expires = int(time.time() + 600) if expires is None else expires
    ExoscaleV2Auth(key, secret)._sign_request(req, expires)
    return req


def send(req) -> requests.Response:
    with requests.Session() as s:
        return s.send(req, timeout=30)


def service_exists(client, name) -> bool:
    return name in [s["name"] for s in client.list_dbaas_services()["dbaas-services"]]


def test_signed_request_accepted(server):
    r = send(sign(build(server, "GET", "/dbaas-service")))
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["dbaas-services"], list)


def test_signed_query_args_accepted(server):
    req = sign(build(server, "GET", "/dbaas-service", params={"a": "1", "b": "2"}))
    assert "signed-query-args=a;b" in req.headers["Authorization"]
    r = send(req)
    assert r.status_code == 200, r.text


def test_missing_signature(server):
    r = send(build(server, "GET", "/dbaas-service"))
    check_error_response(r, 403)
    r = send(build(server, "GET", "/dbaas-postgres/x"))
    check_error_response(r, 403)


def test_wrong_secret(server, client):
    bad = server.client(secret=API_SECRET + "x")
    with api_error(403):
        bad.list_dbaas_services()
    name = unique("forbidden")
    with api_error(403):
        bad.create_dbaas_service_pg(name=name, plan="hobbyist-2")
    assert not service_exists(client, name)


def test_unknown_key(server):
    with api_error(403):
        server.client(key="EXOunknownkey", secret=API_SECRET).list_dbaas_services()


def test_expired_signature(server):
    req = sign(build(server, "GET", "/dbaas-service"), expires=int(time.time()) - 60)
    check_error_response(send(req), 403, "expire")


def test_tampered_body(server, client):
    name = unique("tampered")
    req = sign(build(server, "POST", f"/dbaas-postgres/{name}",
                     json.dumps({"plan": "hobbyist-2"}).encode()))
    req.body = json.dumps({"plan": "premium-9"}).encode()
    req.headers["Content-Length"] = str(len(req.body))
    check_error_response(send(req), 403)
    assert not service_exists(client, name)


def test_tampered_path(server, client, service):
    req = sign(build(server, "GET", "/dbaas-service"))
    req.url = f"{server.url}/dbaas-postgres/{service.name}"
    check_error_response(send(req), 403)


def test_tampered_method(server, client, service):
    # A GET's signature does not authorize a DELETE of the same path.
    req = sign(build(server, "GET", f"/dbaas-postgres/{service.name}"))
    req.method = "DELETE"
    check_error_response(send(req), 403)
    assert client.get_dbaas_service_pg(name=service.name)["state"] == "running"


def test_tampered_query_arg(server):
    req = sign(build(server, "GET", "/dbaas-service", params={"a": "1"}))
    req.url = req.url.replace("a=1", "a=2")
    check_error_response(send(req), 403)


def test_tampered_expiry(server):
    # Extending the expiry changes the signed message: the signature no longer matches.
    req = sign(build(server, "GET", "/dbaas-service"))
    old = req.headers["Authorization"]
    expires = old.split("expires=")[1].split(",")[0]
    req.headers["Authorization"] = old.replace(f"expires={expires}",
                                               f"expires={int(expires) + 3600}")
    check_error_response(send(req), 403)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "Bearer abcdef",
        f"EXO2-HMAC-SHA256 credential={API_KEY}",
        "EXO2-HMAC-SHA256 credential={key},expires={exp}",
        "EXO2-HMAC-SHA256 credential={key},expires={exp},signature=!!not-base64!!",
        "EXO2-HMAC-SHA256 credential={key},expires=soon,signature=AAAA",
        "EXO2-HMAC-SHA256 expires={exp},signature=AAAA",
        "EXO2-HMAC-SHA256 credential={key},expires={exp},signature=",
    ],
    ids=["empty", "bearer", "credential-only", "no-signature", "bad-base64", "bad-expires",
         "no-credential", "empty-signature"],
)
def test_malformed_authorization(server, header):
    req = build(server, "GET", "/dbaas-service")
    req.headers["Authorization"] = header.format(key=API_KEY, exp=int(time.time() + 600))
    check_error_response(send(req), 403)
