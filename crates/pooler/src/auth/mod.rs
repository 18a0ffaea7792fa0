//! Password authentication: SCRAM-SHA-256 and md5, both as server (checking clients) and as
//! client (logging in to PostgreSQL).

pub mod md5;
pub mod scram;

/// How the pooler asks clients to authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuthMethod {
    #[default]
    ScramSha256,
    Md5,
}
