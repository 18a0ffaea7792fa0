//! Nodes, placement, the shared generation counter and the secrets every node shares (store
//! migration 0015, issue 16).

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{Result, Store, StoreError};

/// A registered node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub name: String,
    /// The host its pooler ports and clusters listen on.
    pub public_host: String,
    /// Where its API answers (`http(s)://host:port`), for requests other nodes forward to it.
    pub api_url: String,
    /// The machine and data dir of the process that registered it.
    pub instance: String,
    pub started_at: String,
    /// Its last heartbeat, unix milliseconds.
    pub heartbeat_ms: i64,
    /// The newest generation of the desired state its pooler serves.
    pub applied_generation: i64,
}

fn from_row(r: &AnyRow) -> Result<NodeRecord> {
    Ok(NodeRecord {
        name: r.try_get("name")?,
        public_host: r.try_get("public_host")?,
        api_url: r.try_get("api_url")?,
        instance: r.try_get("instance")?,
        started_at: r.try_get("started_at")?,
        heartbeat_ms: r.try_get("heartbeat_ms")?,
        applied_generation: r.try_get("applied_generation")?,
    })
}

/// Bumps the shared generation counter in the transaction of a change; returns the new value.
async fn bump_generation(c: &mut AnyConnection) -> Result<i64> {
    sqlx::query("UPDATE generation SET value = value + 1 WHERE id = 1")
        .execute(&mut *c)
        .await?;
    let row = sqlx::query("SELECT value FROM generation WHERE id = 1")
        .fetch_one(&mut *c)
        .await?;
    Ok(row.try_get("value")?)
}

/// Held while a service's ports are chosen and committed: on a PostgreSQL store, an advisory
/// lock that serializes port allocation across nodes (two nodes creating at once would pick the
/// same free ports); on SQLite, nothing (one node, and its own create lock).
pub struct PortLock(Option<sqlx::pool::PoolConnection<sqlx::Any>>);

/// The advisory lock's key ("pgbay ports").
const PORT_LOCK_KEY: i64 = 0x7067_6261_7970;

impl Drop for PortLock {
    fn drop(&mut self) {
        // Closing the session releases the lock; the connection does not go back to the pool
        // holding it.
        if let Some(c) = self.0.take() {
            drop(c.detach());
        }
    }
}

impl Store {
    /// Takes the port lock (see [`PortLock`]).
    pub async fn port_lock(&self) -> Result<PortLock> {
        if self.backend != super::Backend::Postgres {
            return Ok(PortLock(None));
        }
        let mut c = self.pool.acquire().await?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(PORT_LOCK_KEY)
            .execute(&mut *c)
            .await?;
        Ok(PortLock(Some(c)))
    }

    /// The store's clock, unix milliseconds: every node's heartbeat is stamped and judged by
    /// it, so that machines whose clocks differ still agree on who is live.
    pub async fn now_ms(&self) -> Result<i64> {
        if self.backend != super::Backend::Postgres {
            return Ok(chrono::Utc::now().timestamp_millis());
        }
        let row =
            sqlx::query("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS ms")
                .fetch_one(&self.pool)
                .await?;
        Ok(row.try_get("ms")?)
    }

