//! Server side: connections to PostgreSQL and the pools that hold them.

pub mod listen;
pub mod pool;
pub mod server;

pub use pool::{AcquireError, Pool, PoolState, ServerGuard};
pub use server::{Server, ServerError};
