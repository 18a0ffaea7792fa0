//! The `external` provisioner: instead of running a cluster, pgbay adopts an existing PostgreSQL
//! server given by an admin URI. The server backs one service at a time (users and databases of
//! two services would share its namespaces); pgbay creates that service's databases and users on
//! it, serves its pools, and leaves the server running and untouched when the service is deleted.

use std::path::PathBuf;
use std::str::FromStr;

use super::{ClusterSpec, ProvisionError, Provisioner, TlsMaterial};
use crate::admin::{self, AdminTarget};

/// An external server and the superuser (or CREATEROLE + CREATEDB user) pgbay administers it as.
#[derive(Clone, PartialEq, Eq)]
pub struct ExternalServer {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Admin user.
    pub user: String,
    /// Admin password.
    pub password: String,
}

impl std::fmt::Debug for ExternalServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ExternalServer({}@{}:{})",
            self.user, self.host, self.port
        )
    }
}

impl FromStr for ExternalServer {
    type Err = String;

    /// Parses `postgres://USER:PASSWORD@HOST:PORT[/db]` (libpq URI or key=value syntax).
    fn from_str(uri: &str) -> Result<Self, String> {
        let cfg = tokio_postgres::Config::from_str(uri).map_err(|e| format!("admin URI: {e}"))?;
        let host = match cfg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => return Err("admin URI must name a TCP host".into()),
        };
        let port = cfg.get_ports().first().copied().unwrap_or(5432);
        let user = cfg
            .get_user()
            .filter(|u| !u.is_empty())
            .ok_or("admin URI must name a user")?
            .to_string();
        let password = cfg
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .ok_or("admin URI must carry a password")?;
        Ok(ExternalServer {
            host,
            port,
            user,
            password,
        })
    }
}

impl ExternalServer {
    /// Admin connection parameters.
    pub fn target(&self) -> AdminTarget {
        AdminTarget {
            host: self.host.clone(),
            port: self.port,
            user: self.user.clone(),
            password: self.password.clone(),
        }
    }

    /// The server's major version (e.g. "15").
    pub async fn major_version(&self) -> Result<String, admin::AdminError> {
        let c = admin::connect(&self.target(), "postgres").await?;
        let row = c
            .query_one(
                "SELECT current_setting('server_version_num')::int / 10000",
                &[],
            )
            .await?;
        let major: i32 = row.get(0);
        Ok(major.to_string())
    }
}

/// The provisioner of a service backed by an external server at `host`: it reaches the server,
/// never starts, configures or supervises it.
#[derive(Debug, Clone)]
pub struct ExternalProvisioner {
    host: String,
}

impl ExternalProvisioner {
    /// The provisioner of a service whose server listens on `host`.
    pub fn new(host: String) -> Self {
        ExternalProvisioner { host }
    }
}

impl Provisioner for ExternalProvisioner {
    fn runs_server(&self) -> bool {
        false
    }

    fn backend_host(&self, _port: u16) -> String {
        self.host.clone()
    }

    fn running(&self, _name: &str) -> Option<bool> {
        None
    }

    /// pgbay cannot read an external server's log.
    fn log_path(&self, _name: &str) -> Option<PathBuf> {
        None
    }

    /// An external server is not ours to start; check that it lets us in.
    fn bring_up(&self, spec: &ClusterSpec<'_>, _tls: &TlsMaterial) -> Result<(), ProvisionError> {
        let t = AdminTarget {
            host: self.host.clone(),
            port: spec.port,
            user: spec.superuser.to_string(),
            password: spec.superuser_password.to_string(),
        };
        // Called off the runtime (see `Provisioner`), where a runtime handle can block.
        tokio::runtime::Handle::current().block_on(admin::connect(&t, "postgres"))?;
        Ok(())
    }

    fn restart(&self, _spec: &ClusterSpec<'_>, _tls: &TlsMaterial) -> Result<(), ProvisionError> {
        Err(ProvisionError::NotManaged("restarting the server"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_admin_uris() {
        let e: ExternalServer = "postgres://adm:p%40ss@db.example:6543/postgres"
            .parse()
            .unwrap();
        assert_eq!(
            (
                e.host.as_str(),
                e.port,
                e.user.as_str(),
                e.password.as_str()
            ),
            ("db.example", 6543, "adm", "p@ss")
        );
        assert!("postgres://adm@db.example/x"
            .parse::<ExternalServer>()
            .is_err());
        assert!("postgres://:pw@db.example/x"
            .parse::<ExternalServer>()
            .is_err());
        assert!(!format!("{e:?}").contains("p@ss"));
    }
}
