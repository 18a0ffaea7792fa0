//! From accepted socket to logged-in client, in four named steps: `negotiate` (the first
//! packets: SSLRequest, GSSENCRequest, CancelRequest, StartupMessage), `admit` (address and
//! client-count checks, startup parameters), `authenticate` (SCRAM-SHA-256 or md5) and, once the
//! password checked out, the pool lookup and `greet` (ParameterStatus, BackendKeyData,
//! ReadyForQuery). The first three are `authenticate_client`, bounded by the login timeout; the
//! rest is `finish`.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::auth::md5::md5_response;
use crate::auth::scram::{ServerExchange, MECHANISM, MECHANISM_PLUS};
use crate::auth::ClientAuthMethod;
use crate::errors::{self, ClientError};
use crate::net::messages::startup::{self, Startup, MAX_STARTUP_PACKET};
use crate::net::messages::tag::{self, txn};
use crate::net::messages::{auth, cstr, status};
use crate::net::tls13::{take_over, Aligned};
use crate::net::ClientStream;
use crate::params::{self, Values};
use crate::service::{Service, ServiceState};

/// The virtual database that opens the admin console (PgBouncer's name).
pub const ADMIN_DATABASE: &str = "pgbouncer";

/// Who got in: a pool's client, or the service's admin on the console.
pub enum Login {
    // Boxed: the enum lives in every connecting client's task state; the admin variant is small.
    Pool(Box<LoggedIn>),
    Admin(AdminLogin),
}

/// What login hands to the admin console.
pub struct AdminLogin {
    pub user: String,
    /// Keeps the cancel key it was given registered (cancelling the console does nothing).
    pub cancel: crate::cancel::CancelGuard,
}

/// What login hands to the session.
pub struct LoggedIn {
    pub pool: Arc<crate::backend::Pool>,
    pub params: Values,
    pub cancel: crate::cancel::CancelGuard,
}

async fn read_startup_packet(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
) -> Result<Option<()>, ClientError> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(_) => return Ok(None),
    }
    let len = u32::from_be_bytes(len) as usize;
    if !(8..=MAX_STARTUP_PACKET).contains(&len) {
        return Err(errors::protocol_violation(
            "invalid length of startup packet",
        ));
    }
    buf.clear();
    buf.resize(len - 4, 0);
    match stream.read_exact(&mut buf[..]).await {
        Ok(_) => Ok(Some(())),
        Err(_) => Ok(None),
    }
}

