//! Test-only crash points: `AGENT_REAPER_FAILPOINT=<name>` makes the process SIGKILL itself at
//! the named point, so tests can prove what a crash there leaves behind. Never set it in
//! production; unset, each point costs one environment lookup.

/// The points a test can name.
pub const AFTER_ARCHIVE: &str = "after-archive";

/// Dies by SIGKILL (nothing flushed, nothing unwound) when `AGENT_REAPER_FAILPOINT` names `point`.
pub fn hit(point: &str) {
    if std::env::var_os("AGENT_REAPER_FAILPOINT").is_some_and(|v| v == point) {
        eprintln!("failpoint {point}: killing the process (test only)");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        std::process::abort();
    }
}

/// Upload steps (`crate::archive::upload`): after the journal's `begin`, after the object
/// is stored (before it is verified), after the `uploaded` record (before the local copy
/// goes), and after the local copy went (before `done`).
pub const UPLOAD_AFTER_BEGIN: &str = "upload-after-begin";
pub const UPLOAD_AFTER_PUT: &str = "upload-after-put";
pub const UPLOAD_AFTER_VERIFY: &str = "upload-after-verify";
pub const UPLOAD_AFTER_UNLINK: &str = "upload-after-unlink";
