//! A clock for unit tests of whole passes: it stands still until a test (or a pass's
//! settle wait) moves it. The process and tmux fakes are `procs::fakes`.

use super::clock::Clock;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Shared by clones: the test keeps one, the pass the other.
#[derive(Debug, Clone)]
pub(crate) struct FakeClock(Arc<Mutex<SystemTime>>);

impl FakeClock {
    pub(crate) fn at(now: SystemTime) -> Self {
        FakeClock(Arc::new(Mutex::new(now)))
    }

    pub(crate) fn advance(&self, d: Duration) {
        *self.0.lock().expect("fake clock lock") += d;
    }
}

impl Clock for FakeClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().expect("fake clock lock")
    }

    /// A settle wait moves the clock instead of the thread.
    fn sleep(&self, d: Duration) {
        self.advance(d);
    }
}
