//! The router over a real control plane (temp data dir), driven over real TCP with signed raw
//! HTTP/1.1 requests: authentication refusals and the `{"message"}` error shapes. No cluster is
//! created here; the Python suite drives full life cycles with the official client.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use pgbay_api::auth::{sign, SignedRequest};
use pgbay_api::{router, Credentials, MetricsAt};
use pgbay_control::local::default_bin_dir;
use pgbay_control::{Control, ControlConfig, PortRange};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "../../../tests/held_ports.rs"]
mod held_ports;
use held_ports::held_ports;

fn creds() -> Credentials {
    Credentials {
        key: "EXOtestkey".into(),
        secret: "test-secret".into(),
    }
}

struct Server {
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

async fn server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let control = Control::start(ControlConfig {
        data_dir: dir.path().to_path_buf(),
        public_host: "127.0.0.1".into(),
        port_range: PortRange(held_ports(11)),
        pg_bin_dir: default_bin_dir().unwrap(),
        zone: "test".into(),
        apply_timeout: Duration::from_secs(1),
        external: None,
        service_uid_range: Default::default(),
        store: None,
        backup_repo: None,
        backup_s3: None,
        etcd: None,
        node: pgbay_control::NodeConfig::single(dir.path(), "http://127.0.0.1:0"),
        service_host: None,
        cluster_key: None,
    })
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(
        control,
        creds(),
        MetricsAt {
            host: "127.0.0.1".into(),
            port: addr.port(),
        },
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Server { addr, _dir: dir }
}

impl Server {
    /// Sends `body` to `path`, signed as a client with valid credentials would.
    async fn call(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        send(
            self.addr,
            method,
            path,
            body,
            signed(method, path, body, later()),
        )
        .await
    }

