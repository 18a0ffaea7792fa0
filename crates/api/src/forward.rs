//! Any node's API serves every service (issue 16): a request about a service placed on another
//! node is forwarded to that node's API as it came (method, path, query, body and signature,
//! which the other node verifies with the same shared key pair), and its answer is returned
//! unchanged. Work that needs the service's cluster (admin SQL, restarts, provisioning) thus runs
//! where the cluster lives, and what the caller sees is what a single node answers. A new
//! service is created on the live node with the fewest services.
//!
//! A service whose node is not answering is still shown (from the store, `rebuilding`), and a
//! change to it is refused with 409 naming the node.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use pgbay_control::{Control, Owner};

use crate::error::ApiError;

/// Marks a forwarded request: the receiving node handles it itself.
pub const FORWARDED: &str = "x-pgbay-forwarded-by";

/// How long a forwarded request may take (a create waits for its operation's first answer).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(120);

/// The service a `/v2` path is about, if any.
fn service_in_path(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v2/")?;
    let mut parts = rest.split('/');
    let kind = parts.next()?;
    let name = parts.next()?;
    let about_service = matches!(
        kind,
        "dbaas-postgres"
            | "dbaas-service"
            | "dbaas-service-logs"
            | "dbaas-service-metrics"
            | "dbaas-migration-status"
            | "dbaas-task-migration-check"
            | "dbaas-task"
    );
    (about_service && !name.is_empty()).then_some(name)
}

/// The middleware: forwards requests about another node's services to it.
pub(crate) async fn to_owner(State(control): State<Control>, req: Request, next: Next) -> Response {
    if !control.shared_store() || req.headers().contains_key(FORWARDED) {
        return next.run(req).await;
    }
    let path = req.uri().path().to_string();
    let Some(name) = service_in_path(&path).map(str::to_string) else {
        return next.run(req).await;
    };
    let create = req.method() == Method::POST && path == format!("/v2/dbaas-postgres/{name}");
    // A fork or a read replica is made from its source's cluster and repository: on its node.
    let (req, source) = if create {
        match source_of_create(req).await {
            Ok(r) => r,
            Err(resp) => return resp,
        }
    } else {
        (req, None)
    };
    let owner = match control.route(&name, create, source.as_deref()).await {
        Ok(o) => o,
        Err(e) => return ApiError::from(e).into_response(),
    };
    match owner {
        Owner::Local => next.run(req).await,
        Owner::Dead { .. } if req.method() == Method::GET => next.run(req).await,
        Owner::Dead { node } => ApiError::Conflict(format!(
            "service {name} runs on node {node}, which is not answering: it cannot be changed \
             until that node is back"
        ))
        .into_response(),
        Owner::Remote { node, api_url } => {
            let ca = control.tls_material().ca_pem;
            forward(req, &control, &node, &api_url, ca).await
        }
    }
}

/// The service a create makes its new service from (`fork-from-service`, or the source of a
/// `read_replica` integration), and the request with its body put back.
async fn source_of_create(req: Request) -> Result<(Request, Option<String>), Response> {
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, crate::MAX_BODY).await else {
        return Err(ApiError::BadRequest("request body too large".into()).into_response());
    };
    let source = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| {
            v.get("fork-from-service")
                .and_then(|f| f.as_str())
                .map(str::to_string)
                .or_else(|| {
                    v.get("integrations")?
                        .as_array()?
                        .iter()
                        .find_map(|i| i.get("source-service")?.as_str().map(str::to_string))
                })
        });
    Ok((Request::from_parts(parts, Body::from(bytes)), source))
}

async fn forward(
    req: Request,
    control: &Control,
    node: &str,
    api_url: &str,
    ca: String,
) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, crate::MAX_BODY).await else {
        return ApiError::BadRequest("request body too large".into()).into_response();
    };
    let url = format!(
        "{api_url}{}",
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let mut builder = ureq::http::Request::builder()
        .method(parts.method.as_str())
        .uri(&url);
    for (k, v) in &parts.headers {
        if matches!(
            k.as_str(),
            "host" | "content-length" | "connection" | "transfer-encoding"
        ) {
            continue;
        }
        builder = builder.header(k.as_str(), v.as_bytes());
    }
    builder = builder.header(FORWARDED, control.node_name());
    let method = parts.method.clone();
    let node = node.to_string();
    let answer = tokio::task::spawn_blocking(move || {
        let agent = agent(&ca);
        let sent = if bytes.is_empty() && matches!(method, Method::GET | Method::DELETE) {
            builder.body(()).map(|r| agent.run(r))
        } else {
            builder.body(bytes.to_vec()).map(|r| agent.run(r))
        };
        match sent {
            Ok(Ok(mut resp)) => {
                let status = resp.status().as_u16();
                let ctype = resp
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let body = resp
                    .body_mut()
                    .with_config()
                    .limit(64 << 20)
                    .read_to_vec()
                    .map_err(|e| e.to_string())?;
                Ok((status, ctype, body))
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    match answer {
        Ok(Ok((status, ctype, body))) => {
            let mut resp = Response::new(Body::from(body));
            *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            if let Some(c) = ctype.and_then(|c| HeaderValue::from_str(&c).ok()) {
                resp.headers_mut().insert("content-type", c);
            }
            resp
        }
        Ok(Err(e)) => {
            tracing::warn!(node = %node, error = %e, "forwarding a request to the service's node");
            ApiError::Conflict(format!(
                "the service's node {node} did not answer the forwarded request: {e}"
            ))
            .into_response()
        }
        Err(e) => ApiError::Internal(e.to_string()).into_response(),
    }
}

/// One HTTP agent for the process, trusting pgbay's CA (the other nodes' APIs use its
/// certificates when they speak TLS).
fn agent(ca_pem: &str) -> ureq::Agent {
    static AGENT: std::sync::OnceLock<ureq::Agent> = std::sync::OnceLock::new();
    AGENT
        .get_or_init(|| {
            let certs: Vec<ureq::tls::Certificate<'static>> =
                ureq::tls::parse_pem(ca_pem.as_bytes())
                    .filter_map(|i| match i {
                        Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                        _ => None,
                    })
                    .collect();
            let roots = ureq::tls::RootCerts::new_with_certs(&certs);
            let config = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(FORWARD_TIMEOUT))
                .tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build())
                .build();
            ureq::Agent::new_with_config(config)
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::service_in_path;

    #[test]
    fn paths_name_their_service() {
        assert_eq!(service_in_path("/v2/dbaas-postgres/a"), Some("a"));
        assert_eq!(
            service_in_path("/v2/dbaas-postgres/a/connection-pool/p"),
            Some("a")
        );
        assert_eq!(service_in_path("/v2/dbaas-service/b"), Some("b"));
        assert_eq!(service_in_path("/v2/dbaas-task/c/123"), Some("c"));
        assert_eq!(service_in_path("/v2/dbaas-service"), None);
        assert_eq!(service_in_path("/v2/operation/x"), None);
        assert_eq!(service_in_path("/v2/dbaas-integration/x"), None);
        assert_eq!(service_in_path("/metrics"), None);
    }
}