/// Reads one message of type `tag` (e.g. the password answer) into `buf`.
async fn read_message(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    tag: u8,
) -> Result<Option<()>, ClientError> {
    let mut head = [0u8; 5];
    if stream.read_exact(&mut head).await.is_err() {
        return Ok(None);
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if head[0] != tag || !(4..=MAX_STARTUP_PACKET).contains(&len) {
        return Err(errors::protocol_violation(format!(
            "expected message type '{}'",
            tag as char
        )));
    }
    buf.clear();
    buf.resize(len - 4, 0);
    if stream.read_exact(&mut buf[..]).await.is_err() {
        return Ok(None);
    }
    Ok(Some(()))
}

/// A client whose password checked out, not greeted yet.
pub struct Authenticated(Who);

enum Who {
    // Boxed: the startup parameters make it large; the admin variant is a name.
    Pool(Box<Admitted>),
    /// The admin console's user (not checked for the admin flag yet).
    Admin(String),
}

/// The part of a login that runs before the client is known: negotiate → admit →
/// authenticate. It is what `ClientLimits::login_timeout` and `max_pending_logins` bound.
/// Ok(None): the connection ended without a login (a CancelRequest, a failed handshake, the
/// client left).
///
/// Nothing before the password is checked tells whether the pool exists or whose it is
/// (PgBouncer answers an unknown database only after authentication too): an unknown pool, or a
/// pool of another user, goes through the same password exchange and fails it with the same
/// 28P01 as a wrong password; only `finish`, after a right password, names what is wrong.
pub async fn authenticate_client(
    stream: &mut ClientStream,
    addr: SocketAddr,
    service: &Arc<Service>,
) -> Result<Option<Authenticated>, ClientError> {
    let mut buf = BytesMut::with_capacity(512);
    let Some((startup, binding)) = negotiate(stream, &mut buf, service).await? else {
        return Ok(None);
    };
    let binding = binding.as_ref();
    let state = service.state();
    if startup_database(&startup) == ADMIN_DATABASE {
        let user = admit_admin(addr, service, &state, &startup)?;
        if authenticate(stream, &mut buf, service, &state, &user, binding)
            .await?
            .is_none()
        {
            return Ok(None);
        }
        return Ok(Some(Authenticated(Who::Admin(user))));
    }
    let admitted = admit(addr, service, &state, startup)?;
    if authenticate(stream, &mut buf, service, &state, &admitted.user, binding)
        .await?
        .is_none()
    {
        return Ok(None);
    }
    Ok(Some(Authenticated(Who::Pool(Box::new(admitted)))))
}

/// The rest of a login, for a client that proved its password: the pool (3D000 when there is
/// none by that name, 28000 when it is another user's) and `greet`. The database `pgbouncer` is
/// the admin console: only users marked admin get in (PgBouncer's "not allowed", 08P01, after
/// the password, as its `admin_users`).
pub async fn finish(
    stream: &mut ClientStream,
    service: &Arc<Service>,
    authenticated: Authenticated,
) -> Result<Login, ClientError> {
    match authenticated.0 {
        Who::Admin(user) => {
            if !service.state().users.get(&user).is_some_and(|u| u.admin) {
                return Err(errors::admin_not_allowed());
            }
            Ok(Login::Admin(greet_admin(stream, service, user).await?))
        }
        Who::Pool(admitted) => {
            let pool = service
                .pool(&admitted.pool_name)
                .ok_or_else(|| errors::pool_not_found(&admitted.pool_name))?;
            if pool.state().cfg.username != admitted.user {
                return Err(errors::user_not_allowed_for_pool(
                    &admitted.user,
                    &admitted.pool_name,
                ));
            }
            Ok(Login::Pool(Box::new(
                greet(stream, service, *admitted, pool).await?,
            )))
        }
    }
}

/// The database a StartupMessage asks for (`database`, else `user`).
fn startup_database(params: &[(String, String)]) -> &str {
    startup_pool(params)
}

/// `admit`'s checks for the console: address, client count, a user name.
fn admit_admin(
    addr: SocketAddr,
    service: &Service,
    state: &ServiceState,
    startup: &[(String, String)],
) -> Result<String, ClientError> {
    check_address_and_count(addr, service, state)?;
    startup
        .iter()
        .find(|(k, _)| k == "user")
        .map(|(_, v)| v.clone())
        .ok_or_else(errors::no_user_name)
}

fn check_address_and_count(
    addr: SocketAddr,
    service: &Service,
    state: &ServiceState,
) -> Result<(), ClientError> {
    if !state.allowed_cidrs.is_empty()
        && !state
            .allowed_cidrs
            .iter()
            .any(|net| net.contains(&addr.ip()))
    {
        return Err(errors::address_not_allowed(addr.ip()));
    }
    // Counted at accept, over every pool of the service (this client included).
    let clients = service.clients.load(std::sync::atomic::Ordering::Relaxed);
    if clients > state.limits.max_client_conn {
        service.refuse(
            crate::admission::RefusalReason::MaxClientConn,
            state.limits.max_client_conn,
        );
        return Err(errors::too_many_clients(state.limits.max_client_conn));
    }
    Ok(())
}

/// The console's login answer: PgBouncer's own parameters (its console reports
/// `server_version` as "1.25.1/bouncer"; drivers only need it to parse).
async fn greet_admin(
    stream: &mut ClientStream,
    service: &Service,
    user: String,
) -> Result<AdminLogin, ClientError> {
    let cancel = service.cancel.register();
    let mut out = BytesMut::with_capacity(256);
    auth::auth_ok(&mut out);
    for (name, value) in [
        ("server_version", crate::admin::SERVER_VERSION),
        ("client_encoding", "UTF8"),
        ("server_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("TimeZone", "UTC"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("application_name", ""),
    ] {
        status::parameter_status(&mut out, name, value);
    }
    status::backend_key_data(&mut out, cancel.pid, cancel.slot.secret);
    status::ready_for_query(&mut out, txn::IDLE);
    write(stream, &out).await?;
    tracing::debug!(user = %user, "admin console login");
    Ok(AdminLogin { user, cancel })
}

/// The startup parameters and the TLS channel binding data (`negotiate`).
type Startup0 = (Vec<(String, String)>, Option<[u8; 32]>);

/// The first packets: TLS (or not), a CancelRequest (served and done), or the StartupMessage,
/// whose parameters are returned, with the TLS channel binding data of the certificate the
/// handshake presented (`tls::endpoint_hash`).
async fn negotiate(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    service: &Service,
) -> Result<Option<Startup0>, ClientError> {
    let mut binding = None;
    loop {
        if read_startup_packet(stream, buf).await?.is_none() {
            return Ok(None);
        }
        let first = startup::parse(buf).map_err(errors::protocol_violation)?;
        match first {
            Startup::Ssl => {
                let state = service.state();
                match (state.tls.clone(), &*stream) {
                    (Some(acceptor), ClientStream::Plain(_)) => {
                        write(stream, startup::ENCRYPTION_ACCEPTED).await?;
                        let ClientStream::Plain(tcp) =
                            std::mem::replace(stream, ClientStream::Closed)
                        else {
                            unreachable!("checked plain above")
                        };
                        match acceptor.accept(Aligned::new(tcp)).await {
                            Ok(tls) => {
                                let (aligned, conn) = tls.into_inner();
                                *stream = match take_over(aligned, conn) {
                                    Ok(s) => s,
                                    Err(e) => {
                                        tracing::info!(error = %e, "TLS set-up failed");
                                        return Ok(None);
                                    }
                                };
                                binding = state.tls_endpoint;
                            }
                            Err(e) => {
                                tracing::info!(error = %e, "TLS handshake failed");
                                return Ok(None);
                            }
                        }
                    }
                    _ => write(stream, startup::ENCRYPTION_REFUSED).await?,
                }
            }
            Startup::GssEnc => write(stream, startup::ENCRYPTION_REFUSED).await?,
            Startup::Cancel { pid, secret } => {
                service.cancel.cancel(pid, secret).await;
                return Ok(None);
            }
            Startup::Unsupported(code) => {
                return Err(errors::unsupported_protocol(code));
            }
            Startup::Message { params } => {
                if service.state().tls_required && !stream.is_tls() {
                    return Err(errors::tls_required(startup_pool(&params)));
                }
                return Ok(Some((params, binding)));
            }
        }
    }
}

/// The pool a StartupMessage asks for: `database`, else `user` (as in `admit`).
fn startup_pool(params: &[(String, String)]) -> &str {
    let get = |key: &str| {
        params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    get("database").or_else(|| get("user")).unwrap_or("")
}

/// A client the service lets in, before its password is checked.
struct Admitted {
    user: String,
    pool_name: String,
    params: Values,
}

/// The checks that need no password and reveal nothing about the service's pools: client
/// address, client count, startup parameters.
fn admit(
    addr: SocketAddr,
    service: &Service,
    state: &ServiceState,
    startup: Vec<(String, String)>,
) -> Result<Admitted, ClientError> {
    check_address_and_count(addr, service, state)?;
    let mut user = None;
    let mut database = None;
    let mut values: Values = Default::default();
    let mut options = None;
    for (name, value) in startup {
        match name.as_str() {
            "user" => user = Some(value),
            "database" => database = Some(value),
            "options" if !ignored(state, "options") => options = Some(value),
            _ if ignored(state, &name) => {}
            _ => match params::index(&name) {
                Some(i) => values[i] = Some(value.into()),
                None => match params::custom_name(&name) {
                    Some(custom) => set_custom(&mut values, &custom, value)?,
                    None => return Err(errors::unsupported_startup_parameter(&name)),
                },
            },
        }
    }
    if let Some(options) = options {
        // PostgreSQL applies `options` first and the other startup parameters after: those win.
        for (name, value) in parse_options(&options)? {
            match params::index(&name) {
                Some(i) if values[i].is_none() => values[i] = Some(value.into()),
                Some(_) => {}
                None => match params::custom_name(&name) {
                    Some(custom) if values.custom_value(&custom).is_some() => {}
                    Some(custom) => set_custom(&mut values, &custom, value)?,
                    None => return Err(errors::unsupported_startup_option(&name)),
                },
            }
        }
    }
    let user = user.ok_or_else(errors::no_user_name)?;
    let pool_name = database.unwrap_or_else(|| user.clone());
    Ok(Admitted {
        user,
        pool_name,
        params: values,
    })
}

/// A custom setting given at login (`params::custom_name`), refused past `params::MAX_CUSTOM`.
fn set_custom(values: &mut Values, name: &str, value: String) -> Result<(), ClientError> {
    if values.set_custom(name, Some(value.into())) {
        Ok(())
    } else {
        Err(errors::too_many_custom_settings(name, params::MAX_CUSTOM))
    }
}

fn ignored(state: &ServiceState, name: &str) -> bool {
    state
        .settings
        .ignore_startup_parameters
        .iter()
        .any(|i| i.eq_ignore_ascii_case(name))
}

/// The settings of a startup `options` string, split as PostgreSQL splits it (whitespace
/// separates words unless escaped by a backslash, which escapes any next character) and read
/// as its switches: `-c name=value`, `-cname=value` and `--name=value`, `-` in a name meaning
/// `_`. The values become the client's own settings, carried like a SET to every server
/// connection it gets; a value the server refuses fails the client's first statement with the
/// server's error. Any other switch is refused.
fn parse_options(options: &str) -> Result<Vec<(String, String)>, ClientError> {
    let mut words = Vec::new();
    let mut chars = options.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut word = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        word.push(n);
                    }
                }
                c if c.is_ascii_whitespace() => break,
                c => word.push(c),
            }
        }
        words.push(word);
    }
    let mut out = Vec::new();
    let mut words = words.into_iter();
    while let Some(word) = words.next() {
        let setting = if let Some(long) = word.strip_prefix("--") {
            long.to_string()
        } else if word == "-c" {
            words
                .next()
                .ok_or_else(|| errors::bad_startup_option("-c without name=value"))?
        } else if let Some(short) = word.strip_prefix("-c") {
            short.to_string()
        } else {
            return Err(errors::bad_startup_option(&word));
        };
        let (name, value) = setting
            .split_once('=')
            .ok_or_else(|| errors::bad_startup_option(&setting))?;
        if name.is_empty() {
            return Err(errors::bad_startup_option(&setting));
        }
        out.push((name.replace('-', "_"), value.to_string()));
    }
    Ok(out)
}

