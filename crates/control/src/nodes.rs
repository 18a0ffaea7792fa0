//! Nodes (issue 16): every `pgbay serve` on one store is a node. It registers at start,
//! heartbeats, and follows the others: a node silent for longer than `--node-timeout` is dead.
//!
//! - **Placement.** A service is placed on the live node with the fewest services (its cluster
//!   runs there); the placement is stored with the service. Work that needs the cluster (admin
//!   SQL, restarts, provisioning) runs on that node: the API forwards such requests to it.
//! - **Every node serves every pool.** Each node publishes the pools of every running service
//!   whose node is live: its own clusters over their Unix sockets, the others' over TCP with TLS
//!   verified against the shared CA. A change bumps the store's generation counter and notifies
//!   (PostgreSQL `NOTIFY pgbay_changes` on a PostgreSQL store); every node republishes when it
//!   hears it, and also resyncs every second from the counter and whenever a node comes or goes.
//!   Each node records the generation its pooler serves, and an operation succeeds only once
//!   every live node serves it.
//! - **Node loss.** Pending operations about the services of a dead node are failed by the live
//!   nodes; its services are shown `rebuilding` and their pools are not served until it is back.

use std::collections::BTreeSet;
use std::sync::Mutex as StdMutex;
use std::time::Duration;

use crate::store::NodeRecord;
use crate::{Control, ControlError};

/// How often a node heartbeats and looks at the others and at the generation counter.
pub(crate) const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// Every how many heartbeats a node republishes the whole desired state whatever the counter.
const FULL_RESYNC_TICKS: u64 = 10;

/// The default `--node-timeout`.
pub const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_secs(10);

/// The NOTIFY channel of changes on a PostgreSQL store.
const CHANNEL: &str = "pgbay_changes";

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Who this node is.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// `--node-name` (default: the host name).
    pub name: String,
    /// Where this node's API answers (`http(s)://host:port`), for the other nodes.
    pub api_url: String,
    /// The machine and data dir of this process (a second process claiming a live node's name
    /// from elsewhere is refused).
    pub instance: String,
    /// `--node-timeout`: a node silent for longer is dead.
    pub timeout: Duration,
    /// `--rebuild-lost-after`: a node dead for longer has died for good: the live nodes rebuild
    /// its single-cluster services from their backups. `None`: never (the operator decides).
    pub rebuild_lost_after: Option<Duration>,
}

impl NodeConfig {
    /// One node named after the machine, its API at `api_url`.
    pub fn single(data_dir: &std::path::Path, api_url: &str) -> NodeConfig {
        let host = host_name();
        NodeConfig {
            instance: format!("{host}:{}", data_dir.display()),
            name: host,
            api_url: api_url.to_string(),
            timeout: DEFAULT_NODE_TIMEOUT,
            rebuild_lost_after: None,
        }
    }
}

/// This machine's host name (`localhost` when it has none).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// This node and what it last saw of the others.
#[derive(Default)]
pub(crate) struct NodesState {
    /// Every registered node, as last read.
    seen: StdMutex<Vec<NodeRecord>>,
    /// The store's clock minus this machine's, milliseconds (heartbeats are stamped by the
    /// store's clock).
    clock_offset_ms: std::sync::atomic::AtomicI64,
}

/// Where a service's cluster work is done, seen from this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// Here (or a service of no node, or none at all).
    Local,
    /// On a live node, reached at its API.
    Remote { node: String, api_url: String },
    /// On a node that is not answering.
    Dead { node: String },
}

impl Control {
    /// This node's name (`--node-name`).
    pub fn node_name(&self) -> &str {
        &self.inner.cfg.node.name
    }

    fn node_record(&self) -> NodeRecord {
        let cfg = &self.inner.cfg;
        NodeRecord {
            name: cfg.node.name.clone(),
            public_host: cfg.public_host.clone(),
            api_url: cfg.node.api_url.clone(),
            instance: cfg.node.instance.clone(),
            started_at: chrono::Utc::now().to_rfc3339(),
            heartbeat_ms: now_ms(),
            applied_generation: 0,
        }
    }

