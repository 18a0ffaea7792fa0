//! What the nodes of one PostgreSQL store share (issue 16): the secret key that seals every
//! stored password, the CA that signs every node's certificate, and the API key pair. The first
//! node to start puts its own in the store; every other node adopts the store's.
//!
//! The secret key is stored wrapped by a key derived from `PGBAY_CLUSTER_KEY`, which the
//! operator gives every node (never on a command line): a dump of the store alone opens no
//! password. The CA's private key and the API secret are sealed with the secret key. A node
//! whose cluster key does not open the store's stops at start-up with one line, changing nothing.
//! Each node keeps its copy in its data dir as a single node does (`secret.key`, `ca.key` mode
//! 0600, `ca.crt`), so everything that reads them works unchanged.

use std::path::Path;

use sha2::Digest;

use crate::crypto::SecretBox;
use crate::store::Store;
use crate::ControlError;

const SECRET_KEY: &str = "secret_key";
const CA: &str = "ca";
const API_CREDENTIALS: &str = "api_credentials";

fn wrapping_box(cluster_key: &str) -> SecretBox {
    let digest = sha2::Sha256::new()
        .chain_update(b"pgbay cluster key v1\0")
        .chain_update(cluster_key.as_bytes())
        .finalize();
    SecretBox::from_key(digest.into())
}

fn read(path: &Path) -> Result<String, ControlError> {
    std::fs::read_to_string(path)
        .map_err(|e| ControlError::internal(format!("reading {}: {e}", path.display())))
}

fn write(path: &Path, text: &str, private: bool) -> Result<(), ControlError> {
    let done = if private {
        pgbay_cluster::files::write_private(path, text.as_bytes())
    } else {
        pgbay_cluster::files::write_public(path, text.as_bytes())
    };
    done.map_err(|e| ControlError::internal(format!("writing {}: {e}", path.display())))
}

/// Makes the data dir's `secret.key`, `ca.crt` and `ca.key` the store's (putting this node's in
/// the store when it is the first).
pub(crate) async fn adopt_shared_keys(
    store: &Store,
    cfg: &crate::ControlConfig,
) -> Result<(), ControlError> {
    let Some(cluster_key) = cfg.cluster_key.as_deref().filter(|k| !k.is_empty()) else {
        return Err(ControlError::internal(
            "a PostgreSQL store is shared by nodes: set PGBAY_CLUSTER_KEY (the same secret on \
             every node; it wraps the keys the nodes share)",
        ));
    };
    if cluster_key.len() < 16 {
        return Err(ControlError::internal(
            "PGBAY_CLUSTER_KEY must be at least 16 characters",
        ));
    }
    let wrap = wrapping_box(cluster_key);
    let dir = &cfg.data_dir;
    let key_path = dir.join("secret.key");
    SecretBox::load_or_create(&key_path)?;
    let local = read(&key_path)?.trim().to_string();
    let stored = store.share_secret(SECRET_KEY, &wrap.seal(&local)).await?;
    let shared = wrap.open(&stored).map_err(|_| {
        ControlError::internal(
            "PGBAY_CLUSTER_KEY does not open the store's secret key: this node's cluster key is \
             not the one the store was set up with",
        )
    })?;
    if shared != local {
        write(&key_path, &shared, true)?;
    }
    let secrets = SecretBox::load_or_create(&key_path)?;
    // The CA, one row (certificate and sealed key together, so two nodes starting at once
    // cannot mix theirs).
    crate::ca::load_or_create(dir, &cfg.public_host)?;
    let (crt_path, ca_key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
    let mine = serde_json::json!({
        "cert": read(&crt_path)?,
        "key": secrets.seal(&read(&ca_key_path)?),
    })
    .to_string();
    let stored = store.share_secret(CA, &mine).await?;
    if stored != mine {
        let v: serde_json::Value = serde_json::from_str(&stored)
            .map_err(|_| ControlError::internal("the store's CA is unreadable"))?;
        let (Some(cert), Some(key)) = (v["cert"].as_str(), v["key"].as_str()) else {
            return Err(ControlError::internal("the store's CA is unreadable"));
        };
        let key = secrets.open(key)?;
        write(&ca_key_path, &key, true)?;
        write(&crt_path, cert, false)?;
    }
    Ok(())
}

impl crate::Control {
    /// The API key pair every node accepts: the store's, or `(key, secret)` when this node is
    /// the first to put one there. Single node (SQLite store): `(key, secret)` as given.
    pub async fn shared_api_credentials(
        &self,
        key: &str,
        secret: &str,
    ) -> Result<(String, String), ControlError> {
        if !self.shared_store() {
            return Ok((key.to_string(), secret.to_string()));
        }
        let secrets = &self.inner.secrets;
        let mine = serde_json::json!({"key": key, "secret": secrets.seal(secret)}).to_string();
        let stored = self
            .inner
            .store
            .share_secret(API_CREDENTIALS, &mine)
            .await?;
        if stored == mine {
            return Ok((key.to_string(), secret.to_string()));
        }
        let v: serde_json::Value = serde_json::from_str(&stored)
            .map_err(|_| ControlError::internal("the store's API key pair is unreadable"))?;
        let (Some(k), Some(s)) = (v["key"].as_str(), v["secret"].as_str()) else {
            return Err(ControlError::internal(
                "the store's API key pair is unreadable",
            ));
        };
        Ok((k.to_string(), secrets.open(s)?))
    }
}