/// Checks the password with the service's method. Ok(None): the client left.
async fn authenticate(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    service: &Service,
    state: &ServiceState,
    user: &str,
    binding: Option<&[u8; 32]>,
) -> Result<Option<()>, ClientError> {
    let bad_password = || errors::password_failed(user);
    let account = state.users.get(user).cloned();
    match service.auth_method() {
        ClientAuthMethod::ScramSha256 => {
            let mut out = BytesMut::new();
            // TLS clients are offered channel binding too, preferred (as PostgreSQL does).
            let offered_plus = binding.is_some() && stream.is_tls();
            if offered_plus {
                auth::auth_sasl_list(&mut out, &[MECHANISM_PLUS, MECHANISM]);
            } else {
                auth::auth_sasl(&mut out, MECHANISM);
            }
            write(stream, &out).await?;
            if read_message(stream, buf, tag::PASSWORD).await?.is_none() {
                return Ok(None);
            }
            let (mechanism, rest) = cstr(buf)
                .ok_or_else(|| errors::protocol_violation("malformed SASLInitialResponse"))?;
            let plus = if mechanism == MECHANISM.as_bytes() {
                None
            } else if offered_plus && mechanism == MECHANISM_PLUS.as_bytes() {
                binding
            } else {
                return Err(errors::unsupported_sasl_mechanism());
            };
            if rest.len() < 4 {
                return Err(errors::unsupported_sasl_mechanism());
            }
            let first = rest[4..].to_vec();
            // An unknown user still goes through the exchange, against a throwaway secret, so the
            // answer does not tell which user names exist.
            let secret = match &account {
                Some(a) => a.scram().clone(),
                None => crate::auth::scram::ServerSecret::derive(&rand_password()),
            };
            let (exchange, server_first) =
                ServerExchange::start(&secret, &first, plus, offered_plus)
                    .map_err(|_| bad_password())?;
            out.clear();
            auth::auth_sasl_data(&mut out, auth::AUTH_SASL_CONTINUE, server_first.as_bytes());
            write(stream, &out).await?;
            if read_message(stream, buf, tag::PASSWORD).await?.is_none() {
                return Ok(None);
            }
            let server_final = exchange.finish(&secret, buf).map_err(|_| bad_password())?;
            if account.is_none() {
                return Err(bad_password());
            }
            out.clear();
            auth::auth_sasl_data(&mut out, auth::AUTH_SASL_FINAL, server_final.as_bytes());
            write(stream, &out).await?;
        }
        ClientAuthMethod::Md5 => {
            let salt: [u8; 4] = rand::random();
            let mut out = BytesMut::new();
            auth::auth_md5(&mut out, salt);
            write(stream, &out).await?;
            if read_message(stream, buf, tag::PASSWORD).await?.is_none() {
                return Ok(None);
            }
            let (answer, _) = cstr(buf)
                .ok_or_else(|| errors::protocol_violation("malformed password message"))?;
            let account = account.ok_or_else(bad_password)?;
            let expected = md5_response(user, &account.password, salt);
            if answer != expected.as_bytes() {
                return Err(bad_password());
            }
        }
    }
    Ok(Some(()))
}