    /// The store's time now, as this node last measured its clock.
    fn store_now_ms(&self) -> i64 {
        now_ms()
            + self
                .inner
                .nodes
                .clock_offset_ms
                .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Reads the store's clock and returns it.
    async fn sync_clock(&self) -> Result<i64, ControlError> {
        let before = now_ms();
        let store_now = self.inner.store.now_ms().await?;
        let local = (before + now_ms()) / 2;
        self.inner
            .nodes
            .clock_offset_ms
            .store(store_now - local, std::sync::atomic::Ordering::Relaxed);
        Ok(store_now)
    }

    fn live_since_ms(&self) -> i64 {
        self.store_now_ms() - self.inner.cfg.node.timeout.as_millis() as i64
    }

    /// Registers this node; refuses a name that a live node of another machine or data dir
    /// holds. Services of a store written before nodes existed become this node's.
    pub(crate) async fn register_node(&self) -> Result<(), ControlError> {
        let mut me = self.node_record();
        me.heartbeat_ms = self.sync_clock().await?;
        if let Err(other) = self
            .inner
            .store
            .register_node(&me, self.live_since_ms())
            .await?
        {
            return Err(ControlError::internal(format!(
                "node name {:?} is in use by a live node ({}, heartbeat {} ms ago): give this \
                 node another --node-name",
                me.name,
                other.instance,
                self.store_now_ms() - other.heartbeat_ms
            )));
        }
        let claimed = self.inner.store.claim_unplaced_services(&me.name).await?;
        if claimed > 0 {
            tracing::info!(node = %me.name, services = claimed, "placed existing services on this node");
        }
        self.refresh_nodes().await?;
        Ok(())
    }

    async fn refresh_nodes(&self) -> Result<BTreeSet<String>, ControlError> {
        let nodes = self.inner.store.nodes().await?;
        let since = self.live_since_ms();
        let live = nodes
            .iter()
            .filter(|n| n.heartbeat_ms > since || n.name == self.node_name())
            .map(|n| n.name.clone())
            .collect();
        *crate::control::locked(&self.inner.nodes.seen) = nodes;
        Ok(live)
    }

    /// Every node as last seen, with whether it is live.
    pub fn nodes(&self) -> Vec<(NodeRecord, bool)> {
        let since = self.live_since_ms();
        crate::control::locked(&self.inner.nodes.seen)
            .iter()
            .map(|n| {
                let live = n.heartbeat_ms > since || n.name == self.node_name();
                (n.clone(), live)
            })
            .collect()
    }

    /// Whether node `name` is live (this node always is).
    pub fn node_live(&self, name: &str) -> bool {
        name == self.node_name() || self.nodes().iter().any(|(n, live)| *live && n.name == name)
    }

    /// The record of node `name`, as last seen.
    pub(crate) fn node(&self, name: &str) -> Option<NodeRecord> {
        self.nodes()
            .into_iter()
            .find(|(n, _)| n.name == name)
            .map(|(n, _)| n)
    }

    /// Whether service `s` runs on this node.
    pub(crate) fn is_mine(&self, s: &crate::model::ServiceRecord) -> bool {
        s.node.as_deref().is_none_or(|n| n == self.node_name())
    }

    /// The services placed on this node (whose clusters run here).
    pub(crate) async fn own_services(
        &self,
    ) -> Result<Vec<crate::model::ServiceRecord>, crate::store::StoreError> {
        let mut all = self.inner.store.services().await?;
        all.retain(|s| self.is_mine(s));
        Ok(all)
    }

    /// Where the cluster work of service `name` is done.
    pub async fn owner_of(&self, name: &str) -> Result<Owner, ControlError> {
        let Some(s) = self.inner.store.service(name).await? else {
            return Ok(Owner::Local);
        };
        Ok(self.owner(&s))
    }

    pub(crate) fn owner(&self, s: &crate::model::ServiceRecord) -> Owner {
        match &s.node {
            Some(n) if n != self.node_name() => match self.node(n) {
                Some(rec) if self.node_live(n) => Owner::Remote {
                    node: n.clone(),
                    api_url: rec.api_url,
                },
                _ => Owner::Dead { node: n.clone() },
            },
            _ => Owner::Local,
        }
    }

    /// The host written into URIs: `--service-host`, else this node's public host.
    pub fn uri_host(&self) -> &str {
        self.inner
            .cfg
            .service_host
            .as_deref()
            .unwrap_or(&self.inner.cfg.public_host)
    }

    /// Every host a service's ports answer on, for `connection-info`: `--service-host`, else
    /// each live node's public host, this node's first.
    pub fn uri_hosts(&self) -> Vec<String> {
        if let Some(h) = &self.inner.cfg.service_host {
            return vec![h.clone()];
        }
        let mut hosts = vec![self.inner.cfg.public_host.clone()];
        for (n, live) in self.nodes() {
            if live && !hosts.contains(&n.public_host) {
                hosts.push(n.public_host);
            }
        }
        hosts
    }

    /// The state a service is shown in: `rebuilding` while its node is not answering, and
    /// while its pools are not yet served by every live node's pooler after its cluster came up
    /// (so that a client that waits for `running` can connect at once).
    pub fn shown_state(&self, s: &crate::model::ServiceRecord) -> crate::model::ServiceState {
        match self.owner(s) {
            Owner::Dead { .. } => crate::model::ServiceState::Rebuilding,
            _ if crate::control::locked(&self.inner.unserved).contains(&s.name) => {
                crate::model::ServiceState::Rebuilding
            }
            _ => s.state,
        }
    }

    /// Where a request about service `name` is served: its node, or for a create of a service
    /// that does not exist yet, the node it is placed on.
    /// A service made from another (`source`: a fork, a read replica) goes on that one's node.
    pub async fn route(
        &self,
        name: &str,
        create: bool,
        source: Option<&str>,
    ) -> Result<Owner, ControlError> {
        match self.inner.store.service(name).await? {
            Some(s) => Ok(self.owner(&s)),
            None if create => match source {
                Some(src) if self.inner.store.service(src).await?.is_some() => {
                    // Unknown sources are refused by the create itself, where it runs.
                    Box::pin(self.route(src, false, None)).await
                }
                _ => self.place_new_service().await,
            },
            None => Ok(Owner::Local),
        }
    }

    /// Where a new service goes: the live node with the fewest services (this node on a tie).
    pub async fn place_new_service(&self) -> Result<Owner, ControlError> {
        let services = self.inner.store.services().await?;
        let me = self.node_name().to_string();
        let count = |n: &str| {
            services
                .iter()
                .filter(|s| s.node.as_deref() == Some(n))
                .count()
        };
        let mut best = (count(&me), me.clone(), None);
        for (n, live) in self.nodes() {
            if !live || n.name == me {
                continue;
            }
            let c = count(&n.name);
            if c < best.0 {
                best = (c, n.name.clone(), Some(n.api_url.clone()));
            }
        }
        Ok(match best.2 {
            None => Owner::Local,
            Some(api_url) => Owner::Remote {
                node: best.1,
                api_url,
            },
        })
    }

    /// Heartbeats, follows the other nodes and the generation counter, and fails the pending
    /// operations of dead nodes, until shutdown.
    pub(crate) async fn follow_nodes(&self) {
        let mut shutdown = self.inner.shutdown_tx.subscribe();
        let (wake_tx, mut wake) = tokio::sync::mpsc::channel::<Change>(64);
        if self.inner.store.backend() == crate::store::Backend::Postgres {
            let url = self.inner.store.url().to_string();
            let mut stop = self.inner.shutdown_tx.subscribe();
            tokio::spawn(async move {
                tokio::select! {
                    () = listen_changes(&url, wake_tx) => {}
                    _ = stop.wait_for(|s| *s) => {}
                }
            });
        }
        let mut live_before = BTreeSet::new();
        let mut failed_for: BTreeSet<String> = BTreeSet::new();
        let mut ticks: u64 = 0;
        let mut changes: Vec<Change> = Vec::new();
        loop {
            ticks += 1;
            tokio::select! {
                _ = tokio::time::sleep(HEARTBEAT_EVERY) => {}
                Some(c) = wake.recv() => changes.push(c),
                _ = shutdown.wait_for(|s| *s) => return,
            }
            while let Ok(c) = wake.try_recv() {
                changes.push(c);
            }
            let cfg = &self.inner.cfg.node;
            let now = match self.sync_clock().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, "heartbeat: store unreachable");
                    continue;
                }
            };
            match self
                .inner
                .store
                .heartbeat(&cfg.name, &cfg.instance, now)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    tracing::error!(node = %cfg.name, "another process registered as this node");
                }
                Err(e) => {
                    tracing::error!(error = %e, "heartbeat: store unreachable");
                    continue;
                }
            }
            let live = match self.refresh_nodes().await {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "reading nodes");
                    continue;
                }
            };
            // A full resync now and then, as a safety net: a node that crashed between
            // committing a change and bumping the generation leaves nothing to compare.
            let mut republish = live != live_before || ticks.is_multiple_of(FULL_RESYNC_TICKS);
            for gone in live_before.difference(&live) {
                tracing::warn!(node = %gone, "node lost: its services are not served until it returns");
            }
            for back in live.difference(&live_before) {
                if !live_before.is_empty() {
                    tracing::info!(node = %back, "node live");
                }
                failed_for.remove(back);
            }
            // The pending work of dead nodes ends here (any live node may do it; it is one
            // UPDATE, so two doing it at once fail each operation once).
            for (n, alive) in self.nodes() {
                if alive || failed_for.contains(&n.name) {
                    continue;
                }
                let msg = format!("node {} was lost before this operation finished", n.name);
                match self.inner.store.fail_operations_of(&n.name, &msg).await {
                    Ok(k) => {
                        if k > 0 {
                            tracing::warn!(node = %n.name, operations = k, "failed the operations of a lost node");
                        }
                        failed_for.insert(n.name.clone());
                    }
                    Err(e) => tracing::error!(error = %e, "failing a lost node's operations"),
                }
            }
            live_before = live;
            self.rebuild_services_of_lost_nodes().await;
            // Other nodes' changes of one service each, in order, are published as those
            // changes; a gap, or a change of unknown extent, reads everything again.
            changes.sort_by_key(|c| c.generation);
            for c in changes.drain(..) {
                if republish {
                    break;
                }
                match c.service {
                    Some(svc) if c.generation != u64::MAX => {
                        if let Err(e) = self.republish_change(c.generation, &svc).await {
                            tracing::error!(error = %e, "publishing another node's change");
                            republish = true;
                        }
                    }
                    _ => republish = true,
                }
            }
            changes.clear();
            match self.inner.store.generation().await {
                Ok(g) if g > self.published_generation() as i64 => republish = true,
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "reading the generation"),
            }
            if republish {
                if let Err(e) = self.republish().await {
                    tracing::error!(error = %e, "republishing");
                }
            }
        }
    }
}

