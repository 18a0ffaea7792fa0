//! Errors the pooler's public API returns.
//!
//! Only failures of the pooler as a whole are errors; a service that cannot be applied is reported
//! in `ApplyReport` instead, so that it does not hide the services that were applied.

/// What `Pooler::apply` can fail with as a whole.
#[derive(Debug, thiserror::Error)]
pub enum PoolerError {
    #[error("the pooler has been shut down")]
    ShutDown,
}
