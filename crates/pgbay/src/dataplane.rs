//! The wiring between the planes: follows control's desired state and applies it to the pooler.
//!
//! Control and pooler never import each other (see ARCHITECTURE.md); this module is the one place
//! that knows both vocabularies. It translates each published `DesiredState` into a `PoolerConfig`,
//! applies it, and then reports the generation as applied so that control's pool, password and
//! settings operations only report `success` once the pooler serves the change.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use pgbay_control::{AppliedReporter, Control, DesiredService, DesiredState, TlsMaterial};
use pgbay_pooler::{
    BackendConfig, ClientLimits, PoolConfig, PoolMode, PoolSettings, Pooler, PoolerConfig,
    ServiceConfig, TlsConfig, UserConfig,
};

/// Attaches the pooler to control (from now on pool operations wait for it) and follows control's
/// desired state in a task until the channel closes (control shut down). `limits` are every
/// service's client limits (the node's flags: pending logins, login timeout).
pub fn spawn(
    control: &Control,
    pooler: Pooler,
    limits: ClientLimits,
) -> tokio::task::JoinHandle<()> {
    // Attached before the API serves its first request, so no operation can slip past the barrier.
    let reporter = control.attach_data_plane();
    let tls = control.tls_material();
    let desired = control.desired_state();
    tokio::spawn(follow(desired, reporter, tls, pooler, limits))
}

async fn follow(
    mut desired: tokio::sync::watch::Receiver<std::sync::Arc<DesiredState>>,
    reporter: AppliedReporter,
    tls: TlsMaterial,
    pooler: Pooler,
    limits: ClientLimits,
) {
    let mut forwarders = crate::forward::Forwarders::default();
    // What the pooler serves: each service's `changed_at` as applied. Empty before the first
    // state, which is applied whole (it also closes inherited sockets nobody wants).
    let mut applied: Option<HashMap<String, u64>> = None;
    loop {
        let state = desired.borrow_and_update().clone();
        forwarders.sync(&state);
        let failures = match &mut applied {
            None => {
                let failures = apply(&state, &tls, &pooler, &limits).await;
                let mut now = HashMap::new();
                record(&mut now, &state.services, &failures);
                applied = Some(now);
                failures
            }
            Some(now) => apply_changes(&state, now, &tls, &pooler, &limits).await,
        };
        for (service, reason) in &failures {
            tracing::error!(generation = state.generation, service = %service, reason = %reason,
                "pooler could not apply service");
        }
        // Control finishes each waiting operation from this report: success, or failure with the
        // reason of its service. The services that did apply are serving.
        reporter.applied(state.generation, failures);
        if desired.changed().await.is_err() {
            break;
        }
    }
}

/// Remembers the services of `services` that applied (not in `failures`) at their `changed_at`;
/// a failed one is forgotten, so that the next state tries it again.
fn record(
    applied: &mut HashMap<String, u64>,
    services: &[std::sync::Arc<DesiredService>],
    failures: &[(String, String)],
) {
    for s in services {
        if failures.iter().any(|(f, _)| *f == s.name) {
            applied.remove(&s.name);
        } else {
            applied.insert(s.name.clone(), s.changed_at);
        }
    }
}

/// Applies only what changed since `applied`: the services whose entry changed (or that failed
/// before) and those no longer published. The pooler does not look at the others.
async fn apply_changes(
    state: &DesiredState,
    applied: &mut HashMap<String, u64>,
    tls: &TlsMaterial,
    pooler: &Pooler,
    limits: &ClientLimits,
) -> Vec<(String, String)> {
    let changed: Vec<std::sync::Arc<DesiredService>> = state
        .services
        .iter()
        .filter(|s| applied.get(&s.name) != Some(&s.changed_at))
        .cloned()
        .collect();
    let published: std::collections::HashSet<&str> =
        state.services.iter().map(|s| s.name.as_str()).collect();
    let removed: Vec<String> = applied
        .keys()
        .filter(|k| !published.contains(k.as_str()))
        .cloned()
        .collect();
    if changed.is_empty() && removed.is_empty() {
        return Vec::new();
    }
    for name in &removed {
        applied.remove(name);
    }
    let mut failures = Vec::new();
    let mut upserts = Vec::with_capacity(changed.len());
    for svc in &changed {
        match service_config(svc, tls, limits).await {
            Ok(c) => upserts.push(c),
            Err(e) => failures.push((svc.name.clone(), format!("{e:#}"))),
        }
    }
    match pooler.apply_changes(upserts, removed).await {
        Ok(report) => failures.extend(report.failures.into_iter().map(|f| (f.service, f.reason))),
        Err(e) => failures.extend(changed.iter().map(|s| (s.name.clone(), e.to_string()))),
    }
    record(applied, &changed, &failures);
    failures
}

