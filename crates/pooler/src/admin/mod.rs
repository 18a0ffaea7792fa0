//! The admin console: PgBouncer's `pgbouncer` virtual database on a service's pooler port, for
//! the service's admin users (`UserConfig::admin`).
//!
//! One task per console connection reads whole messages and answers them itself; no server
//! connection is involved. Both protocols are served: a simple Query is one command; the
//! extended protocol (Parse/Bind/Describe/Execute/Sync, what psycopg 3 sends) keeps statements
//! and portals by name, describes a SHOW by its column list (computing its rows once, at the
//! first Describe or Execute of the portal) and answers errors by skipping to the next Sync.
//! (PgBouncer itself refuses the extended protocol on its console.)
//!
//! Commands live one group per file: `show` (the SHOW commands, PgBouncer 1.25.1's columns) and
//! `commands` (PAUSE, RESUME, RECONNECT, KILL, WAIT_CLOSE); `result` encodes answers.

mod commands;
mod result;
mod show;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::backend::Pool;
use crate::errors::{self, ClientError};
use crate::frontend::login::AdminLogin;
use crate::net::messages::error::Severity;
use crate::net::messages::extended::parse_bind;
use crate::net::messages::tag::{self, txn};
use crate::net::messages::{cstr, header, status, HEADER};
use crate::net::ClientStream;
use crate::service::Service;

use result::Answer;

/// `server_version` reported at console login, as PgBouncer 1.25.1 reports it.
pub const SERVER_VERSION: &str = "1.25.1/bouncer";

/// SHOW VERSION: PgBouncer's format ("PgBouncer X.Y.Z"), so tools that parse it take pgbay
/// for the version whose console it implements; pgbay's own version follows in parentheses.
pub const VERSION_TEXT: &str = concat!(
    "PgBouncer 1.25.1 compatible (pgbay ",
    env!("CARGO_PKG_VERSION"),
    ")"
);

/// Largest console message accepted.
const MAX_MESSAGE: usize = 1 << 20;

/// One console connection's view of its service.
pub struct Console {
    pub service: Arc<Service>,
}

impl Console {
    /// The service's pools, by name.
    pub fn pools(&self) -> Vec<Arc<Pool>> {
        let mut pools: Vec<_> = self.service.pools.read().values().cloned().collect();
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        pools
    }

    pub fn pool(&self, name: &str) -> Result<Arc<Pool>, ClientError> {
        self.service
            .pool(name)
            .ok_or_else(|| errors::admin_error(format!("no such database: {name}")))
    }

    /// SHOW CONFIG: this service's pgbouncer settings in PgBouncer's units (seconds), with
    /// PgBouncer's defaults; none is changeable here (the API changes them).
    pub fn config_rows(&self) -> Vec<Vec<Option<String>>> {
        let st = self.service.state();
        let s = &st.settings;
        let admins: Vec<&str> = {
            let mut a: Vec<&str> = st
                .users
                .iter()
                .filter(|(_, u)| u.admin)
                .map(|(n, _)| n.as_str())
                .collect();
            a.sort();
            a
        };
        let secs = |d: std::time::Duration| d.as_secs().to_string();
        let rows: Vec<(&str, String, &str)> = vec![
            ("admin_users", admins.join(","), ""),
            ("auth_type", "scram-sha-256".into(), "md5"),
            (
                "client_tls_sslmode",
                match (&st.tls, st.tls_required) {
                    (None, _) => "disable",
                    (Some(_), true) => "require",
                    (Some(_), false) => "allow",
                }
                .into(),
                "disable",
            ),
            (
                "ignore_startup_parameters",
                s.ignore_startup_parameters.join(","),
                "",
            ),
            (
                "max_client_conn",
                st.limits.max_client_conn.to_string(),
                "100",
            ),
            (
                "max_prepared_statements",
                s.max_prepared_statements.to_string(),
                "200",
            ),
            ("max_user_connections", "0".into(), "0"),
            ("min_pool_size", s.min_pool_size.to_string(), "0"),
            (
                "query_wait_timeout",
                secs(st.limits.query_wait_timeout),
                "120",
            ),
            (
                "server_idle_timeout",
                s.server_idle_timeout
                    .map(secs)
                    .unwrap_or_else(|| "0".into()),
                "600",
            ),
            ("server_lifetime", secs(s.server_lifetime), "3600"),
            (
                "server_reset_query_always",
                u8::from(s.server_reset_query_always).to_string(),
                "0",
            ),
            (
                "stats_period",
                secs(crate::backend::pool::STATS_PERIOD),
                "60",
            ),
        ];
        rows.into_iter()
            .map(|(k, v, d)| {
                vec![
                    Some(k.to_string()),
                    Some(v),
                    Some(d.to_string()),
                    Some("no".to_string()),
                ]
            })
            .collect()
    }
}

