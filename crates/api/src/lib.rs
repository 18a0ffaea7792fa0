//! pgbay's HTTP face: the Exoscale v2 DBaaS PostgreSQL API (base `/v2`) over pgbay-control.
//! Every request is authenticated with an EXO2-HMAC-SHA256 signature (`/metrics` also takes the
//! key pair as HTTP basic auth) and logged in its own span; every error is `{"message": "..."}`.
//!
//! A request goes: signature check (`auth`), path parameters and body parsed into control's typed
//! commands (`extract`, `requests`), one control call (`handlers`), and the record it returns
//! rendered as the document's JSON (`views`); failures map to statuses in `error`.

pub mod auth;
mod error;
mod extract;
pub mod forward;
mod handlers;
mod pool_metrics;
mod requests;
mod unserved;
mod views;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::Router;
use pgbay_control::Control;
use tracing::Instrument;

pub use auth::Credentials;
pub use error::ApiError;
pub use pool_metrics::{PoolMetrics, PoolMetricsSource, PoolSample, RefusedSample};

/// Largest accepted request body.
pub const MAX_BODY: usize = 1 << 20;

/// Where Prometheus scrapes pgbay (`GET /metrics` on the API listener), as services advertise it
/// in `prometheus-uri`.
#[derive(Debug, Clone)]
pub struct MetricsAt {
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
}

/// `router`, with `/metrics` also exporting per-pool series taken from `source` at each scrape.
pub fn router_with_pool_metrics(
    control: Control,
    creds: Credentials,
    metrics_at: MetricsAt,
    source: std::sync::Arc<dyn PoolMetricsSource>,
) -> Router {
    router(control, creds, metrics_at).layer(axum::Extension(PoolMetrics(source)))
}

/// The `/v2` router over `control`, accepting requests signed with `creds`, plus the Prometheus
/// endpoint `/metrics` advertised as `metrics_at`. `/metrics` names every service, pool and user
/// and their traffic: it takes a signed request too, or the key pair as HTTP basic auth.
pub fn router(control: Control, creds: Credentials, metrics_at: MetricsAt) -> Router {
    use handlers as h;
    let v2 = Router::new()
        .route(
            "/dbaas-postgres/{name}",
            post(h::create_service)
                .get(h::get_service)
                .put(h::update_service)
                .delete(h::delete_service),
        )
        .route("/dbaas-service", get(h::list_services))
        .route("/dbaas-service/{name}", delete(h::delete_service))
        .route("/dbaas-postgres/{name}/database", post(h::create_database))
        .route(
            "/dbaas-postgres/{name}/database/{database}",
            delete(h::delete_database),
        )
        .route("/dbaas-postgres/{name}/user", post(h::create_user))
        .route(
            "/dbaas-postgres/{name}/user/{username}",
            delete(h::delete_user),
        )
        .route(
            "/dbaas-postgres/{name}/user/{username}/password/reset",
            put(h::reset_password),
        )
        .route(
            "/dbaas-postgres/{name}/user/{username}/password/reveal",
            get(h::reveal_password),
        )
        .route(
            "/dbaas-postgres/{name}/connection-pool",
            post(h::create_pool),
        )
        .route(
            "/dbaas-postgres/{name}/connection-pool/{pool}",
            put(h::update_pool).delete(h::delete_pool),
        )
        .route("/operation/{id}", get(h::get_operation))
        .route(
            "/dbaas-postgres/{name}/user/{username}/allow-replication",
            put(h::allow_replication),
        )
        .route(
            "/dbaas-postgres/{name}/maintenance/start",
            put(h::start_maintenance),
        )
        .route(
            "/dbaas-postgres/{name}/upgrade-check",
            post(h::upgrade_check),
        )
        .route("/dbaas-service-type", get(h::list_service_types))
        .route("/dbaas-service-type/{name}", get(h::get_service_type))
        .route("/dbaas-service-logs/{name}", post(h::service_logs))
        .route("/dbaas-service-metrics/{name}", post(h::service_metrics))
        .route("/dbaas-migration-status/{name}", get(h::migration_status))
        .route("/dbaas-integration", post(h::create_integration))
        .route("/dbaas-integration-types", get(h::integration_types))
        .route(
            "/dbaas-integration-settings/{name}/{p2}/{p3}",
            get(h::integration_settings),
        )
        .route(
            "/dbaas-integration/{name}",
            get(h::get_integration)
                .put(h::update_integration)
                .delete(h::delete_integration),
        )
        .route(
            "/dbaas-postgres/{name}/migration/stop",
            post(h::stop_migration),
        )
        .route(
            "/dbaas-task-migration-check/{name}",
            post(h::migration_check),
        )
        .route("/dbaas-task/{name}/{id}", get(h::get_task))
        .route("/dbaas-settings-pg", get(h::settings))
        .route("/dbaas-ca-certificate", get(h::ca_certificate));
    let v2 = unserved_routes(v2)
        .method_not_allowed_fallback(|| async {
            ApiError::MethodNotAllowed("method not allowed on this endpoint".into())
        })
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .layer(axum::Extension(metrics_at));
    Router::new()
        .nest("/v2", v2)
        .route("/metrics", get(h::metrics))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .with_state(control.clone())
        // After the signature check: a request for another node's service goes there.
        .layer(middleware::from_fn_with_state(control, forward::to_owner))
        .layer(middleware::from_fn_with_state(creds, authenticate))
}

