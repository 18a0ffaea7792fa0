//! pgbay's control plane: the model of services, databases, users, pools and operations; their
//! durable store; the provisioner that runs a real PostgreSQL cluster per service; and the desired
//! state it publishes for the data plane.
//!
//! The data-plane wiring uses only [`Control`]: `desired_state()` (a watch of
//! [`DesiredState`], republished with `generation + 1` after every committed change),
//! `tls_material()` (CA, server certificate and key), and `attach_data_plane()`, whose
//! [`AppliedReporter::applied`] releases mutations waiting for the pooler to apply them.

pub mod admin;
pub mod ca;
mod control;
pub mod crypto;
pub mod desired;
mod error;
pub mod external;
mod files;
mod lifecycle;
pub mod local;
pub mod model;
mod objects;
pub mod pgbouncer;
pub mod ports;
mod services;
pub mod store;

pub use ca::TlsMaterial;
pub use control::{AppliedReporter, Control, ControlConfig, APPLY_TIMEOUT};
pub use desired::{DesiredPool, DesiredService, DesiredState, DesiredUser};
pub use error::ControlError;
pub use external::ExternalServer;
pub use model::{InputError, PoolMode, PoolSize};
pub use pgbouncer::{IgnoredStartupParameter, PgbouncerSettings};
pub use ports::PortRange;
pub use services::{ServiceView, UserView};
pub use store::{OpState, OperationRecord, PoolRecord, ServiceRecord, ServiceState, UserKind};
