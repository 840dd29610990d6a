//! Test-only crash points: `AGENT_REAPER_FAILPOINT=<name>` makes the process SIGKILL itself at
//! the named point, so tests can prove what a crash there leaves behind. Never set it in
//! production; unset, each point costs one environment lookup. Unit tests arm a point for
//! one folder instead (`arm`): the pass working there panics at it, as if it died there.

use std::path::Path;

/// The points a test can name.
pub const AFTER_ARCHIVE: &str = "after-archive";

/// Upload steps (`crate::archive::upload`): after the journal's `begin`, after the object
/// is stored (before it is verified), after the `uploaded` record (before the local copy
/// goes), and after the local copy went (before `done`).
pub const UPLOAD_AFTER_BEGIN: &str = "upload-after-begin";
pub const UPLOAD_AFTER_PUT: &str = "upload-after-put";
pub const UPLOAD_AFTER_VERIFY: &str = "upload-after-verify";
pub const UPLOAD_AFTER_UNLINK: &str = "upload-after-unlink";

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

/// [`hit`], for the work in `folder`; in unit tests, panics there when armed for it.
pub fn hit_in(point: &str, folder: &Path) {
    hit(point);
    #[cfg(test)]
    if armed::take(point, folder) {
        panic!(
            "failpoint {point} in {}: the pass dies here (test)",
            folder.display()
        );
    }
    #[cfg(not(test))]
    let _ = folder;
}

/// Arms `point` once for work in `folder` (unit tests run in parallel: a folder, not the
/// process, is what one test owns).
#[cfg(test)]
pub(crate) fn arm(point: &'static str, folder: &Path) {
    armed::ARMED
        .lock()
        .expect("failpoints lock")
        .push((point, folder.to_path_buf()));
}

#[cfg(test)]
mod armed {
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    pub(super) static ARMED: Mutex<Vec<(&'static str, PathBuf)>> = Mutex::new(Vec::new());

    pub(super) fn take(point: &str, folder: &Path) -> bool {
        let mut armed = ARMED.lock().unwrap_or_else(|e| e.into_inner());
        match armed.iter().position(|(p, f)| *p == point && f == folder) {
            Some(i) => {
                armed.remove(i);
                true
            }
            None => false,
        }
    }
}
