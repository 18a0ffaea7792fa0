//! The HTTP API as the CLI sees it: requests signed with EXO2-HMAC-SHA256 by the very code the
//! server verifies with (`pgbay_api::auth::sign`), JSON answers, and the API's `{"message"}` as
//! the error a person reads.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use pgbay_api::auth::{sign, Credentials, SignedRequest};
use serde_json::Value;

use super::credentials::Source;

/// How long a signature stays valid: the official clients' 10 minutes.
const SIGNATURE_VALIDITY_SECS: i64 = 600;
/// Bound of one request; every API call answers quickly (slow work is an operation to poll).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Path segments are encoded but for RFC 3986's unreserved characters, as the server's URIs are.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// One path segment (a service, database, user or pool name), percent-encoded.
pub fn seg(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// A client of one pgbay API with one key pair.
pub struct Api {
    agent: ureq::Agent,
    /// `scheme://host[:port]`.
    origin: String,
    /// Path prefix of the API (`/v2`), without a trailing slash.
    base_path: String,
    creds: Credentials,
    /// Where the credentials came from, named when they are refused.
    source: Source,
    /// The CA file that verifies an https:// API (`None`: the public roots), named when the
    /// connection fails.
    ca: Option<PathBuf>,
}

/// The CA certificates an https:// API is verified with: `--ca FILE` when given, else pgbay's CA
/// in the data dir (`ca.crt`, written by `pgbay serve`) when it exists, else none (the public
/// roots, for a pgbay behind a publicly trusted certificate).
fn trusted_ca(ca: Option<&Path>, data_dir: &Path) -> anyhow::Result<Option<(PathBuf, Vec<u8>)>> {
    if let Some(path) = ca {
        let pem = std::fs::read(path)
            .with_context(|| format!("--ca/PGBAY_CA: reading {}", path.display()))?;
        return Ok(Some((path.to_path_buf(), pem)));
    }
    let path = data_dir.join("ca.crt");
    match std::fs::read(&path) {
        Ok(pem) => Ok(Some((path, pem))),
        Err(_) => Ok(None),
    }
}

/// The certificates of a PEM file.
fn certificates(path: &Path, pem: &[u8]) -> anyhow::Result<Vec<ureq::tls::Certificate<'static>>> {
    let mut out = Vec::new();
    for item in ureq::tls::parse_pem(pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => out.push(c),
            Ok(_) => {}
            Err(e) => bail!("{}: not a PEM certificate file: {e}", path.display()),
        }
    }
    if out.is_empty() {
        bail!("{}: holds no PEM certificate", path.display());
    }
    Ok(out)
}

