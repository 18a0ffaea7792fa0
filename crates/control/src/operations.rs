//! Operations whose outcome the data plane decides, and the barrier between control and the data
//! plane.
//!
//! A data-plane-visible mutation commits its store change together with its operation in state
//! `pending`, publishes the desired state, and waits (bounded by `apply_timeout`) for the attached
//! data plane to report a generation at least as new. Only then is the operation finished, once:
//! `success`, or `failure`/`unavailable` when the data plane names the operation's service as failed
//! or does not answer in time. An operation is therefore never shown as `success` and rewritten
//! later. Without an attached data plane there is nobody to wait for, and the operation succeeds
//! as soon as the change is published.
//!
//! Restart rule: a data-plane operation found `pending` at start was committed but never answered
//! (pgbay died while waiting). Its store change is committed, so it is decided by the first report
//! of the data plane attached after start, exactly as if it had waited for it; if no data plane
//! attaches and reports within `apply_timeout`, it ends as `failure`/`interrupted`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::control::Control;
use crate::error::ControlError;
use crate::model::{OpState, OperationRecord};
use crate::store;

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
        let answer =
            match tokio::time::timeout(limit, rx.wait_for(|o| o.generation >= generation)).await {
                Ok(Ok(o)) => Answer::of(&o, service),
                _ => Answer::Silent,
            };
        answer
    }

    /// Publishes the committed change of the pending `op`, waits for the data plane and finishes
    /// `op` accordingly.
    pub(crate) async fn publish_and_settle(
        &self,
        op: OperationRecord,
    ) -> Result<OperationRecord, ControlError> {
        let generation = self.publish().await?;
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
    pub(crate) fn settle_after_restart(&self, ops: Vec<OperationRecord>, generation: u64) {
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
