//! Bounding a repeated log line: at most a burst of lines per window, the first line of the next
//! window telling how many were left out.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub struct LogWindow {
    burst: u32,
    window: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    start: Option<Instant>,
    logged: u32,
    left_out: u64,
}

impl LogWindow {
    pub fn new(burst: u32, window: Duration) -> LogWindow {
        LogWindow {
            burst,
            window,
            state: Mutex::new(State::default()),
        }
    }

    /// Whether one more line may be logged now, and how many were left out before it.
    pub fn may_log(&self) -> Option<u64> {
        self.may_log_at(Instant::now())
    }

    fn may_log_at(&self, now: Instant) -> Option<u64> {
        let mut w = self.state.lock();
        if w.start.is_none_or(|s| now.duration_since(s) >= self.window) {
            w.start = Some(now);
            w.logged = 0;
        }
        if w.logged < self.burst {
            w.logged += 1;
            Some(std::mem::take(&mut w.left_out))
        } else {
            w.left_out += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_window_then_the_count_left_out() {
        let w = LogWindow::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(w.may_log_at(at(0)), Some(0));
        assert_eq!(w.may_log_at(at(1)), Some(0));
        assert_eq!(w.may_log_at(at(2)), None);
        assert_eq!(w.may_log_at(at(9)), None);
        assert_eq!(
            w.may_log_at(at(10)),
            Some(2),
            "the next window tells what was left out"
        );
        assert_eq!(w.may_log_at(at(11)), Some(0));
        assert_eq!(w.may_log_at(at(12)), None);
        assert_eq!(w.may_log_at(at(30)), Some(1));
    }
}