    /// The `message` of a call that must fail with `status`.
    async fn refused(&self, method: &str, path: &str, body: &str, status: u16) -> String {
        let (st, v) = self.call(method, path, body).await;
        assert_eq!(st, status, "{v}");
        v["message"].as_str().unwrap().to_string()
    }
}

/// Sends one request; `auth` is the Authorization header (None: none sent).
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    auth: Option<String>,
) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\nContent-Type: application/json\r\n",
        body.len()
    );
    if let Some(a) = auth {
        req.push_str(&format!("Authorization: {a}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    let status: u16 = text.split(' ').nth(1).unwrap().parse().unwrap();
    let (_, payload) = text.split_once("\r\n\r\n").unwrap();
    // axum sends JSON bodies with a Content-Length, so the payload is the JSON itself.
    (status, serde_json::from_str(payload).unwrap_or(Value::Null))
}

fn signed(method: &str, path: &str, body: &str, expires: i64) -> Option<String> {
    let (p, q) = path
        .split_once('?')
        .map(|(p, q)| (p, Some(q)))
        .unwrap_or((path, None));
    Some(sign(
        &creds(),
        &SignedRequest {
            method,
            path: p,
            query: q,
            body: body.as_bytes(),
        },
        expires,
    ))
}

fn later() -> i64 {
    chrono::Utc::now().timestamp() + 600
}

#[tokio::test]
async fn a_signed_request_is_answered() {
    let srv = server().await;
    let (st, v) = srv.call("GET", "/v2/dbaas-service", "").await;
    assert_eq!(
        (st, v["dbaas-services"].as_array().map(Vec::len)),
        (200, Some(0))
    );
}

#[tokio::test]
async fn query_arguments_are_signed_too() {
    let srv = server().await;
    let (st, _) = srv.call("GET", "/v2/dbaas-service?x=1", "").await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn missing_expired_or_wrong_signatures_are_refused() {
    let srv = server().await;
    let path = "/v2/dbaas-service";
    let expired = chrono::Utc::now().timestamp() - 1;
    for auth in [
        None,
        signed("GET", path, "", expired),
        signed("GET", "/v2/other", "", later()),
        Some("EXO2-HMAC-SHA256 credential=EXOtestkey,expires=9999999999,signature=AAAA".into()),
    ] {
        let (st, v) = send(srv.addr, "GET", path, "", auth).await;
        assert_eq!(st, 403);
        let message = v["message"].as_str().unwrap();
        assert!(message.contains("authentication failed"), "{v}");
    }
}

#[tokio::test]
async fn malformed_json_is_refused() {
    let srv = server().await;
    let m = srv
        .refused("POST", "/v2/dbaas-postgres/svc", "{\"plan\": ", 400)
        .await;
    assert!(m.contains("malformed JSON"), "{m}");
}

#[tokio::test]
async fn an_unknown_field_is_refused_by_name() {
    let srv = server().await;
    // `fork-from-service` is in the document but pgbay does not take it.
    let body = r#"{"plan": "hobbyist-2", "fork-from-service": "other"}"#;
    let m = srv
        .refused("POST", "/v2/dbaas-postgres/svc", body, 400)
        .await;
    assert!(m.contains("fork-from-service"), "{m}");
}

#[tokio::test]
async fn a_wrongly_typed_field_is_refused_by_name() {
    let srv = server().await;
    let m = srv
        .refused("POST", "/v2/dbaas-postgres/svc", r#"{"plan": 2}"#, 400)
        .await;
    assert!(m.contains("`plan`"), "{m}");
}

#[tokio::test]
async fn a_missing_service_is_not_found_by_name() {
    let srv = server().await;
    let m = srv.refused("GET", "/v2/dbaas-postgres/nope", "", 404).await;
    assert!(m.contains("nope"), "{m}");
}

#[tokio::test]
async fn operations_are_looked_up_by_uuid() {
    let srv = server().await;
    let id = "/v2/operation/6b1a7d3e-1f0c-4a53-9d0e-0c3c6b0f9a11";
    srv.refused("GET", id, "", 404).await;
    let m = srv.refused("GET", "/v2/operation/x", "", 400).await;
    assert!(m.contains("`id`"), "{m}");
}

#[tokio::test]
async fn an_unknown_endpoint_is_not_found() {
    let srv = server().await;
    let m = srv.refused("GET", "/v2/nowhere", "", 404).await;
    assert_eq!(m, "no such endpoint");
}

#[tokio::test]
async fn the_settings_schema_is_served() {
    let srv = server().await;
    let (st, v) = srv.call("GET", "/v2/dbaas-settings-pg", "").await;
    assert_eq!(st, 200);
    assert_eq!(
        v["settings"]["pgbouncer"]["properties"]["server_lifetime"]["minimum"],
        60
    );
}

#[tokio::test]
async fn the_ca_certificate_is_served() {
    let srv = server().await;
    let (st, v) = srv.call("GET", "/v2/dbaas-ca-certificate", "").await;
    assert_eq!(st, 200);
    let pem = v["certificate"].as_str().unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
}

/// `/metrics` names every service, pool and user: a signed request or the key pair as basic auth
/// (Prometheus' `basic_auth`), else 401.
#[tokio::test]
async fn metrics_need_the_key_pair() {
    use base64::Engine;
    let srv = server().await;
    let basic = |user: &str, password: &str| {
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Some(format!("Basic {b64}"))
    };
    let c = creds();
    let (st, v) = send(srv.addr, "GET", "/metrics", "", None).await;
    assert_eq!(st, 401, "{v}");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("missing Authorization header")),
        "{v}"
    );
    let (st, _) = send(srv.addr, "GET", "/metrics", "", basic(&c.key, "wrong")).await;
    assert_eq!(st, 401);
    let (st, _) = send(
        srv.addr,
        "GET",
        "/metrics",
        "",
        basic("EXOother", &c.secret),
    )
    .await;
    assert_eq!(st, 401);
    let expired = signed("GET", "/metrics", "", chrono::Utc::now().timestamp() - 1);
    let (st, v) = send(srv.addr, "GET", "/metrics", "", expired).await;
    assert_eq!(st, 401, "{v}");
    // The text format is not JSON: a 200 is what tells.
    let (st, _) = send(srv.addr, "GET", "/metrics", "", basic(&c.key, &c.secret)).await;
    assert_eq!(st, 200);
    let (st, _) = send(
        srv.addr,
        "GET",
        "/metrics",
        "",
        signed("GET", "/metrics", "", later()),
    )
    .await;
    assert_eq!(st, 200);
    // Basic auth is for /metrics only: the API takes signatures.
    let (st, _) = send(
        srv.addr,
        "GET",
        "/v2/dbaas-service",
        "",
        basic(&c.key, &c.secret),
    )
    .await;
    assert_eq!(st, 403);
}
