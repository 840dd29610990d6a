//! When to try an unreachable bucket again: doubling waits, capped (pure).

use std::time::{Duration, Instant};

/// The first wait after a failed pass; each further failure doubles it.
pub(crate) const FIRST_WAIT: Duration = Duration::from_secs(30);
/// The longest wait between two tries.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(30 * 60);

/// The daemon's memory of failed tries (`once` starts afresh each run and simply reports).
#[derive(Debug, Default, Clone)]
pub(crate) struct Backoff {
    failures: u32,
    next_try: Option<Instant>,
}

impl Backoff {
    /// Whether a pass at `now` may try the bucket.
    pub(crate) fn ready(&self, now: Instant) -> bool {
        self.next_try.is_none_or(|t| now >= t)
    }

    /// How long until the next try (zero when ready).
    pub(crate) fn remaining(&self, now: Instant) -> Duration {
        self.next_try
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now))
    }

    /// Records a failed try at `now`; returns the wait before the next one.
    pub(crate) fn failed(&mut self, now: Instant) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let wait = wait_after(self.failures);
        self.next_try = Some(now + wait);
        wait
    }

    /// A try got through: the next pass tries at once.
    pub(crate) fn succeeded(&mut self) {
        *self = Backoff::default();
    }
}

/// The wait after `failures` failed tries in a row (1 → 30 s, 2 → 60 s, ... capped at 30 min).
pub(crate) fn wait_after(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_WAIT.saturating_mul(1 << doublings).min(MAX_WAIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_and_reset_on_success() {
        assert_eq!(wait_after(1), Duration::from_secs(30));
        assert_eq!(wait_after(2), Duration::from_secs(60));
        assert_eq!(wait_after(3), Duration::from_secs(120));
        assert_eq!(wait_after(7), MAX_WAIT);
        assert_eq!(wait_after(u32::MAX), MAX_WAIT);

        let t0 = Instant::now();
        let mut b = Backoff::default();
        assert!(b.ready(t0));
        assert_eq!(b.failed(t0), FIRST_WAIT);
        assert!(!b.ready(t0 + Duration::from_secs(29)));
        assert!(b.ready(t0 + FIRST_WAIT));
        assert_eq!(b.failed(t0 + FIRST_WAIT), Duration::from_secs(60));
        assert_eq!(b.remaining(t0 + FIRST_WAIT), Duration::from_secs(60));
        b.succeeded();
        assert!(b.ready(t0));
    }
}
