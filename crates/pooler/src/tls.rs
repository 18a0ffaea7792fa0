//! TLS configurations: the acceptor of a service (its PEM certificate chain and key) and the
//! client used towards servers that offer TLS.

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// The `tls-server-end-point` channel binding data of a certificate chain (RFC 5929, as
/// PostgreSQL computes it): the hash of the end-entity certificate's DER with the hash of its
/// signature algorithm, SHA-256 for those signed with SHA-256 (pgbay's own CA: ECDSA P-256
/// with SHA-256), MD5 or SHA-1. Certificates signed with SHA-384/512 are hashed with SHA-256
/// too, which a client would reject: SCRAM-SHA-256-PLUS needs a SHA-256 certificate.
pub fn endpoint_hash(cfg: &TlsConfig) -> Option<[u8; 32]> {
    use sha2::Digest;
    let first = CertificateDer::pem_slice_iter(cfg.cert_chain_pem.as_bytes()).next()?;
    let cert = first.ok()?;
    Some(sha2::Sha256::digest(cert.as_ref()).into())
}

pub fn acceptor(cfg: &TlsConfig) -> Result<TlsAcceptor, String> {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cfg.cert_chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("certificate chain: {e}"))?;
    if certs.is_empty() {
        return Err("certificate chain contains no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(cfg.key_pem.as_bytes())
        .map_err(|e| format!("private key: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())?;
    // After a TLS 1.3 handshake the pooler protects the records itself (`net::tls13`): nothing
    // may be left for rustls to send (no session tickets: PostgreSQL clients do not resume
    // sessions), and the traffic secrets are handed over.
    config.send_tls13_tickets = 0;
    config.enable_secret_extraction = true;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The TLS client for server connections, with libpq's `sslmode=prefer` semantics: encrypt when
/// the server offers TLS, and do not verify its certificate (no CA is configured for backends;
/// the point is that no password exchange or query crosses the network in clear, not server
/// authentication — that comes from the backend address being configured by pgbay). The
/// handshake signatures are still checked against the presented certificate's key.
pub fn backend_connector() -> tokio_rustls::TlsConnector {
    if let Some(verified) = VERIFIED_BACKENDS.get() {
        return verified.clone();
    }
    static CONNECTOR: std::sync::OnceLock<tokio_rustls::TlsConnector> = std::sync::OnceLock::new();
    CONNECTOR
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let verifier = Arc::new(UnverifiedServer {
                algorithms: provider.signature_verification_algorithms,
            });
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("ring supports the default TLS versions")
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth();
            tokio_rustls::TlsConnector::from(Arc::new(config))
        })
        .clone()
}

/// Set by [`verify_backends_with`]: the client that verifies every TCP server against a CA.
static VERIFIED_BACKENDS: std::sync::OnceLock<tokio_rustls::TlsConnector> =
    std::sync::OnceLock::new();

/// From now on every server reached over TCP must speak TLS with a certificate for its host
/// issued by `ca_pem` (pgbay's own CA, shared by the nodes of a multi-node deployment: a pool
/// whose cluster runs on another node crosses the network). Once per process; a second call
/// with another CA is refused.
pub fn verify_backends_with(ca_pem: &str) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| format!("CA certificate: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no CA certificate given".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    if VERIFIED_BACKENDS.set(connector).is_err() {
        return Err("backend verification is already configured".into());
    }
    Ok(())
}

/// Whether servers over TCP must present a certificate of the configured CA.
pub fn backends_verified() -> bool {
    VERIFIED_BACKENDS.get().is_some()
}

/// Accepts any server certificate (see `backend_connector`).
#[derive(Debug)]
struct UnverifiedServer {
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::client::danger::ServerCertVerifier for UnverifiedServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
