//! The catalog of errors the pooler sends to clients. Each constructor owns its SQLSTATE and the
//! wording of its message, so one condition reads the same wherever it is detected and this file
//! is the list of what a client can see. Errors that come from a server keep the server's own
//! SQLSTATE (`server_error`).
//!
//! Messages name the pool so that a client of several pools can tell which one refused it, but
//! only once the client proved its password: before that, nothing names the service or tells
//! whether a pool exists (`frontend::login`).

use std::borrow::Cow;
use std::net::IpAddr;
use std::time::Duration;

use bytes::BytesMut;

use crate::backend::{AcquireError, ServerError};
use crate::net::messages::error::{error_response, Severity};

/// An error for a client: SQLSTATE and message. Sent as FATAL (then the connection closes) or,
/// where the client may go on, as ERROR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    code: Cow<'static, str>,
    message: String,
}

impl ClientError {
    fn new(code: &'static str, message: impl Into<String>) -> ClientError {
        ClientError {
            code: Cow::Borrowed(code),
            message: message.into(),
        }
    }

    pub fn code(&self) -> &str {
        &self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// Appends the ErrorResponse.
    pub fn write(&self, buf: &mut BytesMut, severity: Severity) {
        error_response(buf, severity, &self.code, &self.message);
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.message)
    }
}

// Protocol.

/// The client broke the protocol (08P01).
pub fn protocol_violation(detail: impl Into<String>) -> ClientError {
    ClientError::new("08P01", detail)
}

pub fn unsupported_protocol(version: u32) -> ClientError {
    ClientError::new(
        "0A000",
        format!(
            "unsupported frontend protocol {}.{}",
            version >> 16,
            version & 0xffff
        ),
    )
}

pub fn unsupported_startup_parameter(name: &str) -> ClientError {
    protocol_violation(format!("unsupported startup parameter: {name}"))
}

/// A custom setting at login past the most the pooler carries for one client (54000, as
/// PostgreSQL's program_limit_exceeded).
pub fn too_many_custom_settings(name: &str, most: usize) -> ClientError {
    ClientError::new(
        "54000",
        // Debug-quoted: whatever the client sent stays one printable word in logs.
        format!("too many custom settings at login (at most {most}): {name:?}"),
    )
}

/// Transaction/statement mode: a statement would give the client a custom setting past the
/// `most` the pooler carries for it between server connections (refused before it runs, so
/// that none is reset behind the client's back).
pub fn one_custom_setting_too_many(name: &str, most: usize) -> ClientError {
    ClientError::new(
        "54000",
        // Debug-quoted: whatever the client sent stays one printable word in logs.
        format!(
            "too many custom settings (at most {most} per client of a transaction or statement \
             pool): {name:?}"
        ),
    )
}

/// A setting in the startup `options` the pooler does not carry between server connections.
pub fn unsupported_startup_option(name: &str) -> ClientError {
    ClientError::new(
        "0A000",
        // Debug-quoted: whatever the client sent stays one printable word in logs.
        format!("unsupported setting in startup options: {name:?}"),
    )
}

/// A startup `options` word that is not a `-c name=value` or `--name=value` switch (42601,
/// as PostgreSQL's "invalid command-line argument").
pub fn bad_startup_option(word: &str) -> ClientError {
    ClientError::new(
        "42601",
        format!("invalid startup options argument: {word:?}"),
    )
}

/// Writing to the client failed; nobody will read this, but the login must end with an error.
pub fn client_write_failed() -> ClientError {
    ClientError::new("08006", "client write failed")
}

// Admission.

/// The service's IP filter refuses the client. The message does not name the service: whoever
/// is outside the filter has no business learning whose port this is.
pub fn address_not_allowed(addr: IpAddr) -> ClientError {
    ClientError::new(
        "28000",
        format!("client address {addr} is not allowed to connect"),
    )
}

/// Answered before the password is checked: like PgBouncer's "no more connections allowed
/// (max_client_conn)", it does not name the service.
pub fn too_many_clients(max_client_conn: u32) -> ClientError {
    ClientError::new(
        "53300",
        format!("too many client connections (max_client_conn {max_client_conn})"),
    )
}

/// PgBouncer's `client_login_timeout` ran out before the client passed authentication; its
/// message is PgBouncer's too.
pub fn login_timeout() -> ClientError {
    ClientError::new("08P01", "client_login_timeout")
}