impl Api {
    /// A client of the API at `url` (e.g. `http://127.0.0.1:8080/v2`); an https:// URL is
    /// verified with `ca`, else with the CA in `data_dir` (see [`trusted_ca`]).
    pub fn new(
        url: &str,
        creds: Credentials,
        source: Source,
        ca: Option<&Path>,
        data_dir: &Path,
    ) -> anyhow::Result<Api> {
        let (origin, base_path) = split_url(url)?;
        let mut builder = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(REQUEST_TIMEOUT))
            .user_agent(concat!("pgbay-cli/", env!("CARGO_PKG_VERSION")));
        let mut ca_used = None;
        if origin.starts_with("https://") {
            if let Some((path, pem)) = trusted_ca(ca, data_dir)? {
                let roots = ureq::tls::RootCerts::new_with_certs(&certificates(&path, &pem)?);
                builder =
                    builder.tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build());
                ca_used = Some(path);
            }
        }
        Ok(Api {
            agent: ureq::Agent::new_with_config(builder.build()),
            origin,
            base_path,
            creds,
            source,
            ca: ca_used,
        })
    }

    /// What `cannot reach pgbay` adds for an https:// API: which CA verified it.
    fn trust_hint(&self) -> String {
        if !self.origin.starts_with("https://") {
            return String::new();
        }
        match &self.ca {
            Some(p) => format!(" (verified with the CA in {}; see --ca)", p.display()),
            None => " (verified with the public roots: pass pgbay's CA with --ca FILE)".into(),
        }
    }

    /// `GET path` (relative to the API's base path).
    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call("GET", path, None)
    }

    /// `POST path` with a JSON body.
    pub fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.call("POST", path, Some(body))
    }

    /// `PUT path` with a JSON body.
    pub fn put(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.call("PUT", path, Some(body))
    }

    /// `DELETE path`.
    pub fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.call("DELETE", path, None)
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let full_path = format!("{}{}", self.base_path, path);
        let url = format!("{}{}", self.origin, full_path);
        let bytes = match body {
            Some(b) => serde_json::to_vec(b)?,
            None => Vec::new(),
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| anyhow!("the system clock is before 1970"))?;
        let expires = i64::try_from(now.as_secs()).unwrap_or(i64::MAX) + SIGNATURE_VALIDITY_SECS;
        let authorization = sign(
            &self.creds,
            &SignedRequest {
                method,
                path: &full_path,
                query: None,
                body: &bytes,
            },
            expires,
        );
        let sent = match method {
            "GET" => self
                .agent
                .get(&url)
                .header("authorization", &authorization)
                .call(),
            "DELETE" => self
                .agent
                .delete(&url)
                .header("authorization", &authorization)
                .call(),
            "POST" => self
                .agent
                .post(&url)
                .header("authorization", &authorization)
                .content_type("application/json")
                .send(&bytes[..]),
            "PUT" => self
                .agent
                .put(&url)
                .header("authorization", &authorization)
                .content_type("application/json")
                .send(&bytes[..]),
            other => bail!("unsupported method {other}"),
        };
        let mut resp = sent.map_err(|e| {
            anyhow!(
                "cannot reach pgbay at {}: {e}{}",
                self.origin,
                self.trust_hint()
            )
        })?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .with_context(|| format!("reading the answer to {method} {full_path}"))?;
        if (200..300).contains(&status) {
            return serde_json::from_str(&text).with_context(|| {
                format!("the answer to {method} {full_path} is not JSON (is {url} pgbay's API?)")
            });
        }
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| format!("HTTP {status} from {url}: {}", text.trim()));
        if status == 403 {
            let why = message
                .strip_prefix("authentication failed: ")
                .unwrap_or(&message);
            bail!(
                "authentication failed: {why} (key {} from {}; is it the key pair of the pgbay at {}?)",
                self.creds.key,
                self.source,
                self.origin
            );
        }
        bail!("{message}")
    }
}

/// `http://host:port/v2/` → (`http://host:port`, `/v2`).
fn split_url(url: &str) -> anyhow::Result<(String, String)> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| anyhow!("--url/PGBAY_URL must start with http:// or https://: {url:?}"))?;
    let scheme_len = url.len() - rest.len();
    let (host, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if host.is_empty() || path.contains(['?', '#']) {
        bail!("--url/PGBAY_URL must be like http://HOST:PORT/v2: {url:?}");
    }
    Ok((
        format!("{}{host}", &url[..scheme_len]),
        path.trim_end_matches('/').to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_origin_and_base_path() {
        let s = |u: &str| split_url(u).map_err(|e| e.to_string());
        assert_eq!(
            s("http://127.0.0.1:8080/v2"),
            Ok(("http://127.0.0.1:8080".into(), "/v2".into()))
        );
        assert_eq!(
            s("https://db.example/pgbay/v2/"),
            Ok(("https://db.example".into(), "/pgbay/v2".into()))
        );
        assert_eq!(s("http://h:1"), Ok(("http://h:1".into(), String::new())));
        assert!(s("127.0.0.1:8080/v2").is_err());
        assert!(s("http:///v2").is_err());
        assert!(s("http://h/v2?x=1").is_err());
    }

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(seg("web-1_a.b~c"), "web-1_a.b~c");
        assert_eq!(seg("a b/c"), "a%20b%2Fc");
    }
}
