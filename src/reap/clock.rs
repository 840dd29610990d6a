//! The clock seam of a pass: what time it is, and how a pass waits for logs to settle
//! (the system clock; unit tests move a `reap::fakes::FakeClock` instead of sleeping).

use std::time::{Duration, SystemTime};

pub trait Clock: Send + Sync {
    fn now(&self) -> SystemTime;
    /// Waits `d` (`once` waiting for a log to settle).
    fn sleep(&self, d: Duration);
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }
}
