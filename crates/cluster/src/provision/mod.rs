//! Provisioners: what runs a service's PostgreSQL server. [`local`] makes and runs one cluster per
//! service on this machine; [`external`] adopts a server the operator runs. The types here are
//! what both share: what a cluster needs ([`ClusterSpec`]), the TLS material it serves, and how a
//! cluster operation fails.

pub mod external;
pub mod local;

/// PEM material handed to the data plane and the clusters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsMaterial {
    /// The CA certificate.
    pub ca_pem: String,
    /// Server certificate, SAN = public host, localhost, 127.0.0.1.
    pub server_cert_pem: String,
    /// Server private key (PKCS#8).
    pub server_key_pem: String,
}

/// A cluster operation that failed; internal for the API (logged, not shown).
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// File system work around the cluster failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A PostgreSQL program failed.
    #[error("{program} failed: {output}")]
    Program {
        /// Program name.
        program: String,
        /// Its output.
        output: String,
    },
    /// The service's OS user could not be made, found or removed.
    #[error(transparent)]
    OsUser(#[from] crate::os_users::OsUserError),
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ProvisionError {
    let what = what.into();
    move |source| ProvisionError::Io { what, source }
}

/// What a cluster needs to be created or started. Its `Debug` leaves the password out.
#[derive(Clone)]
pub struct ClusterSpec<'a> {
    /// Service name (directory name).
    pub name: &'a str,
    /// Port to listen on.
    pub port: u16,
    /// The bootstrap superuser initdb makes: pgbay's internal role (`admin::INTERNAL_ROLE`) on
    /// clusters made since the tenant's admin stopped being a superuser.
    pub superuser: &'a str,
    /// Its password.
    pub superuser_password: &'a str,
    /// The OS user the cluster runs as when pgbay is root (`os_users::name_for`).
    pub os_user: &'a str,
    /// Client networks allowed to connect (the service's ip-filter).
    pub ip_filter: &'a [ipnet::IpNet],
    /// Text of `pgbay-settings.conf` (plan-derived settings and pg-settings, as control's
    /// `cluster_config` renders them).
    pub settings: &'a str,
}

impl std::fmt::Debug for ClusterSpec<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSpec")
            .field("name", &self.name)
            .field("port", &self.port)
            .field("superuser", &self.superuser)
            .field("os_user", &self.os_user)
            .finish_non_exhaustive()
    }
}
