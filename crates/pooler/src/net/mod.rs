//! Wire-level plumbing: the client stream type (plain or TLS), the server stream type (TCP or
//! Unix socket), buffered reads, and the message builders/parsers in `messages`.

pub mod messages;
pub mod server_stream;
pub mod stream;
pub mod tls13;
pub mod tls_conn;

pub use server_stream::ServerStream;
pub use stream::ClientStream;