/// The login answer: AuthenticationOk, the server's parameters (the client's own where it set
/// them), pooler-issued cancel keys, ReadyForQuery.
async fn greet(
    stream: &mut ClientStream,
    service: &Service,
    admitted: Admitted,
    pool: Arc<crate::backend::Pool>,
) -> Result<LoggedIn, ClientError> {
    let Admitted {
        user,
        pool_name,
        params: values,
    } = admitted;
    let login_params = pool
        .login_params()
        .await
        .map_err(|e| errors::acquire_failed(&pool_name, &e))?;
    let cancel = service.cancel.register();
    let mut out = BytesMut::with_capacity(512);
    auth::auth_ok(&mut out);
    let mut sent = [false; params::TRACKED.len()];
    for (name, value) in login_params.iter() {
        let v = match params::index(name) {
            Some(i) => {
                sent[i] = true;
                values[i].as_deref().unwrap_or(value)
            }
            None => value,
        };
        status::parameter_status(&mut out, name, v);
    }
    for (i, name) in params::TRACKED.iter().enumerate().take(params::REPORTED) {
        if let (false, Some(v)) = (sent[i], values[i].as_deref()) {
            status::parameter_status(&mut out, name, v);
        }
    }
    status::backend_key_data(&mut out, cancel.pid, cancel.slot.secret);
    status::ready_for_query(&mut out, txn::IDLE);
    write(stream, &out).await?;
    tracing::debug!(pool = %pool_name, user = %user, "client logged in");
    Ok(LoggedIn {
        pool,
        params: values,
        cancel,
    })
}

