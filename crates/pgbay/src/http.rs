//! The API's HTTP server: an accept loop over hyper's HTTP/1 connection builder, so that the API
//! cannot starve the data plane of file descriptors (pooler and API live in one process).
//!
//! `axum::serve` keeps any connection open forever, including one that never finishes its request
//! line. Here every connection holds a permit of a semaphore sized by `--api-max-connections`
//! (beyond it, a connection gets a one-shot 503 and is closed at once, never queued); the request
//! head must arrive within `--api-header-timeout` (which also bounds how long an idle keep-alive
//! connection lives), and the body within `--api-body-timeout`.
//!
//! With `--api-tls`, the TLS handshake must also finish within the header timeout, and a client
//! that speaks plain HTTP to the port (its first byte is not a TLS handshake record) gets a short
//! `400` telling it to use `https://` and is closed: nothing of the API is ever served in clear.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

/// How long accepting pauses after a failed `accept` (EMFILE/ENFILE): retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// How long shutdown waits for in-flight requests before giving up on them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// At most one warning per this interval about refused connections or accept errors.
const WARN_EVERY: Duration = Duration::from_secs(5);

/// What one client may hold of the API server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more are refused.
    pub max_connections: usize,
    /// Time allowed to send a request head (from connection start or the previous response).
    pub header_timeout: Duration,
    /// Time allowed to send a request body once the head arrived.
    pub body_timeout: Duration,
}

/// The answer of a connection over the cap, written without waiting (best effort) before closing.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\nconnection: close\r\ncontent-length: 51\r\n\r\n\
{\"message\":\"too many API connections, retry later\"}";

/// The answer to plain HTTP on a TLS port, written before closing: the client learns why, rather
/// than seeing garbage or a reset.
const PLAIN_HTTP_REFUSED: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
content-type: application/json\r\nconnection: close\r\ncontent-length: 70\r\n\r\n\
{\"message\":\"this port speaks HTTPS only: use https:// to reach pgbay\"}";

/// The first byte of a TLS record carrying a handshake message (a ClientHello starts with it).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// How much of a refused plain-HTTP request is read (and dropped) after the 400, so that closing
/// does not reset the connection before the client read the answer.
const PLAIN_DRAIN_BYTES: usize = 64 * 1024;
/// How long that draining may take at most.
const PLAIN_DRAIN_TIME: Duration = Duration::from_secs(1);

/// Serves `app` on `listener` within `limits` (over TLS when `tls` is given) until `shutdown`
/// resolves, then lets in-flight requests finish (bounded by [`DRAIN_TIMEOUT`]).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    let app = app.layer(middleware::from_fn_with_state(
        limits.body_timeout,
        body_deadline,
    ));
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut warned: Option<Instant> = None;
    let mut should_warn = move || {
        let now = Instant::now();
        if warned.is_some_and(|t| now.duration_since(t) < WARN_EVERY) {
            return false;
        }
        warned = Some(now);
        true
    };
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                if should_warn() {
                    tracing::warn!(error = %e, "API accept failed; pausing accepts briefly");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if should_warn() {
                tracing::warn!(
                    max = limits.max_connections,
                    "API connection limit reached; refusing new connections"
                );
            }
            refuse_over_capacity(stream);
            continue;
        };
        let app = app.clone();
        let stop = stop_rx.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            match acceptor {
                None => serve_connection(stream, app, limits.header_timeout, stop).await,
                Some(acceptor) => {
                    if let Some(tls) = handshake(stream, &acceptor, limits.header_timeout).await {
                        serve_connection(tls, app, limits.header_timeout, stop).await;
                    }
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(DRAIN_TIMEOUT, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("API connections still open after {DRAIN_TIMEOUT:?}; dropping them");
    }
}

/// Writes [`OVER_CAPACITY`] to a just-accepted `stream` and closes it, without waiting. The
/// write is a plain `send` on the (non-blocking) socket: tokio's `try_write` would refuse to try
/// before the reactor has seen the new socket writable, which for a socket accepted a moment ago
/// it often has not, and the client would see a bare close instead of the 503.
fn refuse_over_capacity(stream: tokio::net::TcpStream) {
    if let Ok(mut stream) = stream.into_std() {
        let _ = std::io::Write::write(&mut stream, OVER_CAPACITY);
    }
}

/// The TLS side of a new connection, within `limit` from its start: `None` when the client is
/// silent, closes, fails the handshake, or speaks plain HTTP (answered with
/// [`PLAIN_HTTP_REFUSED`]).
async fn handshake(
    stream: TcpStream,
    acceptor: &TlsAcceptor,
    limit: Duration,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
        Ok(Ok(1)) => {}
        Ok(Ok(_)) | Ok(Err(_)) => return None,
        Err(_) => {
            tracing::debug!("API connection sent nothing within {limit:?}; closed");
            return None;
        }
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        tracing::debug!("plain HTTP on the API's TLS port; refused");
        refuse_plain(stream, deadline).await;
        return None;
    }
    match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "API TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!("API TLS handshake not done within {limit:?}; closed");
            None
        }
    }
}

/// Writes [`PLAIN_HTTP_REFUSED`], ends the write side, and reads (bounded) what the client sent
/// so that the close is orderly and the client reads the answer.
async fn refuse_plain(mut stream: TcpStream, deadline: tokio::time::Instant) {
    let written = tokio::time::timeout_at(deadline, async {
        stream.write_all(PLAIN_HTTP_REFUSED).await?;
        stream.shutdown().await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        return;
    }
    let mut sink = [0u8; 4096];
    let mut left = PLAIN_DRAIN_BYTES;
    let _ = tokio::time::timeout(PLAIN_DRAIN_TIME, async {
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// One HTTP/1 connection, closed when its head is late or when shutdown asks (after the request
/// in flight, if any).
async fn serve_connection<S>(
    stream: S,
    app: Router,
    header_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        // Late heads, resets and half-sent requests: the client's doing, not worth more than debug.
        tracing::debug!(error = %e, "API connection closed");
    }
}

/// Reads the whole body within the deadline, then hands it on buffered; a late body gets 408 and
/// the connection is closed.
async fn body_deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(limit, axum::body::to_bytes(body, pgbay_api::MAX_BODY)).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(_)) => pgbay_api::ApiError::BadRequest(format!(
            "request body larger than {} bytes",
            pgbay_api::MAX_BODY
        ))
        .into_response(),
        Err(_) => {
            let message = format!("request body not received within {limit:?}");
            let mut resp = (
                StatusCode::REQUEST_TIMEOUT,
                axum::Json(serde_json::json!({ "message": message })),
            )
                .into_response();
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            resp
        }
    }
}

/// Raises this process's open-files soft limit to its hard limit (pooler clients, server
/// connections and API connections all need descriptors) and returns `(soft, hard)` as in effect.
pub fn raise_nofile_limit() -> std::io::Result<(libc::rlim_t, libc::rlim_t)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        lim = raised;
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_capacity_answer_is_well_formed() {
        well_formed(OVER_CAPACITY, "HTTP/1.1 503 ");
    }

    #[test]
    fn plain_http_refusal_is_well_formed() {
        well_formed(PLAIN_HTTP_REFUSED, "HTTP/1.1 400 ");
    }

    fn well_formed(answer: &[u8], status: &str) {
        let text = std::str::from_utf8(answer).expect("ASCII");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with(status));
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .expect("content-length");
        assert_eq!(len.parse::<usize>(), Ok(body.len()));
        let json: serde_json::Value = serde_json::from_str(body).expect("JSON body");
        assert!(json["message"].is_string());
    }
}
