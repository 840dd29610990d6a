//! Test-only crash points: `AGENT_REAPER_FAILPOINT=<name>` makes the process SIGKILL itself at
//! the named point, so tests can prove what a crash there leaves behind. Never set it in
//! production; unset, each point costs one environment lookup.

/// The points a test can name.
pub const AFTER_ARCHIVE: &str = "after-archive";

/// Whether `AGENT_REAPER_FAILPOINT` names `point` (for a point that first leaves a torn
/// write behind, then dies at [`hit`]).
pub fn armed(point: &str) -> bool {
    std::env::var_os("AGENT_REAPER_FAILPOINT").is_some_and(|v| v == point)
}

/// Dies by SIGKILL (nothing flushed, nothing unwound) when `AGENT_REAPER_FAILPOINT` names `point`.
pub fn hit(point: &str) {
    if armed(point) {
        eprintln!("failpoint {point}: killing the process (test only)");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        std::process::abort();
    }
}
