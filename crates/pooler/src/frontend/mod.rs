//! Client side: login (startup, TLS, authentication, pool lookup) and the session loop.

pub mod login;
pub mod relay;
pub mod session;

pub use login::handle;
