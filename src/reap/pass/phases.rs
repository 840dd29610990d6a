//! A pass's wall-clock time and memory per phase, for the debug log.

/// Where a pass's wall-clock time and memory went, for the debug log
/// (`AGENT_REAPER_LOG=debug`): what a slow or large pass is asked first. Real time, not the
/// injected clock: it decides nothing.
pub(super) struct Phases {
    last: std::time::Instant,
    spent: Vec<(&'static str, std::time::Duration, Option<Memory>)>,
}

/// The process's resident memory at a phase's end and its peak so far, in MB.
#[derive(Clone, Copy)]
struct Memory {
    now: u64,
    peak: u64,
}

/// `VmRSS` and `VmHWM` from `/proc/self/status` (Linux); `None` elsewhere.
fn memory() -> Option<Memory> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib / 1024)
    };
    Some(Memory {
        now: field("VmRSS:")?,
        peak: field("VmHWM:")?,
    })
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
        let memory = tracing::enabled!(tracing::Level::DEBUG)
            .then(memory)
            .flatten();
        self.spent.push((phase, now - self.last, memory));
        self.last = now;
    }
}

impl std::fmt::Display for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (phase, took, memory)) in self.spent.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{phase} {} ms", took.as_millis())?;
            if let Some(m) = memory {
                write!(f, " (RSS {} MB, peak {} MB)", m.now, m.peak)?;
            }
        }
        Ok(())
    }
}
