//! `--api-tls`: whether the API (and the web console and `/metrics` on the same port) is served
//! over HTTPS, and with which certificate.
//!
//! The API's answers carry every user's password, and the web console can sign requests only in
//! a secure context (Web Crypto): beyond loopback, the API must not be plain HTTP. So the default
//! follows the listen address: `auto` (a certificate issued by pgbay's own CA, the one clients
//! already fetch from `GET /v2/dbaas-ca-certificate` for the pooler) off loopback, `off` on
//! loopback, where the embedded default and the README walkthrough stay plain HTTP.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The value of `--api-tls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiTls {
    /// Plain HTTP.
    Off,
    /// HTTPS with a certificate for the API's host issued by pgbay's CA.
    Auto,
    /// HTTPS with the operator's certificate chain and key (PEM files).
    Files {
        /// Certificate chain, leaf first.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
    },
}

impl FromStr for ApiTls {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(ApiTls::Off),
            "auto" => Ok(ApiTls::Auto),
            _ => match s.split_once(',') {
                Some((cert, key)) if !cert.is_empty() && !key.is_empty() && !key.contains(',') => {
                    Ok(ApiTls::Files {
                        cert: PathBuf::from(cert),
                        key: PathBuf::from(key),
                    })
                }
                _ => Err(format!(
                    "expected `off`, `auto` or `CERT,KEY` (two PEM files), got {s:?}"
                )),
            },
        }
    }
}

impl fmt::Display for ApiTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiTls::Off => f.write_str("off"),
            ApiTls::Auto => f.write_str("auto"),
            ApiTls::Files { cert, key } => write!(f, "{},{}", cert.display(), key.display()),
        }
    }
}

/// Whether `ip` is a loopback address: 127.0.0.0/8, ::1, and 127.x written as IPv4-mapped IPv6.
fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// What `--api-tls` means for an API listening on `listen`: the flag when given, else `auto` off
/// loopback (including the unspecified address, which listens on every interface) and `off` on
/// loopback.
pub fn effective(flag: Option<&ApiTls>, listen: SocketAddr) -> ApiTls {
    match flag {
        Some(t) => t.clone(),
        None if is_loopback(listen.ip()) => ApiTls::Off,
        None => ApiTls::Auto,
    }
}

/// The hosts an `auto` certificate names: the listen address when it is a specific one, and the
/// public host (what clients are told); the CA adds `localhost` and `127.0.0.1`.
fn auto_hosts(listen: SocketAddr, public_host: &str) -> Vec<String> {
    let mut hosts = Vec::new();
    if !listen.ip().is_unspecified() {
        hosts.push(listen.ip().to_canonical().to_string());
    }
    if !hosts.iter().any(|h| h == public_host) {
        hosts.push(public_host.to_string());
    }
    hosts
}

/// The rustls server configuration for `tls`, or `None` for plain HTTP. `auto` issues a fresh
/// certificate with the CA in `data_dir` at every start.
pub fn server_config(
    tls: &ApiTls,
    data_dir: &Path,
    listen: SocketAddr,
    public_host: &str,
) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
    let (chain_pem, key_pem) = match tls {
        ApiTls::Off => return Ok(None),
        ApiTls::Auto => {
            let hosts = auto_hosts(listen, public_host);
            let refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
            let m = pgbay_control::ca::issue_for_hosts(data_dir, &refs)
                .map_err(|e| anyhow!("issuing the API's certificate: {e}"))?;
            (
                m.server_cert_pem.into_bytes(),
                m.server_key_pem.into_bytes(),
            )
        }
        ApiTls::Files { cert, key } => (
            std::fs::read(cert)
                .with_context(|| format!("--api-tls: reading {}", cert.display()))?,
            std::fs::read(key).with_context(|| format!("--api-tls: reading {}", key.display()))?,
        ),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow!("--api-tls: certificate chain: {e}"))?;
    if certs.is_empty() {
        return Err(anyhow!(
            "--api-tls: the certificate file holds no certificate"
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| anyhow!("--api-tls: private key: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow!("--api-tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| anyhow!("--api-tls: certificate and key: {e}"))?;
    // The server speaks HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    #[test]
    fn default_is_auto_off_loopback_and_off_on_loopback() {
        for on_loopback in ["127.0.0.1:8080", "127.0.0.2:8080", "[::1]:8080"] {
            assert_eq!(
                effective(None, at(on_loopback)),
                ApiTls::Off,
                "{on_loopback}"
            );
        }
        assert_eq!(
            effective(None, at("[::ffff:127.0.0.1]:8080")),
            ApiTls::Off,
            "IPv4-mapped loopback"
        );
        for beyond in [
            "0.0.0.0:8080",
            "[::]:8080",
            "10.0.0.5:8080",
            "192.168.1.2:443",
            "[2001:db8::1]:8080",
            "[::ffff:10.0.0.5]:8080",
        ] {
            assert_eq!(effective(None, at(beyond)), ApiTls::Auto, "{beyond}");
        }
        // The flag wins both ways.
        assert_eq!(
            effective(Some(&ApiTls::Auto), at("127.0.0.1:1")),
            ApiTls::Auto
        );
        assert_eq!(effective(Some(&ApiTls::Off), at("0.0.0.0:1")), ApiTls::Off);
    }

    #[test]
    fn flag_values() {
        assert_eq!("off".parse(), Ok(ApiTls::Off));
        assert_eq!("auto".parse(), Ok(ApiTls::Auto));
        assert_eq!(
            "/etc/a.crt,/etc/a.key".parse(),
            Ok(ApiTls::Files {
                cert: "/etc/a.crt".into(),
                key: "/etc/a.key".into()
            })
        );
        for bad in ["", "on", "a.crt", "a.crt,", ",a.key", "a,b,c"] {
            assert!(bad.parse::<ApiTls>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn auto_certificate_names_the_listen_address_and_public_host() {
        assert_eq!(auto_hosts(at("0.0.0.0:1"), "db.example"), ["db.example"]);
        assert_eq!(
            auto_hosts(at("10.0.0.5:1"), "db.example"),
            ["10.0.0.5", "db.example"]
        );
        assert_eq!(auto_hosts(at("127.0.0.1:1"), "127.0.0.1"), ["127.0.0.1"]);
    }

    #[test]
    fn auto_builds_a_server_config_with_the_data_dir_ca() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cfg =
            server_config(&ApiTls::Auto, dir.path(), at("0.0.0.0:1"), "127.0.0.1").expect("config");
        assert!(cfg.is_some());
        assert!(dir.path().join("ca.crt").exists());
        assert!(
            server_config(&ApiTls::Off, dir.path(), at("0.0.0.0:1"), "x")
                .expect("off")
                .is_none()
        );
        let missing = ApiTls::Files {
            cert: dir.path().join("nope.crt"),
            key: dir.path().join("nope.key"),
        };
        let e = server_config(&missing, dir.path(), at("0.0.0.0:1"), "x").unwrap_err();
        assert!(format!("{e:#}").contains("nope.crt"), "{e:#}");
    }
}
