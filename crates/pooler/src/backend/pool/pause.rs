//! PAUSE/RESUME of the admin console, and the KILL epoch clients compare at each request.

use super::*;

impl Pool {
    /// One relaxed load, on the hot path: whether new transactions must wait for RESUME.
    #[inline]
    pub fn is_paused(&self) -> bool {
        self.pause.paused.load(Ordering::Relaxed)
    }

    /// PAUSE: transactions not started yet wait until `resume`.
    pub fn pause(&self) {
        self.pause.paused.store(true, Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.pause.paused.store(false, Ordering::SeqCst);
        self.pause.resumed.notify_waiters();
    }

    /// Returns once the pool is not paused.
    pub async fn resumed(&self) {
        loop {
            let notified = self.pause.resumed.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if !self.pause.paused.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    /// The KILL epoch a client saw at login; a different one later means it was killed.
    pub fn kill_epoch(&self) -> u64 {
        self.pause.kill_epoch.load(Ordering::Relaxed)
    }
}
