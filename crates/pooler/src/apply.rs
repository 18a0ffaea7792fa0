//! What `Pooler::apply` reports back: which services of the config it could not apply and why.
//!
//! A failure of one service (its port is taken, its TLS material is bad, it names a pool twice)
//! must neither hide nor block the others, so failures are data in a report rather than an error
//! that ends `apply`. Whoever drives the pooler decides per service what a failure means.

/// The outcome of one `Pooler::apply`: empty `failures` means every service is applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub failures: Vec<ServiceFailure>,
}

/// A service of the applied config that is not (fully) served as configured. A service that
/// failed keeps what it served before (nothing, if it is new); the next `apply` that still names
/// it tries again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceFailure {
    pub service: String,
    /// Human readable, e.g. "cannot listen on 127.0.0.1:21003: Address already in use (os error 98)".
    pub reason: String,
}

impl ApplyReport {
    /// True when every service of the config is applied.
    pub fn is_ok(&self) -> bool {
        self.failures.is_empty()
    }

    /// Why `service` failed, or None when it was applied (or not in the config).
    pub fn failure(&self, service: &str) -> Option<&str> {
        self.failures
            .iter()
            .find(|f| f.service == service)
            .map(|f| f.reason.as_str())
    }

    pub(crate) fn push(&mut self, service: &str, error: &ServiceError) {
        self.failures.push(ServiceFailure {
            service: service.to_string(),
            reason: error.to_string(),
        });
    }
}

/// Why one service could not be applied; becomes a `ServiceFailure`'s reason.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServiceError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid TLS configuration: {0}")]
    Tls(String),
    #[error("duplicate {what} name {name:?}")]
    Duplicate { what: &'static str, name: String },
}
