//! pgbay's certificate authority. Created on first start in the data dir (`ca.crt`, `ca.key` with
//! mode 0600); it signs the server certificate used by every service cluster and by the pooler, so
//! clients can verify pgbay with the CA from `GET /v2/dbaas-ca-certificate`.
//!
//! rcgen cannot parse a certificate back without x509-parser, so the issuer object is rebuilt
//! from the stored key and the same distinguished name; signatures made with it verify against the
//! stored `ca.crt` because issuer name and key are identical.

use std::net::IpAddr;
use std::path::Path;

use pgbay_cluster::files::{write_private, write_public};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};

/// The PEM material the CA issues, as the clusters take it.
pub use pgbay_cluster::TlsMaterial;

/// CA or certificate failure.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A CA file could not be read or written.
    #[error("CA file {path}: {source}")]
    Io {
        /// File path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// rcgen refused.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "pgbay");
    dn.push(DnType::CommonName, "pgbay CA");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2049, 12, 31);
    p
}

/// The CA of `dir`: its certificate (PEM) and key, created on first start.
fn load_or_create_ca(dir: &Path) -> Result<(String, KeyPair), CaError> {
    let crt_path = dir.join("ca.crt");
    let key_path = dir.join("ca.key");
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| CaError::Io { path, source }
    };
    if crt_path.exists() && key_path.exists() {
        let pem = std::fs::read_to_string(&crt_path).map_err(io(&crt_path))?;
        let key = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
        return Ok((pem, KeyPair::from_pem(&key)?));
    }
    let key = KeyPair::generate()?;
    let cert = ca_params().self_signed(&key)?;
    write_private(&key_path, key.serialize_pem().as_bytes()).map_err(io(&key_path))?;
    write_public(&crt_path, cert.pem().as_bytes()).map_err(io(&crt_path))?;
    Ok((cert.pem(), key))
}

/// The subject alternative names of a server certificate: `localhost`, `127.0.0.1` (so that a
/// client on the machine itself can verify), then every host of `hosts` (IP or DNS name) not
/// already there.
fn sans(hosts: &[&str]) -> Result<Vec<SanType>, CaError> {
    let mut out = vec![
        SanType::DnsName("localhost".try_into()?),
        SanType::IpAddress(IpAddr::from([127, 0, 0, 1])),
    ];
    for host in hosts {
        let san = match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName((*host).try_into()?),
        };
        if !out.contains(&san) {
            out.push(san);
        }
    }
    Ok(out)
}

/// A fresh server certificate for `hosts` (the first one is its common name), signed by the CA
/// whose key is `ca_key`: `(certificate PEM, PKCS#8 key PEM)`.
fn issue(hosts: &[&str], ca_key: &KeyPair) -> Result<(String, String), CaError> {
    let issuer = ca_params().self_signed(ca_key)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "pgbay");
    dn.push(
        DnType::CommonName,
        hosts.first().copied().unwrap_or("localhost"),
    );
    params.distinguished_name = dn;
    params.subject_alt_names = sans(hosts)?;
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2049, 12, 31);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate()?;
    let server = params.signed_by(&server_key, &issuer, ca_key)?;
    Ok((server.pem(), server_key.serialize_pem()))
}

/// Loads the CA from `dir` (creating it on first start) and issues a fresh server certificate for
/// `public_host`.
pub fn load_or_create(dir: &Path, public_host: &str) -> Result<TlsMaterial, CaError> {
    let (ca_pem, ca_key) = load_or_create_ca(dir)?;
    let (server_cert_pem, server_key_pem) = issue(&[public_host], &ca_key)?;
    Ok(TlsMaterial {
        ca_pem,
        server_cert_pem,
        server_key_pem,
    })
}

/// Issues a server certificate for `hosts` (IPs or DNS names) with the CA of `dir` (created on
/// first start), as the pooler's: the API's own certificate under `--api-tls auto`, which clients
/// verify with the same CA (`GET /v2/dbaas-ca-certificate`, `<data-dir>/ca.crt`).
pub fn issue_for_hosts(dir: &Path, hosts: &[&str]) -> Result<TlsMaterial, CaError> {
    let (ca_pem, ca_key) = load_or_create_ca(dir)?;
    let (server_cert_pem, server_key_pem) = issue(hosts, &ca_key)?;
    Ok(TlsMaterial {
        ca_pem,
        server_cert_pem,
        server_key_pem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn ca_is_created_once_and_key_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path(), "127.0.0.1").unwrap();
        let b = load_or_create(dir.path(), "db.example.com").unwrap();
        assert_eq!(a.ca_pem, b.ca_pem);
        assert!(a.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_ne!(a.server_cert_pem, b.server_cert_pem);
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn certificates_for_hosts_share_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path(), "127.0.0.1").unwrap();
        let b = issue_for_hosts(dir.path(), &["10.1.2.3", "api.example.com", "127.0.0.1"]).unwrap();
        assert_eq!(a.ca_pem, b.ca_pem);
        let names = sans(&["10.1.2.3", "api.example.com", "127.0.0.1"]).unwrap();
        assert_eq!(names.len(), 4, "{names:?}");
        assert!(names.contains(&SanType::IpAddress(IpAddr::from([10, 1, 2, 3]))));
    }
}
