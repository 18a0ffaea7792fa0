//! Operations: their kinds, how they are created, finished and looked up, the barrier between
//! control and the data plane that decides most of them, and what a restart does with the ones it
//! left pending.
//!
//! Every mutating call records one operation in the transaction of its store change. Databases
//! live on the PostgreSQL server only, so their operations are done (`success`) when committed.
//! A data-plane-visible mutation commits its store change together with its operation in state
//! `pending`, publishes the desired state, and waits (bounded by `apply_timeout`) for the attached
//! data plane to report a generation at least as new. Only then is the operation finished, once:
//! `success`, or `failure`/`unavailable` when the data plane names the operation's service as failed
//! or does not answer in time. An operation is therefore never shown as `success` and rewritten
//! later. Without an attached data plane there is nobody to wait for, and the operation succeeds
//! as soon as the change is published (a change that cannot be published ends `failure`/`fault`).
//!
//! Restart rule: a `create-service` found `pending` with its service still being provisioned is
//! resumed by provisioning; one whose service is gone ends `failure`/`interrupted`. Any other
//! operation found `pending` at start was committed but never answered (pgbay died while
//! waiting). Its store change is committed, so it is decided by the first report of the data
//! plane attached after start, exactly as if it had waited for it; if no data plane attaches and
//! reports within `apply_timeout`, it ends as `failure`/`interrupted`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use uuid::Uuid;

use crate::control::Control;
use crate::error::ControlError;
use crate::model::{OpState, OperationRecord, ServiceRecord, ServiceState};
use crate::store;

/// What an operation does. Stored with the spelling of [`OperationKind::as_str`]; an unknown
/// stored spelling is a corrupt store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperationKind {
    /// `create-service`: pending until provisioned and served.
    CreateService,
    /// `update-service`
    UpdateService,
    /// `delete-service`
    DeleteService,
    /// `create-database`
    CreateDatabase,
    /// `delete-database`
    DeleteDatabase,
    /// `create-user`
    CreateUser,
    /// `delete-user`
    DeleteUser,
    /// `reset-password`
    ResetPassword,
    /// `create-pool`
    CreatePool,
    /// `update-pool`
    UpdatePool,
    /// `delete-pool`
    DeletePool,
    /// `maintenance`: pgbay's maintenance of a service, pending until it is done.
    Maintenance,
}

impl OperationKind {
    /// Every kind.
    pub const ALL: [OperationKind; 12] = [
        OperationKind::CreateService,
        OperationKind::UpdateService,
        OperationKind::DeleteService,
        OperationKind::CreateDatabase,
        OperationKind::DeleteDatabase,
        OperationKind::CreateUser,
        OperationKind::DeleteUser,
        OperationKind::ResetPassword,
        OperationKind::CreatePool,
        OperationKind::UpdatePool,
        OperationKind::DeletePool,
        OperationKind::Maintenance,
    ];

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::CreateService => "create-service",
            OperationKind::UpdateService => "update-service",
            OperationKind::DeleteService => "delete-service",
            OperationKind::CreateDatabase => "create-database",
            OperationKind::DeleteDatabase => "delete-database",
            OperationKind::CreateUser => "create-user",
            OperationKind::DeleteUser => "delete-user",
            OperationKind::ResetPassword => "reset-password",
            OperationKind::CreatePool => "create-pool",
            OperationKind::UpdatePool => "update-pool",
            OperationKind::DeletePool => "delete-pool",
            OperationKind::Maintenance => "maintenance",
        }
    }

    /// Reads a stored spelling back.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether the pooler serves what the operation changes, so that its answer decides it.
    pub fn reaches_data_plane(self) -> bool {
        !matches!(
            self,
            OperationKind::CreateDatabase
                | OperationKind::DeleteDatabase
                | OperationKind::Maintenance
        )
    }
}

/// A new operation about service `s`.
pub(crate) fn operation_about(
    s: &ServiceRecord,
    kind: OperationKind,
    state: OpState,
    message: String,
) -> OperationRecord {
    OperationRecord {
        id: Uuid::new_v4(),
        state,
        reason: None,
        message,
        ref_id: s.id,
        ref_link: format!("/v2/dbaas-postgres/{}", s.name),
        ref_command: "get-dbaas-service-pg".to_string(),
        kind,
        service: s.name.clone(),
    }
}