    /// Every node, by name.
    pub async fn nodes(&self) -> Result<Vec<NodeRecord>> {
        let rows = sqlx::query("SELECT * FROM nodes ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// Registers (or re-registers) this node. A node of the same name whose heartbeat is newer
    /// than `live_since_ms` and whose instance is another is a different process claiming the
    /// name: refused with that node's record, nothing changed.
    pub async fn register_node(
        &self,
        n: &NodeRecord,
        live_since_ms: i64,
    ) -> Result<std::result::Result<(), NodeRecord>> {
        let mut tx = self.pool.begin().await?;
        // Take the row lock first (SQLite: the write lock) so two nodes racing for one name
        // cannot both see it free.
        sqlx::query("UPDATE nodes SET name = name WHERE name = $1")
            .bind(&n.name)
            .execute(&mut *tx)
            .await?;
        let existing = sqlx::query("SELECT * FROM nodes WHERE name = $1")
            .bind(&n.name)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(r) = existing {
            let r = from_row(&r)?;
            if r.instance != n.instance && r.heartbeat_ms > live_since_ms {
                return Ok(Err(r));
            }
            sqlx::query(
                "UPDATE nodes SET public_host = $1, api_url = $2, instance = $3, started_at = $4,
                 heartbeat_ms = $5 WHERE name = $6",
            )
            .bind(&n.public_host)
            .bind(&n.api_url)
            .bind(&n.instance)
            .bind(&n.started_at)
            .bind(n.heartbeat_ms)
            .bind(&n.name)
            .execute(&mut *tx)
            .await?;
        } else {
            sqlx::query(
                "INSERT INTO nodes (name, public_host, api_url, instance, started_at, heartbeat_ms,
                 applied_generation) VALUES ($1, $2, $3, $4, $5, $6, 0)",
            )
            .bind(&n.name)
            .bind(&n.public_host)
            .bind(&n.api_url)
            .bind(&n.instance)
            .bind(&n.started_at)
            .bind(n.heartbeat_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// Records a heartbeat of `node`, unless another instance registered under its name since
    /// (then false: this process must stop acting as the node).
    pub async fn heartbeat(&self, node: &str, instance: &str, now_ms: i64) -> Result<bool> {
        let done =
            sqlx::query("UPDATE nodes SET heartbeat_ms = $1 WHERE name = $2 AND instance = $3")
                .bind(now_ms)
                .bind(node)
                .bind(instance)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records the newest generation this node's pooler serves.
    pub async fn set_applied_generation(&self, node: &str, generation: i64) -> Result<()> {
        sqlx::query(
            "UPDATE nodes SET applied_generation = $1 WHERE name = $2 AND applied_generation < $1",
        )
        .bind(generation)
        .bind(node)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The shared generation counter.
    pub async fn generation(&self) -> Result<i64> {
        let row = sqlx::query("SELECT value FROM generation WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("value")?)
    }

    /// Bumps the shared generation counter on its own; returns the new value.
    pub async fn next_generation(&self) -> Result<i64> {
        let mut tx = self.pool.begin().await?;
        let g = bump_generation(&mut tx).await?;
        tx.commit().await?;
        Ok(g)
    }

    /// Gives services without a node (a store written before nodes existed) to `node`.
    pub async fn claim_unplaced_services(&self, node: &str) -> Result<u64> {
        let done = sqlx::query("UPDATE services SET node = $1 WHERE node IS NULL")
            .bind(node)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Moves service `name` from node `from` to node `to`, state `rebuilding`, unless another
    /// node moved it first; whether this call moved it.
    pub async fn move_service(&self, name: &str, from: &str, to: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE services SET node = $1, state = 'rebuilding' WHERE name = $2 AND node = $3",
        )
        .bind(to)
        .bind(name)
        .bind(from)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Fails every pending operation about a service placed on one of `dead` nodes; returns how
    /// many.
    pub async fn fail_operations_of(&self, dead: &str, message: &str) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE operations SET state = 'failure', reason = 'unavailable', message = $1
             WHERE state = 'pending' AND service IN (SELECT name FROM services WHERE node = $2)",
        )
        .bind(message)
        .bind(dead)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// A shared secret (sealed or public, as its writer stored it).
    pub async fn shared_secret(&self, name: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT value FROM shared_secrets WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get("value").map_err(StoreError::from))
            .transpose()
    }

    /// Stores a shared secret unless one of that name exists; returns the value the store holds
    /// afterwards (this one, or the one another node stored first).
    pub async fn share_secret(&self, name: &str, value: &str) -> Result<String> {
        sqlx::query(
            "INSERT INTO shared_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(value)
        .execute(&self.pool)
        .await?;
        self.shared_secret(name)
            .await?
            .ok_or(StoreError::Corrupt("shared_secrets"))
    }

    /// `NOTIFY channel, payload` (PostgreSQL store).
    pub(crate) async fn notify(&self, channel: &str, payload: &str) -> Result<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(payload)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Which store this is.
    pub fn backend(&self) -> super::Backend {
        self.backend
    }

    /// The store's URL (with its password), for a LISTEN connection of its own.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }
}
