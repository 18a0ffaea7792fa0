//! Named connection states, PgBouncer style, and the per-pool counts of each: what
//! `Pooler::pool_stats` returns and what the admin console's SHOW POOLS will read.
//!
//! Every count is kept as the state changes, never inferred after the fact. Server counts live
//! in the pool's inner state (changed under the lock that the same transitions already take);
//! client counts are one packed atomic word per pool, changed by the client itself, so that a
//! transaction costs no lock beyond the pool's own checkout and check-in.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Client connection states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// CL_IDLE: logged in, no server connection, waiting for the client to send.
    Idle = 0,
    /// CL_WAITING: has sent a query, waiting for a server connection (queued, or while one is
    /// being made for it).
    Waiting = 1,
    /// CL_ACTIVE: attached to a server connection.
    Active = 2,
}

/// Server connection states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// SV_LOGIN: being connected and logged in.
    Login,
    /// SV_IDLE: in the pool, ready to be lent.
    Idle,
    /// SV_ACTIVE: lent to a client.
    Active,
    /// SV_USED: its client is done with it and it is being reset (DISCARD ALL) before it may
    /// serve anyone else.
    Used,
}

/// Counts of one pool's connections by state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    pub cl_active: u32,
    pub cl_waiting: u32,
    pub cl_idle: u32,
    pub sv_active: u32,
    pub sv_idle: u32,
    pub sv_used: u32,
    pub sv_login: u32,
    /// How long the oldest client in the wait queue has been waiting (zero when none is).
    pub maxwait: Duration,
}

/// Bits per state in `ClientCounts`: up to 2^21 - 1 clients of one pool in one state.
const BITS: u32 = 21;
const MASK: u64 = (1 << BITS) - 1;

/// A pool's clients counted by state, packed in one word: a client changing state is one
/// atomic add (it takes one from its old state's field and adds one to the new one's; no field
/// borrows from another because the client was counted in its old state).
#[derive(Default, Debug)]
pub(crate) struct ClientCounts(AtomicU64);

impl ClientCounts {
    fn unit(state: ClientState) -> u64 {
        1 << (BITS * state as u32)
    }

    pub fn add(&self, state: ClientState) {
        self.0.fetch_add(Self::unit(state), Ordering::Relaxed);
    }

    pub fn remove(&self, state: ClientState) {
        self.0.fetch_sub(Self::unit(state), Ordering::Relaxed);
    }

    pub fn change(&self, from: ClientState, to: ClientState) {
        if from != to {
            let delta = Self::unit(to).wrapping_sub(Self::unit(from));
            self.0.fetch_add(delta, Ordering::Relaxed);
        }
    }

    pub fn get(&self, state: ClientState) -> u32 {
        let packed = self.0.load(Ordering::Relaxed);
        ((packed >> (BITS * state as u32)) & MASK) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_client_counts_move_between_states() {
        let c = ClientCounts::default();
        for _ in 0..3 {
            c.add(ClientState::Idle);
        }
        c.change(ClientState::Idle, ClientState::Active);
        c.change(ClientState::Idle, ClientState::Waiting);
        c.change(ClientState::Waiting, ClientState::Active);
        c.change(ClientState::Active, ClientState::Idle);
        assert_eq!(
            (
                c.get(ClientState::Idle),
                c.get(ClientState::Waiting),
                c.get(ClientState::Active)
            ),
            (2, 0, 1)
        );
        c.remove(ClientState::Active);
        c.remove(ClientState::Idle);
        c.remove(ClientState::Idle);
        assert_eq!(c.0.load(Ordering::Relaxed), 0);
    }
}