/// Registers every endpoint of [`unserved::UNSERVED`]: 501 naming it.
fn unserved_routes(mut r: Router<Control>) -> Router<Control> {
    use axum::routing::{on, MethodFilter};
    for &(method, path, routed, operation) in unserved::UNSERVED {
        let filter = match method {
            "GET" => MethodFilter::GET,
            "POST" => MethodFilter::POST,
            "PUT" => MethodFilter::PUT,
            "DELETE" => MethodFilter::DELETE,
            _ => MethodFilter::PATCH,
        };
        let message = format!("{operation} ({method} {path}) is not served by pgbay");
        r = r.route(
            routed,
            on(filter, move || {
                let message = message.clone();
                async move { ApiError::NotImplemented(message) }
            }),
        );
    }
    r
}

/// Verifies the signature over the raw request (method, path, query, body) before routing, and
/// runs the rest of the request in its own span. `/metrics` also accepts HTTP basic auth with the
/// key pair, and refuses with 401 and a basic challenge (what Prometheus and browsers expect)
/// where the API answers 403.
async fn authenticate(State(creds): State<Credentials>, req: Request, next: Next) -> Response {
    let span = tracing::info_span!("api", method = %req.method(), path = %req.uri().path());
    async move {
        let (parts, body) = req.into_parts();
        let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
            Ok(b) => b,
            Err(_) => {
                return ApiError::BadRequest(format!("request body larger than {MAX_BODY} bytes"))
                    .into_response()
            }
        };
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok());
        let metrics = parts.uri.path() == "/metrics";
        let verdict = if metrics && header.is_some_and(auth::is_basic) {
            auth::verify_basic(&creds, header)
        } else {
            let signed = auth::SignedRequest {
                method: parts.method.as_str(),
                path: parts.uri.path(),
                query: parts.uri.query(),
                body: &bytes,
            };
            auth::verify(&creds, &signed, header, chrono::Utc::now().timestamp())
        };
        if let Err(why) = verdict {
            tracing::info!(reason = why, "refused request");
            if metrics {
                return unauthorized(why);
            }
            return ApiError::Forbidden(format!("authentication failed: {why}")).into_response();
        }
        let resp = next
            .run(Request::from_parts(parts, Body::from(bytes)))
            .await;
        tracing::info!(status = resp.status().as_u16(), "request");
        resp
    }
    .instrument(span)
    .await
}

/// 401 with a basic challenge, for `/metrics`.
fn unauthorized(why: &str) -> Response {
    let mut resp = (
        axum::http::StatusCode::UNAUTHORIZED,
        axum::Json(serde_json::json!({
            "message": format!(
                "authentication failed: {why}; /metrics takes a request signed like the API's, \
                 or the API key and secret as HTTP basic auth"
            )
        })),
    )
        .into_response();
    resp.headers_mut().insert(
        axum::http::header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Basic realm=\"pgbay\""),
    );
    resp
}