impl Control {
    /// Records in the store each generation this node's pooler serves, for the operations
    /// that wait on every node.
    pub(crate) async fn record_applied(&self) {
        let mut slot = self.inner.data_plane.subscribe();
        let mut shutdown = self.inner.shutdown_tx.subscribe();
        loop {
            let rx = slot.borrow_and_update().clone();
            if let Some(mut rx) = rx {
                loop {
                    let g = rx.borrow_and_update().generation;
                    if g > 0 {
                        if let Err(e) = self
                            .inner
                            .store
                            .set_applied_generation(self.node_name(), g as i64)
                            .await
                        {
                            tracing::error!(error = %e, "recording the applied generation");
                        }
                    }
                    tokio::select! {
                        r = rx.changed() => if r.is_err() { break },
                        _ = slot.changed() => break,
                        _ = shutdown.wait_for(|s| *s) => return,
                    }
                }
                continue;
            }
            tokio::select! {
                r = slot.changed() => if r.is_err() { return },
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    /// Waits (until `deadline`) for every other live node to serve `generation`; the nodes that
    /// did not, if any.
    pub(crate) async fn other_nodes_serve(
        &self,
        generation: u64,
        deadline: tokio::time::Instant,
    ) -> Vec<String> {
        loop {
            let since = self.live_since_ms();
            let behind: Vec<String> = match self.inner.store.nodes().await {
                Ok(nodes) => nodes
                    .into_iter()
                    .filter(|n| {
                        n.name != self.node_name()
                            && n.heartbeat_ms > since
                            && (n.applied_generation as u64) < generation
                    })
                    .map(|n| n.name)
                    .collect(),
                Err(e) => {
                    tracing::error!(error = %e, "reading nodes");
                    vec![]
                }
            };
            if behind.is_empty() || tokio::time::Instant::now() >= deadline {
                return behind;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Control {
    /// Rebuilds here, from their backups and WAL, the single-cluster services of nodes dead for
    /// longer than `--rebuild-lost-after` (one live node wins each service: the move is one
    /// conditional UPDATE). The repository must be reachable from this node: a `--backup-repo`
    /// shared by the nodes. A node that comes back later finds them placed elsewhere and leaves
    /// its old copies stopped.
    async fn rebuild_services_of_lost_nodes(&self) {
        let Some(after) = self.inner.cfg.node.rebuild_lost_after else {
            return;
        };
        if !self.backups_enabled() {
            return;
        }
        let lost_since = self.store_now_ms() - after.as_millis() as i64;
        let lost: Vec<String> = self
            .nodes()
            .into_iter()
            .filter(|(n, live)| !live && n.heartbeat_ms < lost_since)
            .map(|(n, _)| n.name)
            .collect();
        if lost.is_empty() {
            return;
        }
        let services = match self.inner.store.services().await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "listing services of lost nodes");
                return;
            }
        };
        for s in services {
            let Some(from) = s.node.as_deref().filter(|n| lost.iter().any(|l| l == n)) else {
                continue;
            };
            let single = s.external_host.is_none()
                && self.inner.store.ha(&s.name).await.ok().flatten().is_none()
                && self.replica_of(&s.name).is_none();
            if !single {
                continue;
            }
            match self
                .inner
                .store
                .move_service(&s.name, from, self.node_name())
                .await
            {
                Ok(true) => {
                    tracing::warn!(service = %s.name, lost_node = %from,
                        "rebuilding a service of a lost node here from its backups");
                    match self.prepare_rebuild(&s).await {
                        Ok(()) if self.has_backups(&s.name).await => {
                            self.spawn_provisioning(s.name.clone(), None)
                        }
                        // Never an empty cluster in its place: it stays `rebuilding`.
                        Ok(()) => tracing::error!(service = %s.name,
                            "no backup of the lost node's service is readable here"),
                        Err(e) => tracing::error!(service = %s.name, error = %e, "rebuilding"),
                    }
                }
                Ok(false) => {}
                Err(e) => tracing::error!(service = %s.name, error = %e, "moving a service"),
            }
        }
    }
}

impl Control {
    /// This node's service directory, OS user and pgBackRest configuration for `s`, so that
    /// its repository can be read and restored here.
    async fn prepare_rebuild(&self, s: &crate::model::ServiceRecord) -> Result<(), ControlError> {
        let t = self.admin_target(s).await?;
        let prov = self.inner.prov.clone();
        let name = s.name.clone();
        let port = s.pg_port;
        let ip_filter = s.ip_filter.0.clone();
        let cipher = self.backup_cipher(&s.name).await?;
        let os_user = pgbay_cluster::os_users::name_for(&s.id);
        tokio::task::spawn_blocking(move || {
            prov.forget_initialized(&name)?;
            prov.prepare_rebuild(&pgbay_cluster::ClusterSpec {
                name: &name,
                port,
                superuser: &t.user,
                superuser_password: &t.password,
                os_user: &os_user,
                ip_filter: &ip_filter,
                settings: "",
                backup_cipher: cipher.as_deref(),
            })
        })
        .await??;
        Ok(())
    }
}

/// Wakes `wake` on every change notified on the store, reconnecting after a failure.
async fn listen_changes(url: &str, wake: tokio::sync::mpsc::Sender<Change>) {
    loop {
        match sqlx::postgres::PgListener::connect(url).await {
            Ok(mut l) => {
                if let Err(e) = l.listen(CHANNEL).await {
                    tracing::warn!(error = %e, "LISTEN on the store");
                } else {
                    while let Ok(n) = l.recv().await {
                        // A full queue is fine: the loop compares the generation anyway.
                        let _ = wake.try_send(Change::parse(n.payload()));
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "connecting to the store to LISTEN"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A change another node announced: its generation, and the one service it was about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    generation: u64,
    service: Option<String>,
}

impl Change {
    /// `"42"` or `"42 orders-db"`; anything else is a change of unknown extent.
    fn parse(payload: &str) -> Change {
        let (g, service) = match payload.split_once(' ') {
            Some((g, s)) => (g, Some(s.to_string())),
            None => (payload, None),
        };
        Change {
            generation: g.parse().unwrap_or(u64::MAX),
            service,
        }
    }
}

/// Tells every node that the store changed (PostgreSQL store; a no-op on SQLite).
/// The payload is the generation, and the service the change was about when it was one
/// service's (`"42 orders-db"`), so that the other nodes read only that service again.
pub(crate) async fn notify_change(
    store: &crate::store::Store,
    generation: i64,
    service: Option<&str>,
) {
    if store.backend() != crate::store::Backend::Postgres {
        return;
    }
    let payload = match service {
        Some(s) => format!("{generation} {s}"),
        None => generation.to_string(),
    };
    if let Err(e) = store.notify(CHANNEL, &payload).await {
        tracing::warn!(error = %e, "NOTIFY on the store");
    }
}