/// The service requires TLS and the client logged in over plaintext. PgBouncer's
/// `client_tls_sslmode=require` says "SSL required" too; libpq users know the word.
pub fn tls_required(pool: &str) -> ClientError {
    ClientError::new(
        "28000",
        format!("SSL required: connections to pool \"{pool}\" must use TLS (sslmode=require)"),
    )
}

pub fn no_user_name() -> ClientError {
    ClientError::new(
        "28000",
        "no PostgreSQL user name specified in startup packet",
    )
}

pub fn pool_not_found(pool: &str) -> ClientError {
    ClientError::new("3D000", format!("pool \"{pool}\" does not exist"))
}

pub fn user_not_allowed_for_pool(user: &str, pool: &str) -> ClientError {
    ClientError::new(
        "28000",
        format!("user \"{user}\" may not use pool \"{pool}\""),
    )
}

// Authentication.

pub fn password_failed(user: &str) -> ClientError {
    ClientError::new(
        "28P01",
        format!("password authentication failed for user \"{user}\""),
    )
}

pub fn unsupported_sasl_mechanism() -> ClientError {
    ClientError::new("28000", "unsupported SASL mechanism")
}

// Sessions ended by the pooler.

/// The service is removed or the pooler shuts down.
pub fn admin_shutdown(service: &str) -> ClientError {
    ClientError::new("57P01", format!("service \"{service}\" is shutting down"))
}

/// pgbay drains (`Pooler::drain`); `reason` is a `DrainReason as u8`.
pub fn pgbay_draining(reason: u8) -> ClientError {
    let why = if reason == crate::DrainReason::Restarting as u8 {
        "pgbay is restarting, reconnect"
    } else {
        "pgbay is shutting down"
    };
    ClientError::new("57P01", format!("terminating connection because {why}"))
}

/// KILL on the admin console (PgBouncer says "database removed", 08P01).
pub fn pool_killed(pool: &str) -> ClientError {
    ClientError::new(
        "08P01",
        format!("database removed: pool \"{pool}\" was killed from the admin console"),
    )
}

// Admin console (PgBouncer's wording and SQLSTATE: its pooler errors are all 08P01).

/// A user who is not the service's admin asked for the console (after a good password).
pub fn admin_not_allowed() -> ClientError {
    ClientError::new("08P01", "not allowed")
}

/// A console command failed (ERROR; the console stays usable).
pub fn admin_error(message: impl Into<String>) -> ClientError {
    ClientError::new("08P01", message)
}

pub fn pool_removed(pool: &str) -> ClientError {
    ClientError::new("57P01", format!("pool \"{pool}\" was removed"))
}

/// A request whose wait for a server connection a cancel request ended: PostgreSQL's own words
/// for a cancelled statement.
pub fn query_canceled() -> ClientError {
    ClientError::new("57014", "canceling statement due to user request")
}

pub fn query_wait_timeout(pool: &str, timeout: Duration) -> ClientError {
    ClientError::new(
        "08006",
        format!(
            "pool \"{pool}\": query_wait_timeout ({timeout:?}) expired while waiting for a server connection"
        ),
    )
}

/// No server connection could be made.
pub fn server_unreachable(pool: &str, error: &ServerError) -> ClientError {
    ClientError::new("08001", format!("pool \"{pool}\": {error}"))
}

/// The server connection serving the client broke.
pub fn server_lost(pool: &str, cause: impl std::fmt::Display) -> ClientError {
    ClientError::new(
        "08006",
        format!("pool \"{pool}\": server connection lost: {cause}"),
    )
}

/// Statement mode: the client opened a transaction block.
pub fn statement_mode_transaction(pool: &str) -> ClientError {
    ClientError::new(
        "25001",
        format!("transaction blocks are not allowed in statement pooling mode (pool \"{pool}\")"),
    )
}

/// Transaction/statement mode: SQL-level prepared statements would live on a server
/// connection the client does not keep.
pub fn sql_prepared_in_transaction_mode(pool: &str) -> ClientError {
    ClientError::new(
        "0A000",
        format!(
            "SQL-level PREPARE/EXECUTE/DEALLOCATE is not supported in transaction pooling mode \
             (pool \"{pool}\"); use protocol-level prepared statements"
        ),
    )
}

/// An SQL `DEALLOCATE` of a name the client has no statement for (PostgreSQL's words).
pub fn unknown_statement(name: &str) -> ClientError {
    ClientError::new(
        "26000",
        format!("prepared statement \"{name}\" does not exist"),
    )
}

