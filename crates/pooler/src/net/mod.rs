//! Wire-level plumbing: the client stream type (plain or TLS), buffered reads, and the message
//! builders/parsers in `messages`.

pub mod messages;
pub mod stream;

pub use stream::ClientStream;
