//! The checks a migration needs before it runs (`POST /dbaas-task-migration-check`): the source
//! is reachable (with TLS when asked), takes the login, runs a PostgreSQL version no newer than
//! the service's, and, for `replication`, has `wal_level = logical` and a superuser login.

use super::{logical, run, MigrateError, Source};
use crate::LocalProvisioner;

/// What the checks found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// Each problem, in words naming it; empty: the migration can run.
    pub problems: Vec<String>,
    /// What was seen when it went well (the source's version).
    pub seen: Vec<String>,
}

/// Runs the checks against `src` as the OS user of `service`, whose PostgreSQL major version is
/// `service_major`.
pub fn check(
    prov: &LocalProvisioner,
    service: &str,
    src: &Source,
    service_major: u32,
    replication: bool,
) -> Result<CheckReport, MigrateError> {
    let db = src.dbname.clone().unwrap_or_else(|| "postgres".into());
    let mut report = CheckReport {
        problems: Vec::new(),
        seen: Vec::new(),
    };
    let mut c = prov.command(service, "psql")?;
    src.env(&mut c, &db);
    c.args([
        "-X",
        "-At",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        "SELECT current_setting('server_version_num')",
    ]);
    let version = match run(
        c,
        "psql",
        &format!("connecting to {} database {db:?}", src.address()),
    ) {
        Ok(v) => v,
        Err(MigrateError::Program { output, .. }) => {
            report.problems.push(output);
            return Ok(report);
        }
        Err(e) => return Err(e),
    };
    let num: u32 = version.trim().parse().unwrap_or(0);
    let major = num / 10000;
    report.seen.push(format!(
        "reachable at {} as {:?}, PostgreSQL {major}",
        src.address(),
        src.user
    ));
    if major > service_major {
        report.problems.push(format!(
            "the source runs PostgreSQL {major}, newer than the service's {service_major}"
        ));
    }
    if replication {
        if let Some(why) = logical::cannot_replicate(prov, service, src, &db)? {
            report.problems.push(why);
        }
    }
    Ok(report)
}

/// A source from a `postgres://user:password@host:port/dbname?sslmode=...` URI; `None` if the
/// text is not such a URI. TLS is required when `sslmode` asks for it (require, verify-ca,
/// verify-full).
pub fn source_from_uri(uri: &str) -> Option<Source> {
    let rest = uri
        .strip_prefix("postgres://")
        .or_else(|| uri.strip_prefix("postgresql://"))?;
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (rest, None),
    };
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        Some(u) => match u.split_once(':') {
            Some((u, p)) => (decode(u)?, decode(p)?),
            None => (decode(u)?, String::new()),
        },
        None => ("postgres".to_string(), String::new()),
    };
    let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
        let (h, p) = h.split_once(']')?;
        (h.to_string(), p.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (hostport.to_string(), None),
        }
    };
    if host.is_empty() || host.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return None;
    }
    let port = match port {
        Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0)?,
        None => 5432,
    };
    let dbname = match path.map(decode) {
        Some(Some(d)) if !d.is_empty() => Some(d),
        Some(None) => return None,
        _ => None,
    };
    let mut ssl = false;
    for kv in query.unwrap_or_default().split('&') {
        if let Some(mode) = kv.strip_prefix("sslmode=") {
            ssl = matches!(mode, "require" | "verify-ca" | "verify-full");
        }
    }
    if user.is_empty() {
        return None;
    }
    Some(Source {
        host,
        port,
        user,
        password,
        dbname,
        ssl,
    })
}

/// Percent-decoding of a URI component; `None` if malformed or not UTF-8.
fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_are_parsed() {
        let s =
            source_from_uri("postgres://u%40x:p%3Aw@db.example:6543/shop?sslmode=require").unwrap();
        assert_eq!(
            (
                s.user.as_str(),
                s.password.as_str(),
                s.host.as_str(),
                s.port
            ),
            ("u@x", "p:w", "db.example", 6543)
        );
        assert_eq!((s.dbname.as_deref(), s.ssl), (Some("shop"), true));
        let s = source_from_uri("postgresql://u@[::1]/").unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, s.dbname, s.ssl),
            ("::1", 5432, None, false)
        );
        assert!(source_from_uri("mysql://u@h/").is_none());
        assert!(source_from_uri("postgres://u@h:0/").is_none());
        assert!(source_from_uri("postgres://u@h:x/").is_none());
        assert!(source_from_uri("postgres://u@/d").is_none());
        assert!(source_from_uri("postgres://u@h/%zz").is_none());
    }
}