/// A prepared (extended protocol) statement or portal: the command text, and for a portal its
/// answer once computed.
#[derive(Default)]
struct Portal {
    text: String,
    answer: Option<Answer>,
}

/// Serves one console connection until it leaves.
pub async fn run(
    mut stream: ClientStream,
    service: Arc<Service>,
    login: AdminLogin,
    addr: SocketAddr,
) {
    let console = Console { service };
    let _cancel = login.cancel;
    tracing::info!(user = %login.user, %addr, "admin console opened");
    let mut input = BytesMut::with_capacity(1024);
    let mut out = BytesMut::with_capacity(4096);
    let mut statements: HashMap<String, String> = HashMap::new();
    let mut portals: HashMap<String, Portal> = HashMap::new();
    // After an error in the extended protocol, messages are skipped until Sync.
    let mut skipping = false;
    let stop = console.service.shutdown.cancelled();
    tokio::pin!(stop);
    loop {
        // Answer every whole message buffered, then flush once.
        while let Some((kind, len)) = header(&input) {
            if !(HEADER - 1..=MAX_MESSAGE).contains(&(len - 1)) {
                let e = errors::protocol_violation("invalid message length");
                e.write(&mut out, Severity::Fatal);
                let _ = stream.write_all(&out).await;
                return;
            }
            if input.len() < len {
                break;
            }
            let msg = input.split_to(len).freeze();
            let body = &msg[HEADER..];
            if kind == tag::TERMINATE {
                let _ = stream.write_all(&out).await;
                return;
            }
            if skipping && kind != tag::SYNC {
                continue;
            }
            let r = match kind {
                tag::QUERY => {
                    let text = cstr(body).map(|(q, _)| String::from_utf8_lossy(q).into_owned());
                    let text = text.unwrap_or_default();
                    match commands::execute(&console, &text).await {
                        Ok(answer) => {
                            if let Some(cols) = answer.columns {
                                result::row_description(&mut out, cols);
                            }
                            result::write_rows(&mut out, &answer);
                        }
                        Err(e) => e.write(&mut out, Severity::Error),
                    }
                    status::ready_for_query(&mut out, txn::IDLE);
                    Ok(())
                }
                tag::PARSE => parse(body).map(|(name, text)| {
                    statements.insert(name, text);
                    out.put_slice(&[tag::PARSE_COMPLETE, 0, 0, 0, 4]);
                }),
                tag::BIND => bind(&msg, &statements).map(|(portal, text)| {
                    portals.insert(portal, Portal { text, answer: None });
                    out.put_slice(&[tag::BIND_COMPLETE, 0, 0, 0, 4]);
                }),
                tag::DESCRIBE => {
                    describe(&console, body, &statements, &mut portals, &mut out).await
                }
                tag::EXECUTE => {
                    let name = cstr(body).map(|(n, _)| String::from_utf8_lossy(n).into_owned());
                    match name.and_then(|n| portals.get_mut(&n).map(|p| (n, p))) {
                        None => Err(errors::admin_error("unknown portal")),
                        Some((_, portal)) => {
                            let answer = match portal.answer.take() {
                                Some(a) => Ok(a),
                                None => commands::execute(&console, &portal.text).await,
                            };
                            answer.map(|a| result::write_rows(&mut out, &a))
                        }
                    }
                }
                tag::CLOSE => {
                    if let Some((&kind, rest)) = body.split_first() {
                        if let Some((name, _)) = cstr(rest) {
                            let name = String::from_utf8_lossy(name).into_owned();
                            if kind == b'S' {
                                statements.remove(&name);
                            } else {
                                portals.remove(&name);
                            }
                        }
                    }
                    out.put_slice(&[tag::CLOSE_COMPLETE, 0, 0, 0, 4]);
                    Ok(())
                }
                tag::SYNC => {
                    skipping = false;
                    portals.remove("");
                    status::ready_for_query(&mut out, txn::IDLE);
                    Ok(())
                }
                b'H' => Ok(()), // Flush: everything is written below anyway.
                other => Err(errors::admin_error(format!(
                    "unsupported packet type for admin console: {}",
                    other as char
                ))),
            };
            if let Err(e) = r {
                e.write(&mut out, Severity::Error);
                skipping = true;
            }
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() || stream.flush().await.is_err() {
                return;
            }
            out.clear();
        }
        tokio::select! {
            r = stream.read_buf(&mut input) => match r {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            _ = &mut stop => {
                errors::admin_shutdown(&console.service.name).write(&mut out, Severity::Fatal);
                let _ = stream.write_all(&out).await;
                let _ = stream.flush().await;
                return;
            }
        }
    }
}

/// Parse: (statement name, text). Parameter types are ignored: no command takes parameters.
fn parse(body: &[u8]) -> Result<(String, String), ClientError> {
    let bad = || errors::protocol_violation("malformed Parse message");
    let (name, rest) = cstr(body).ok_or_else(bad)?;
    let (text, _) = cstr(rest).ok_or_else(bad)?;
    Ok((
        String::from_utf8_lossy(name).into_owned(),
        String::from_utf8_lossy(text).into_owned(),
    ))
}

/// Bind: (portal name, the statement's text).
fn bind(msg: &[u8], statements: &HashMap<String, String>) -> Result<(String, String), ClientError> {
    let b = parse_bind(msg).ok_or_else(|| errors::protocol_violation("malformed Bind message"))?;
    let stmt = String::from_utf8_lossy(b.statement).into_owned();
    let text = statements.get(&stmt).cloned().ok_or_else(|| {
        errors::admin_error(format!("prepared statement \"{stmt}\" does not exist"))
    })?;
    Ok((String::from_utf8_lossy(b.portal).into_owned(), text))
}

/// Describe: a statement gets ParameterDescription (no parameters) then its row shape; a
/// portal its row shape, computing the answer that its Execute will send.
async fn describe(
    console: &Console,
    body: &[u8],
    statements: &HashMap<String, String>,
    portals: &mut HashMap<String, Portal>,
    out: &mut BytesMut,
) -> Result<(), ClientError> {
    let bad = || errors::protocol_violation("malformed Describe message");
    let (&kind, rest) = body.split_first().ok_or_else(bad)?;
    let (name, _) = cstr(rest).ok_or_else(bad)?;
    let name = String::from_utf8_lossy(name).into_owned();
    let columns = if kind == b'S' {
        let text = statements.get(&name).ok_or_else(|| {
            errors::admin_error(format!("prepared statement \"{name}\" does not exist"))
        })?;
        out.put_slice(&[b't', 0, 0, 0, 6, 0, 0]);
        commands::columns(text)?
    } else {
        let portal = portals
            .get_mut(&name)
            .ok_or_else(|| errors::admin_error(format!("portal \"{name}\" does not exist")))?;
        // Only SHOW commands have rows; running them here is free of side effects.
        match commands::columns(&portal.text)? {
            Some(_) => {
                let answer = commands::execute(console, &portal.text).await?;
                let cols = answer.columns;
                portal.answer = Some(answer);
                cols
            }
            None => None,
        }
    };
    match columns {
        Some(cols) => result::row_description(out, cols),
        None => out.put_slice(&[tag::NO_DATA, 0, 0, 0, 4]),
    }
    Ok(())
}

/// Drops leading whitespace and a trailing ';' from a command.
fn trim(text: &str) -> &str {
    let t = text.trim();
    t.strip_suffix(';').unwrap_or(t).trim()
}