/// Applies one generation whole; returns the services the pooler could not serve, with the
/// reason. A failure that is not one service's (the whole config could not be built, or the
/// pooler shut down) is every service's.
async fn apply(
    state: &DesiredState,
    tls: &TlsMaterial,
    pooler: &Pooler,
    limits: &ClientLimits,
) -> Vec<(String, String)> {
    let everyone = |reason: String| {
        state
            .services
            .iter()
            .map(|s| (s.name.clone(), reason.clone()))
            .collect()
    };
    let config = match translate(state, tls, limits).await {
        Ok(c) => c,
        Err(e) => return everyone(format!("{e:#}")),
    };
    match pooler.apply(config).await {
        Ok(report) => report
            .failures
            .into_iter()
            .map(|f| (f.service, f.reason))
            .collect(),
        Err(e) => everyone(e.to_string()),
    }
}

async fn translate(
    state: &DesiredState,
    tls: &TlsMaterial,
    limits: &ClientLimits,
) -> anyhow::Result<PoolerConfig> {
    let mut services = Vec::with_capacity(state.services.len());
    for svc in &state.services {
        services.push(service_config(svc, tls, limits).await?);
    }
    Ok(PoolerConfig { services })
}

async fn service_config(
    svc: &DesiredService,
    tls: &TlsMaterial,
    limits: &ClientLimits,
) -> anyhow::Result<ServiceConfig> {
    let listen = resolve(&svc.listen_host, svc.pooler_port).await?;
    Ok(ServiceConfig {
        name: svc.name.clone(),
        listen,
        tls: Some(TlsConfig {
            cert_chain_pem: tls.server_cert_pem.clone(),
            key_pem: tls.server_key_pem.clone(),
            required: true,
        }),
        backend: BackendConfig {
            host: svc.backend_host.clone(),
            port: svc.backend_port,
            unavailable_hold: svc.unavailable_hold,
            require_primary: svc.require_primary,
        },
        users: svc
            .users
            .iter()
            .map(|u| UserConfig {
                name: u.name.clone(),
                password: u.password.clone(),
                admin: u.admin,
            })
            .collect(),
        pools: svc
            .pools
            .iter()
            .map(|p| PoolConfig {
                name: p.name.clone(),
                database: p.database.clone(),
                username: p.username.clone(),
                mode: pool_mode(p.mode),
                size: p.size,
            })
            .collect(),
        settings: settings(&svc.pgbouncer),
        limits: limits.clone(),
        allowed_cidrs: svc.ip_filter.clone(),
    })
}

/// `/metrics`' per-pool series, read from the pooler at each scrape.
pub struct PoolMetricsOf(pub Pooler);

impl pgbay_api::PoolMetricsSource for PoolMetricsOf {
    fn pool_samples(&self) -> Vec<pgbay_api::PoolSample> {
        self.0
            .pool_metrics()
            .into_iter()
            .map(|m| pgbay_api::PoolSample {
                service: m.service,
                pool: m.pool,
                user: m.user,
                clients_active: m.stats.cl_active.into(),
                clients_waiting: m.stats.cl_waiting.into(),
                servers_active: m.stats.sv_active.into(),
                servers_idle: m.stats.sv_idle.into(),
                servers_used: m.stats.sv_used.into(),
                servers_login: m.stats.sv_login.into(),
                max_wait_us: m.stats.maxwait.as_micros() as u64,
                transactions: m.totals.xacts,
                queries: m.totals.queries,
                received_bytes: m.totals.received,
                sent_bytes: m.totals.sent,
                transaction_time_us: m.totals.xact_time_us,
                query_time_us: m.totals.query_time_us,
                wait_time_us: m.totals.wait_time_us,
                server_assignments: m.totals.server_assignments,
                client_parses: m.totals.client_parses,
                server_parses: m.totals.server_parses,
                client_binds: m.totals.client_binds,
                server_binds: m.totals.server_binds,
            })
            .collect()
    }

