//! Client side: the connection task (`client`), its login (`login`), the session loop that
//! attaches it to server connections (`session`) and the byte relay while attached (`relay`).

pub mod client;
mod listen;
pub mod login;
pub mod relay;
pub mod session;

pub use client::handle;
