//! Whether the daemon is making progress: the heartbeat a pass beats as it goes, and the
//! pure rule that decides whether systemd's watchdog may be fed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the pass in flight last reported, shared between the pass thread and the loop.
#[derive(Debug, Clone, Copy)]
pub struct Beat {
    /// When the pass last moved on (started, finished a task).
    pub at: Instant,
    /// When the pass in flight started.
    pub started: Instant,
    pub tasks_done: usize,
    pub tasks_total: usize,
}

/// A pass beats this from its own thread; the loop reads it on every watchdog tick.
#[derive(Debug, Clone)]
pub struct Heartbeat(Arc<Mutex<Beat>>);

impl Heartbeat {
    pub fn new(now: Instant) -> Self {
        Heartbeat(Arc::new(Mutex::new(Beat {
            at: now,
            started: now,
            tasks_done: 0,
            tasks_total: 0,
        })))
    }

    /// A pass starts: progress by itself.
    pub fn pass_started(&self, now: Instant) {
        *self.lock() = Beat {
            at: now,
            started: now,
            tasks_done: 0,
            tasks_total: 0,
        };
    }

    /// The pass finished `done` of `total` tasks.
    pub fn task_done(&self, done: usize, total: usize, now: Instant) {
        let mut beat = self.lock();
        beat.at = now;
        beat.tasks_done = done;
        beat.tasks_total = total;
    }

    pub fn last(&self) -> Beat {
        *self.lock()
    }

    /// A poisoned lock only means a pass panicked mid-beat; the beat itself is still whole.
    fn lock(&self) -> std::sync::MutexGuard<'_, Beat> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The callback a `Reaper` calls as it finishes tasks.
    pub fn reaper_callback(&self) -> Box<dyn FnMut(usize, usize) + Send> {
        let beat = self.clone();
        Box::new(move |done, total| beat.task_done(done, total, Instant::now()))
    }
}

/// Feed the watchdog? Yes while the loop is idle (it answered this tick) or the pass in
/// flight moved on within `limit`; no while a pass has been stuck longer, so systemd
/// restarts a daemon whose pass hangs instead of being told all is well by a timer.
pub fn may_feed_watchdog(pass_in_flight: bool, last: &Beat, now: Instant, limit: Duration) -> bool {
    !pass_in_flight || now.saturating_duration_since(last.at) < limit
}

/// One line saying what a pass that did not finish was doing, for the log at shutdown or
/// when the watchdog is withheld.
pub fn describe_stuck(last: &Beat, now: Instant) -> String {
    let running = now.saturating_duration_since(last.started);
    let quiet = now.saturating_duration_since(last.at);
    let applied = if last.tasks_total == 0 {
        "no task finished yet".to_string()
    } else {
        format!(
            "{} of {} task(s) finished",
            last.tasks_done, last.tasks_total
        )
    };
    format!(
        "the pass in flight has run {:.1}s, {applied}, last progress {:.1}s ago",
        running.as_secs_f64(),
        quiet.as_secs_f64()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(30);

    #[test]
    fn idle_loop_feeds_whatever_the_last_beat() {
        let t0 = Instant::now();
        let hb = Heartbeat::new(t0);
        assert!(may_feed_watchdog(false, &hb.last(), t0 + LIMIT * 10, LIMIT));
    }

    #[test]
    fn a_pass_that_moves_on_feeds_and_a_stuck_one_does_not() {
        let t0 = Instant::now();
        let hb = Heartbeat::new(t0);
        hb.pass_started(t0);
        assert!(may_feed_watchdog(true, &hb.last(), t0 + LIMIT / 2, LIMIT));
        hb.task_done(1, 3, t0 + LIMIT / 2);
        assert!(may_feed_watchdog(true, &hb.last(), t0 + LIMIT, LIMIT));
        // No beat for a whole limit: stuck, however long the daemon itself has run.
        assert!(!may_feed_watchdog(
            true,
            &hb.last(),
            t0 + LIMIT / 2 + LIMIT,
            LIMIT
        ));
    }

    #[test]
    fn the_callback_beats_from_another_thread() {
        let t0 = Instant::now();
        let hb = Heartbeat::new(t0);
        let mut cb = hb.reaper_callback();
        std::thread::spawn(move || cb(2, 5)).join().unwrap();
        let last = hb.last();
        assert_eq!((last.tasks_done, last.tasks_total), (2, 5));
        assert!(last.at >= t0);
    }

    #[test]
    fn stuck_description_says_how_far_it_got() {
        let t0 = Instant::now();
        let hb = Heartbeat::new(t0);
        hb.pass_started(t0);
        let text = describe_stuck(&hb.last(), t0 + Duration::from_secs(12));
        assert!(
            text.contains("12.0s") && text.contains("no task finished"),
            "{text}"
        );
        hb.task_done(4, 9, t0 + Duration::from_secs(2));
        let text = describe_stuck(&hb.last(), t0 + Duration::from_secs(12));
        assert!(
            text.contains("4 of 9") && text.contains("10.0s ago"),
            "{text}"
        );
    }
}