    fn refused_samples(&self) -> Vec<pgbay_api::RefusedSample> {
        self.0
            .refused_connections()
            .into_iter()
            .map(|r| pgbay_api::RefusedSample {
                service: r.service,
                reason: r.reason.as_str().to_string(),
                total: r.total,
            })
            .collect()
    }
}

/// The service metrics sampler's pool counts (`POST /dbaas-service-metrics`), from the same
/// pooler numbers: every client and server connection of the service's pools, whatever its state.
impl pgbay_control::metrics::PoolStats for PoolMetricsOf {
    fn pool_counts(&self, service: &str) -> Option<pgbay_control::metrics::PoolCounts> {
        let mut counts = None::<pgbay_control::metrics::PoolCounts>;
        for m in self
            .0
            .pool_metrics()
            .into_iter()
            .filter(|m| m.service == service)
        {
            let c = counts.get_or_insert_with(Default::default);
            let st = &m.stats;
            c.clients += u64::from(st.cl_active) + u64::from(st.cl_waiting) + u64::from(st.cl_idle);
            c.servers += u64::from(st.sv_active)
                + u64::from(st.sv_idle)
                + u64::from(st.sv_used)
                + u64::from(st.sv_login);
        }
        counts
    }
}

async fn resolve(host: &str, port: u16) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("resolving public host {host}"))?
        .next()
        .with_context(|| format!("public host {host} has no address"))
}

fn pool_mode(mode: pgbay_control::PoolMode) -> PoolMode {
    match mode {
        pgbay_control::PoolMode::Session => PoolMode::Session,
        pgbay_control::PoolMode::Transaction => PoolMode::Transaction,
        pgbay_control::PoolMode::Statement => PoolMode::Statement,
    }
}

/// Unset settings keep the pooler's (PgBouncer's) defaults. The `autodb_*` settings describe pools
/// created on demand for unknown database names; pgbay only serves pools created through the API,
/// so they are stored and returned by the API but have no effect on the pooler.
fn settings(s: &pgbay_control::PgbouncerSettings) -> PoolSettings {
    let mut out = PoolSettings::default();
    if let Some(v) = s.min_pool_size {
        out.min_pool_size = v;
    }
    if let Some(v) = s.server_idle_timeout {
        out.server_idle_timeout = (v > 0).then(|| Duration::from_secs(u64::from(v)));
    }
    if let Some(v) = s.server_lifetime {
        out.server_lifetime = Duration::from_secs(u64::from(v));
    }
    if let Some(v) = s.max_prepared_statements {
        out.max_prepared_statements = v;
    }
    if let Some(v) = s.server_reset_query_always {
        out.server_reset_query_always = v;
    }
    if let Some(v) = &s.ignore_startup_parameters {
        out.ignore_startup_parameters = v.iter().map(|p| p.as_str().to_string()).collect();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgbay_control::{IgnoredStartupParameter, PgbouncerSettings};

    #[test]
    fn unset_settings_keep_the_pooler_defaults() {
        assert_eq!(
            settings(&PgbouncerSettings::default()),
            PoolSettings::default()
        );
    }

    #[test]
    fn set_settings_reach_the_pooler_and_zero_idle_timeout_disables_it() {
        let s = PgbouncerSettings {
            min_pool_size: Some(3),
            server_idle_timeout: Some(0),
            server_lifetime: Some(120),
            max_prepared_statements: Some(0),
            server_reset_query_always: Some(true),
            ignore_startup_parameters: Some(vec![IgnoredStartupParameter::SearchPath]),
            ..PgbouncerSettings::default()
        };
        let p = settings(&s);
        assert_eq!(p.min_pool_size, 3);
        assert_eq!(p.server_idle_timeout, None);
        assert_eq!(p.server_lifetime, Duration::from_secs(120));
        assert_eq!(p.max_prepared_statements, 0);
        assert!(p.server_reset_query_always);
        assert_eq!(p.ignore_startup_parameters, vec!["search_path".to_string()]);
        let idle = PgbouncerSettings {
            server_idle_timeout: Some(30),
            ..PgbouncerSettings::default()
        };
        assert_eq!(
            settings(&idle).server_idle_timeout,
            Some(Duration::from_secs(30))
        );
    }
}
