//! Where the tests find `../shared` (fixtures, the orchestrator's code), and the one rule for skipping without it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// `../shared/fixtures` next to the repository (CI lays shared/ beside the clone).
pub fn fixtures_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("AGENT_REAPER_FIXTURES") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures")
}

/// `path` when it exists; otherwise prints ONE line saying the test is skipped and why, and
/// returns `None` (the test then returns early). Under `CI=true` a skip is a failure instead:
/// CI lays `shared/` beside the clone, so a missing dependency there is a broken setup, not a
/// reason to pass. The line goes straight to stderr so it shows even when output is captured.
pub fn shared_or_skip(what: &str, path: PathBuf) -> Option<PathBuf> {
    if path.exists() {
        return Some(path);
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_string();
    let line = format!(
        "skipped: needs ../shared/{what} ({} not found; lay shared/ beside the clone{}): {test}",
        path.display(),
        if what == "orchestrator" {
            " or set AGENT_REAPER_ORCHESTRATOR_SRC"
        } else {
            " or set AGENT_REAPER_FIXTURES"
        }
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{line}; CI=true: tests that need ../shared must run in CI");
    }
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
    None
}

/// `$AGENT_REAPER_ORCHESTRATOR_SRC`, else `../shared/orchestrator` beside the repository.
pub fn orchestrator_src() -> PathBuf {
    std::env::var_os("AGENT_REAPER_ORCHESTRATOR_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/orchestrator"))
}

/// The 2025 fixture workspace, or `None` after the skip line.
pub fn fixture_workspace() -> Option<PathBuf> {
    shared_or_skip(
        "fixtures",
        fixtures_dir().join("orchestrator-2025-10/.agent-workspace"),
    )
}