/// The pending operations found at start, sorted by what becomes of them.
pub(crate) struct PendingAtStart {
    /// `create-service` operations that provisioning resumes, by service.
    pub(crate) provisioning: Vec<(String, Uuid)>,
    /// Operations that wait for the first report of a data plane.
    waiting: Vec<OperationRecord>,
}

impl PendingAtStart {
    /// The operation provisioning `service` resumes, if any.
    pub(crate) fn provisioning_of(&self, service: &str) -> Option<Uuid> {
        self.provisioning
            .iter()
            .find(|(s, _)| s == service)
            .map(|(_, id)| *id)
    }
}

/// What the data plane reports after applying one published generation of the desired state.
///
/// A report covers its generation and every earlier one: the desired state is a whole snapshot,
/// so a service that applied generation `n` serves every change committed before `n`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// The generation of [`crate::DesiredState`] that was applied.
    pub generation: u64,
    /// Services that could not be applied, each with the data plane's reason; every other service
    /// of the generation is served as published.
    pub failures: Vec<(String, String)>,
}

impl ApplyOutcome {
    /// Why `service` failed to apply, if it did.
    pub fn failure_of(&self, service: &str) -> Option<&str> {
        self.failures
            .iter()
            .find(|(s, _)| s == service)
            .map(|(_, why)| why.as_str())
    }
}

/// Handed to the data-plane wiring by [`Control::attach_data_plane`]: it reports each generation
/// it has applied. Dropping every clone of it counts as a data plane that stopped answering.
#[derive(Debug, Clone)]
pub struct AppliedReporter {
    tx: Arc<watch::Sender<Arc<ApplyOutcome>>>,
}

impl AppliedReporter {
    /// The data plane has applied `generation` (and everything before it); `failures` lists the
    /// services it could not apply as `(service, reason)`. An older generation than one already
    /// reported is ignored.
    pub fn applied(&self, generation: u64, failures: Vec<(String, String)>) {
        self.tx.send_if_modified(|cur| {
            if generation > cur.generation {
                *cur = Arc::new(ApplyOutcome {
                    generation,
                    failures,
                });
                true
            } else {
                false
            }
        });
    }
}

/// The reports of the attached data plane, if any (replaced by each attach).
pub(crate) type DataPlaneSlot = watch::Sender<Option<watch::Receiver<Arc<ApplyOutcome>>>>;

/// How the data plane answered for one service.
#[derive(Debug)]
enum Answer {
    /// No data plane is attached: nothing to wait for.
    Detached,
    /// The service serves the generation.
    Applied,
    /// The data plane could not apply the service, for this reason.
    Failed(String),
    /// No report within the bound (or the data plane went away).
    Silent,
    /// A restart cut the wait short and no data plane reported since.
    Interrupted,
}

impl Answer {
    fn of(outcome: &ApplyOutcome, service: &str) -> Answer {
        match outcome.failure_of(service) {
            Some(why) => Answer::Failed(why.to_string()),
            None => Answer::Applied,
        }
    }

    /// How `op` ends given this answer: (state, reason, message).
    fn verdict(
        self,
        op: &OperationRecord,
        limit: Duration,
    ) -> (OpState, Option<&'static str>, String) {
        match self {
            Answer::Detached | Answer::Applied => (OpState::Success, None, op.message.clone()),
            Answer::Failed(why) => (
                OpState::Failure,
                Some("unavailable"),
                format!("{}; but the pooler could not apply it: {why}", op.message),
            ),
            Answer::Silent => (
                OpState::Failure,
                Some("unavailable"),
                format!(
                    "{}; but the pooler did not apply the change within {}s",
                    op.message,
                    limit.as_secs_f32()
                ),
            ),
            Answer::Interrupted => (
                OpState::Failure,
                Some("interrupted"),
                "interrupted by a restart of pgbay".to_string(),
            ),
        }
    }
}

impl Control {
    /// `GET /operation/{id}`.
    pub async fn operation(&self, id: Uuid) -> Result<OperationRecord, ControlError> {
        self.inner
            .store
            .operation(id)
            .await?
            .ok_or_else(|| ControlError::NotFound(format!("operation {id} not found")))
    }

    /// Records the operation of a mutation in the transaction of its store change and commits:
    /// `pending` when the data plane decides it, else `success`. Finish it with [`Self::settle`].
    pub(crate) async fn record_operation(
        &self,
        mut tx: crate::store::StoreTx,
        s: &ServiceRecord,
        kind: OperationKind,
        message: String,
    ) -> Result<OperationRecord, ControlError> {
        let state = if kind.reaches_data_plane() {
            OpState::Pending
        } else {
            OpState::Success
        };
        let op = operation_about(s, kind, state, message);
        store::insert_operation(&mut tx, &op).await?;
        tx.commit().await?;
        Ok(op)
    }

