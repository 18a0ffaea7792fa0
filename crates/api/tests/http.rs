//! The router over a real control plane (temp data dir), driven over real TCP with signed raw
//! HTTP/1.1 requests: authentication refusals and the `{"message"}` error shapes. No cluster is
//! created here; the Python suite drives full life cycles with the official client.

use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::time::Duration;

use pgbay_api::auth::{sign, SignedRequest};
use pgbay_api::{router, Credentials, MetricsAt};
use pgbay_control::local::default_bin_dir;
use pgbay_control::{Control, ControlConfig, PortRange};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
    let lo = StdListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let control = Control::start(ControlConfig {
        data_dir: dir.path().to_path_buf(),
        public_host: "127.0.0.1".into(),
        port_range: PortRange(lo..=lo.saturating_add(10)),
        pg_bin_dir: default_bin_dir().unwrap(),
        zone: "test".into(),
        apply_timeout: Duration::from_secs(1),
        external: None,
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
async fn authentication_and_error_shapes() {
    let srv = server().await;
    let a = srv.addr;

    let (st, v) = send(
        a,
        "GET",
        "/v2/dbaas-service",
        "",
        signed("GET", "/v2/dbaas-service", "", later()),
    )
    .await;
    assert_eq!(
        (st, v["dbaas-services"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    // Query arguments are signed too.
    let (st, _) = send(
        a,
        "GET",
        "/v2/dbaas-service?x=1",
        "",
        signed("GET", "/v2/dbaas-service?x=1", "", later()),
    )
    .await;
    assert_eq!(st, 200);

    for auth in [
        None,
        signed(
            "GET",
            "/v2/dbaas-service",
            "",
            chrono::Utc::now().timestamp() - 1,
        ),
        signed("GET", "/v2/other", "", later()),
        Some("EXO2-HMAC-SHA256 credential=EXOtestkey,expires=9999999999,signature=AAAA".into()),
    ] {
        let (st, v) = send(a, "GET", "/v2/dbaas-service", "", auth).await;
        assert_eq!(st, 403);
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains("authentication failed"),
            "{v}"
        );
    }

    let body = "{\"plan\": ";
    let (st, v) = send(
        a,
        "POST",
        "/v2/dbaas-postgres/svc",
        body,
        signed("POST", "/v2/dbaas-postgres/svc", body, later()),
    )
    .await;
    assert_eq!(st, 400);
    assert!(
        v["message"].as_str().unwrap().contains("malformed JSON"),
        "{v}"
    );

    let body = r#"{"plan": "hobbyist-2", "work-mem": 4}"#;
    let (st, v) = send(
        a,
        "POST",
        "/v2/dbaas-postgres/svc",
        body,
        signed("POST", "/v2/dbaas-postgres/svc", body, later()),
    )
    .await;
    assert_eq!(st, 400);
    assert!(v["message"].as_str().unwrap().contains("work-mem"), "{v}");

    let body = r#"{"plan": 2}"#;
    let (st, v) = send(
        a,
        "POST",
        "/v2/dbaas-postgres/svc",
        body,
        signed("POST", "/v2/dbaas-postgres/svc", body, later()),
    )
    .await;
    assert_eq!(st, 400);
    assert!(v["message"].as_str().unwrap().contains("`plan`"), "{v}");

    let (st, v) = send(
        a,
        "GET",
        "/v2/dbaas-postgres/nope",
        "",
        signed("GET", "/v2/dbaas-postgres/nope", "", later()),
    )
    .await;
    assert_eq!(st, 404);
    assert!(v["message"].as_str().unwrap().contains("nope"), "{v}");

    let id = "/v2/operation/6b1a7d3e-1f0c-4a53-9d0e-0c3c6b0f9a11";
    let (st, _) = send(a, "GET", id, "", signed("GET", id, "", later())).await;
    assert_eq!(st, 404);
    let (st, v) = send(
        a,
        "GET",
        "/v2/operation/x",
        "",
        signed("GET", "/v2/operation/x", "", later()),
    )
    .await;
    assert_eq!(st, 400);
    assert!(v["message"].as_str().unwrap().contains("`id`"), "{v}");

    let (st, v) = send(
        a,
        "GET",
        "/v2/nowhere",
        "",
        signed("GET", "/v2/nowhere", "", later()),
    )
    .await;
    assert_eq!((st, v["message"].as_str()), (404, Some("no such endpoint")));

    let (st, v) = send(
        a,
        "GET",
        "/v2/dbaas-settings-pg",
        "",
        signed("GET", "/v2/dbaas-settings-pg", "", later()),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(
        v["settings"]["pgbouncer"]["properties"]["server_lifetime"]["minimum"],
        60
    );
    let (st, v) = send(
        a,
        "GET",
        "/v2/dbaas-ca-certificate",
        "",
        signed("GET", "/v2/dbaas-ca-certificate", "", later()),
    )
    .await;
    assert_eq!(st, 200);
    assert!(v["certificate"]
        .as_str()
        .unwrap()
        .starts_with("-----BEGIN CERTIFICATE-----"));
}
