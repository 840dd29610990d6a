//! A pass's wall-clock time and memory per phase, for the debug log.

/// Where a pass's wall-clock time went, for the debug log (`AGENT_REAPER_LOG=debug`): what
/// a slow pass is asked first. Real time, not the injected clock: it decides nothing.
pub(super) struct Phases {
    last: std::time::Instant,
    spent: Vec<(&'static str, std::time::Duration, Option<u64>)>,
}

/// The process's resident memory now, in MB (Linux `/proc/self/statm`); `None` elsewhere.
fn resident_mb() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096 / (1024 * 1024))
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
        let rss = tracing::enabled!(tracing::Level::DEBUG)
            .then(resident_mb)
            .flatten();
        self.spent.push((phase, now - self.last, rss));
        self.last = now;
    }
}

impl std::fmt::Display for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (phase, took, rss)) in self.spent.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{phase} {} ms", took.as_millis())?;
            if let Some(mb) = rss {
                write!(f, " (RSS {mb} MB)")?;
            }
        }
        Ok(())
    }
}