    /// Finishes a recorded operation: a pending one once the data plane answered.
    pub(crate) async fn settle(
        &self,
        op: OperationRecord,
    ) -> Result<OperationRecord, ControlError> {
        if op.state == OpState::Pending {
            // In a task of its own: the change is committed, so publishing it and finishing the
            // operation must happen even if the caller stops waiting (an HTTP client that hangs
            // up drops the request's future).
            let control = self.clone();
            tokio::spawn(async move { control.publish_and_settle(op).await }).await?
        } else {
            Ok(op)
        }
    }

    /// [`Self::record_operation`], then [`Self::settle`].
    pub(crate) async fn commit_operation(
        &self,
        tx: crate::store::StoreTx,
        s: &ServiceRecord,
        kind: OperationKind,
        message: String,
    ) -> Result<OperationRecord, ControlError> {
        let op = self.record_operation(tx, s, kind, message).await?;
        self.settle(op).await
    }

    /// Ends operation `id` as `failure` for `reason` (work that broke after it was recorded).
    pub(crate) async fn fail_operation(
        &self,
        id: Uuid,
        reason: &str,
        message: &str,
    ) -> Result<(), ControlError> {
        let mut tx = self.inner.store.begin().await?;
        store::finish_operation(&mut tx, id, OpState::Failure, Some(reason), message).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Sorts the operations a stop left pending (see the module doc); ends at once those with
    /// nothing left to wait for.
    pub(crate) async fn pending_at_start(
        &self,
        services: &[ServiceRecord],
    ) -> Result<PendingAtStart, ControlError> {
        let mut sorted = PendingAtStart {
            provisioning: Vec::new(),
            waiting: Vec::new(),
        };
        for op in self.inner.store.pending_operations().await? {
            let service = services.iter().find(|s| s.name == op.service);
            // Another node's work: that node (or, if it is lost, the live ones) settles it.
            if service.is_some_and(|s| !self.is_mine(s)) {
                continue;
            }
            match (op.kind, service.map(|s| s.state)) {
                (OperationKind::CreateService, Some(ServiceState::Rebuilding)) => {
                    sorted.provisioning.push((op.service, op.id))
                }
                // Background work that a restart cut short: nothing resumes it.
                (OperationKind::CreateService, None) | (OperationKind::Maintenance, _) => {
                    let (state, reason, message) =
                        Answer::Interrupted.verdict(&op, self.inner.cfg.apply_timeout);
                    self.finish_operation(op, state, reason, message).await?;
                }
                _ => sorted.waiting.push(op),
            }
        }
        Ok(sorted)
    }

    /// Attaches a data plane: from now on, data-plane-visible operations stay `pending` until it
    /// reports the generation that contains them.
    pub fn attach_data_plane(&self) -> AppliedReporter {
        let (tx, rx) = watch::channel(Arc::new(ApplyOutcome::default()));
        self.inner.data_plane.send_replace(Some(rx));
        AppliedReporter { tx: Arc::new(tx) }
    }

    /// Waits (bounded) for the attached data plane to report `generation`, and says how it went
    /// for `service`.
    async fn answer(&self, generation: u64, service: &str) -> Answer {
        let Some(mut rx) = self.inner.data_plane.borrow().clone() else {
            return Answer::Detached;
        };
        let limit = self.inner.cfg.apply_timeout;
        let deadline = tokio::time::Instant::now() + limit;
        let answer =
            match tokio::time::timeout(limit, rx.wait_for(|o| o.generation >= generation)).await {
                Ok(Ok(o)) => Answer::of(&o, service),
                _ => Answer::Silent,
            };
        if !matches!(answer, Answer::Applied) {
            return answer;
        }
        // Every live node serves every pool: the change is done once they all do.
        let behind = self.other_nodes_serve(generation, deadline).await;
        if behind.is_empty() {
            Answer::Applied
        } else {
            Answer::Failed(format!(
                "node(s) {} did not serve it within {} s",
                behind.join(", "),
                limit.as_secs()
            ))
        }
    }

    /// Waits (bounded, as an operation would) for every live node's pooler to serve
    /// `generation`; what went wrong, if anything, is logged.
    pub(crate) async fn wait_served(&self, generation: u64, service: &str) {
        match self.answer(generation, service).await {
            Answer::Applied | Answer::Detached => {}
            other => tracing::warn!(service = %service, answer = ?other, "not served everywhere"),
        }
    }

    /// Runs `work` in the background, holding the service's lock (`guard`) until it ends (requests
    /// meanwhile get 409 naming `op`: `Control::mark_busy`): its
    /// `Ok(message)` publishes and settles `op` (pending) with that message, its
    /// `Err((reason, message))` ends `op` `failure`.
    pub(crate) fn spawn_operation_work(
        &self,
        guard: tokio::sync::OwnedMutexGuard<()>,
        op: OperationRecord,
        span: tracing::Span,
        work: impl std::future::Future<Output = Result<String, (&'static str, String)>> + Send + 'static,
    ) {
        let c = self.clone();
        let busy = self.mark_busy(&op.service, op.id);
        let task = async move {
            let _g = guard;
            let result = work.await;
            // Requests arriving from here on wait for the lock (a moment) instead of being
            // refused: the operation is settled below, and a client that saw it settled must
            // not be told it is still running.
            drop(busy);
            match result {
                Ok(message) => {
                    if let Err(e) = c
                        .publish_and_settle(OperationRecord { message, ..op })
                        .await
                    {
                        tracing::error!(error = %e, "settling an operation");
                    }
                }
                Err((reason, message)) => {
                    if let Err(e) = c.fail_operation(op.id, reason, &message).await {
                        tracing::error!(error = %e, "recording a failed operation");
                    }
                }
            }
        };
        tokio::spawn(tracing::Instrument::instrument(task, span));
    }

    /// Publishes the committed change of the pending `op`, waits for the data plane and finishes
    /// `op` accordingly.
    pub(crate) async fn publish_and_settle(
        &self,
        op: OperationRecord,
    ) -> Result<OperationRecord, ControlError> {
        let generation = match self.publish_of(&op.service).await {
            Ok(g) => g,
            Err(e) => {
                // Nothing reached the data plane: say so rather than leave the operation pending.
                let message = format!("{}; but it could not be published", op.message);
                self.finish_operation(op, OpState::Failure, Some("fault"), message)
                    .await?;
                return Err(e);
            }
        };
        let answer = self.answer(generation, &op.service).await;
        let (state, reason, message) = answer.verdict(&op, self.inner.cfg.apply_timeout);
        self.finish_operation(op, state, reason, message).await
    }

    /// Ends an operation (one write; an operation is finished once).
    pub(crate) async fn finish_operation(
        &self,
        mut op: OperationRecord,
        state: OpState,
        reason: Option<&str>,
        message: String,
    ) -> Result<OperationRecord, ControlError> {
        let mut tx = self.inner.store.begin().await?;
        store::finish_operation(&mut tx, op.id, state, reason, &message).await?;
        tx.commit().await?;
        op.state = state;
        op.reason = reason.map(str::to_string);
        op.message = message;
        Ok(op)
    }

    /// Decides data-plane operations that a restart left `pending` (see the module doc): waits for
    /// the first report of a data plane attached after start that covers `generation`.
    pub(crate) fn settle_after_restart(&self, pending: PendingAtStart, generation: u64) {
        let ops = pending.waiting;
        if ops.is_empty() {
            return;
        }
        let c = self.clone();
        tokio::spawn(async move {
            let mut attached = c.inner.data_plane.subscribe();
            let first_report = async {
                let mut rx = attached.wait_for(Option::is_some).await.ok()?.clone()?;
                let outcome = rx.wait_for(|o| o.generation >= generation).await.ok()?;
                Some(ApplyOutcome::clone(&outcome))
            };
            let report = tokio::time::timeout(c.inner.cfg.apply_timeout, first_report)
                .await
                .ok()
                .flatten();
            for op in ops {
                let answer = match &report {
                    Some(o) => Answer::of(o, &op.service),
                    None => Answer::Interrupted,
                };
                let (state, reason, message) = answer.verdict(&op, c.inner.cfg.apply_timeout);
                let id = op.id;
                if let Err(e) = c.finish_operation(op, state, reason, message).await {
                    tracing::error!(operation = %id, error = %e, "finishing an interrupted operation");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_back_from_its_spelling_and_nothing_else_does() {
        for kind in OperationKind::ALL {
            assert_eq!(OperationKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(OperationKind::parse("create-widget"), None);
        assert!(!OperationKind::CreateDatabase.reaches_data_plane());
        assert!(OperationKind::CreatePool.reaches_data_plane());
    }
}
