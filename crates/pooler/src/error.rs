//! Errors the pooler's public API returns.

/// What `Pooler::apply` can report. Per-service failures name the service; `apply` still applies
/// every other service before returning them.
#[derive(Debug, thiserror::Error)]
pub enum PoolerError {
    #[error("service {service}: cannot listen on {addr}: {source}")]
    Bind {
        service: String,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("service {service}: invalid TLS configuration: {reason}")]
    Tls { service: String, reason: String },
    #[error("duplicate {what} name {name:?} in service {service}")]
    Duplicate {
        service: String,
        what: &'static str,
        name: String,
    },
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Multiple(Vec<PoolerError>),
    #[error("the pooler has been shut down")]
    ShutDown,
}
