//! A pass's wall-clock time per phase, for the debug log.

/// Where a pass's wall-clock time went, for the debug log (`AGENT_REAPER_LOG=debug`): what
/// a slow pass is asked first. Real time, not the injected clock: it decides nothing.
pub(super) struct Phases {
    last: std::time::Instant,
    spent: Vec<(&'static str, std::time::Duration)>,
}

impl Phases {
    pub(super) fn start() -> Phases {
        Phases {
            last: std::time::Instant::now(),
            spent: Vec::new(),
        }
    }

    /// The time since the last mark goes to `phase`.
    pub(super) fn mark(&mut self, phase: &'static str) {
        let now = std::time::Instant::now();
        self.spent.push((phase, now - self.last));
        self.last = now;
    }
}

impl std::fmt::Display for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (phase, took)) in self.spent.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{phase} {} ms", took.as_millis())?;
        }
        Ok(())
    }
}