/// A named Parse of a name the client already has (PostgreSQL's words).
pub fn duplicate_statement(name: &str) -> ClientError {
    ClientError::new(
        "42P05",
        format!("prepared statement \"{name}\" already exists"),
    )
}

/// A statement the pooler answers itself in a failed transaction block (PostgreSQL's words).
pub fn in_failed_transaction() -> ClientError {
    ClientError::new(
        "25P02",
        "current transaction is aborted, commands ignored until end of transaction block",
    )
}

/// Transaction/statement mode: a LISTEN/UNLISTEN the pool's listener cannot serve; it is never
/// sent to a pooled server connection.
pub fn listen_form_refused(pool: &str) -> ClientError {
    ClientError::new(
        "0A000",
        format!(
            "LISTEN/UNLISTEN must be alone in its statement, with a plain or quoted channel name, \
             in transaction pooling mode (pool \"{pool}\")"
        ),
    )
}

/// A client stopped in the middle of a message while holding a server connection.
pub fn client_message_timeout(pool: &str, timeout: Duration) -> ClientError {
    ClientError::new(
        "08P01",
        format!(
            "pool \"{pool}\": client_message_timeout ({timeout:?}) expired in the middle of a \
             message while holding a server connection"
        ),
    )
}

/// A client sat idle in a transaction (holding a server connection) for too long
/// (PgBouncer's wording and SQLSTATE).
pub fn idle_transaction_timeout(pool: &str, timeout: Duration) -> ClientError {
    ClientError::new(
        "08P01",
        format!("pool \"{pool}\": idle transaction timeout ({timeout:?})"),
    )
}

/// Transaction/statement mode: the pool's LISTEN connection did not confirm a LISTEN in time.
pub fn listen_unavailable(pool: &str) -> ClientError {
    ClientError::new(
        "08006",
        format!(
            "pool \"{pool}\": the listening server connection is not available; \
             notifications will be delivered once it is back"
        ),
    )
}

/// Transaction/statement mode: a LISTENing client did not read its notifications and went past
/// the notification budget (per client, or the pooler's total); it is disconnected (53200, as
/// PostgreSQL's out_of_memory: the pooler will not hold more for it).
pub fn notify_budget(pool: &str, over: crate::notify::Over) -> ClientError {
    let (which, bytes) = match over {
        crate::notify::Over::Client(n) => ("the client's notification budget", n),
        crate::notify::Over::Total(n) => ("the pooler's total notification budget", n),
    };
    ClientError::new(
        "53200",
        format!(
            "pool \"{pool}\": notifications were not read: {which} of {bytes} bytes is used up; \
             read notifications promptly (or raise --notify-client-budget / \
             --notify-total-budget)"
        ),
    )
}

/// A server connection could not be had or used: a server's own error keeps its SQLSTATE.
pub fn server_error(pool: &str, error: &ServerError) -> ClientError {
    match error {
        ServerError::Server { code, .. } => ClientError {
            code: Cow::Owned(code.clone()),
            message: format!("pool \"{pool}\": {error}"),
        },
        ServerError::Connect { .. } | ServerError::ConnectTimeout { .. } => {
            server_unreachable(pool, error)
        }
        _ => ClientError::new("08006", format!("pool \"{pool}\": {error}")),
    }
}

/// Waiting for a server connection failed.
pub fn acquire_failed(pool: &str, error: &AcquireError) -> ClientError {
    match error {
        AcquireError::Timeout(t) => query_wait_timeout(pool, *t),
        AcquireError::Server(e) => server_error(pool, e),
        AcquireError::Removed => pool_removed(pool),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_keep_their_sqlstate() {
        let e = ServerError::Server {
            code: "57P03".into(),
            message: "the database system is starting up".into(),
        };
        let c = server_error("p1", &e);
        assert_eq!(c.code(), "57P03");
        assert!(c.message().contains("p1") && c.message().contains("starting up"));
        let refused = ServerError::Connect {
            addr: "127.0.0.1:1".into(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        };
        assert_eq!(server_error("p1", &refused).code(), "08001");
        assert_eq!(
            acquire_failed("p1", &AcquireError::Timeout(Duration::from_secs(1))).code(),
            "08006"
        );
        assert_eq!(acquire_failed("p1", &AcquireError::Removed).code(), "57P01");
    }
}
