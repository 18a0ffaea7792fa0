//! Message type bytes of protocol v3, named. Several bytes mean one thing from the client and
//! another from the server ('C' is Close or CommandComplete, 'D' Describe or DataRow, 'E'
//! Execute or ErrorResponse, 'S' Sync or ParameterStatus), so each name says which.
//!
//! Constants rather than an enum: scanning compares the byte read from a header against them,
//! and a byte that is none of them (most messages) must cost nothing to pass through.

// Frontend (client → server).
pub const QUERY: u8 = b'Q';
pub const PARSE: u8 = b'P';
pub const BIND: u8 = b'B';
pub const DESCRIBE: u8 = b'D';
pub const EXECUTE: u8 = b'E';
pub const CLOSE: u8 = b'C';
pub const SYNC: u8 = b'S';
pub const FLUSH: u8 = b'H';
pub const FUNCTION_CALL: u8 = b'F';
pub const COPY_DATA: u8 = b'd';
pub const COPY_DONE: u8 = b'c';
pub const COPY_FAIL: u8 = b'f';
pub const TERMINATE: u8 = b'X';
/// PasswordMessage, SASLInitialResponse and SASLResponse.
pub const PASSWORD: u8 = b'p';

// Backend (server → client).
pub const AUTHENTICATION: u8 = b'R';
pub const BACKEND_KEY_DATA: u8 = b'K';
pub const PARAMETER_STATUS: u8 = b'S';
pub const READY_FOR_QUERY: u8 = b'Z';
pub const ERROR_RESPONSE: u8 = b'E';
pub const COMMAND_COMPLETE: u8 = b'C';
pub const PARSE_COMPLETE: u8 = b'1';
pub const BIND_COMPLETE: u8 = b'2';
pub const CLOSE_COMPLETE: u8 = b'3';
pub const ROW_DESCRIPTION: u8 = b'T';
pub const NO_DATA: u8 = b'n';
pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
pub const PORTAL_SUSPENDED: u8 = b's';
pub const COPY_IN_RESPONSE: u8 = b'G';
pub const DATA_ROW: u8 = b'D';
pub const NOTIFICATION_RESPONSE: u8 = b'A';

/// Transaction status byte of ReadyForQuery. The pooler only needs to tell "idle" from the
/// others ('T' in a block, 'E' in a failed block).
pub mod txn {
    /// Not in a transaction block: the connection may serve someone else.
    pub const IDLE: u8 = b'I';
    /// In a failed transaction block: everything but its end is refused (25P02).
    pub const FAILED: u8 = b'E';
}

/// What a Describe or Close targets. Only statements are renamed; portals ('P') pass as they are.
pub mod target {
    pub const STATEMENT: u8 = b'S';
    pub const PORTAL: u8 = b'P';
}