fn rand_password() -> String {
    format!("{:032x}", rand::random::<u128>())
}

pub(crate) async fn write(stream: &mut ClientStream, bytes: &[u8]) -> Result<(), ClientError> {
    stream
        .write_all(bytes)
        .await
        .map_err(|_| errors::client_write_failed())?;
    stream
        .flush()
        .await
        .map_err(|_| errors::client_write_failed())
}

#[cfg(test)]
mod options_tests {
    use super::parse_options;

    #[test]
    fn splits_options_as_postgres_does() {
        let got = parse_options(
            r"-c search_path=a,public  --statement-timeout=5s -cwork_mem=8MB -c application_name=x\ y\\z",
        )
        .unwrap();
        let want = [
            ("search_path", "a,public"),
            ("statement_timeout", "5s"),
            ("work_mem", "8MB"),
            ("application_name", r"x y\z"),
        ];
        assert_eq!(got.len(), want.len());
        for ((n, v), (wn, wv)) in got.iter().zip(want) {
            assert_eq!((n.as_str(), v.as_str()), (wn, wv));
        }
        assert!(parse_options("").unwrap().is_empty());
        for bad in ["-B 10", "-c", "-c noequals", "--=x", "plain"] {
            let e = parse_options(bad).unwrap_err();
            assert_eq!(e.code(), "42601", "{bad}");
        }
    }
}
