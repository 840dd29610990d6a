//! The `integration` test binary: agent-reaper's integration tests, one module per area,
//! linked once (`cargo test --test integration <module>::` runs one area).
//!
//! Modules that need `../shared` (fixtures, the orchestrator's code) print one `skipped:`
//! line and pass without it, unless `CI=true` (see `common::shared`). Add new areas as a
//! module here rather than as a new `tests/*.rs` binary: each binary links the whole crate
//! and bundled SQLite again.

#[path = "../common/mod.rs"]
mod common;
#[path = "../common_sqlite/mod.rs"]
mod common_sqlite;

mod allocator;
mod confinement;
mod daemon;
mod fs_errors;
mod fuzz_classify;
mod fuzz_registry_json;
mod fuzz_stat;
mod hostile;
mod journal_basic;
mod journal_copy;
mod journal_late;
mod lifecycle;
mod once_edges;
mod once_fixture;
mod processes;
mod procs_real;
mod registry_python;
mod sqlite_apply;
mod sqlite_lock;
mod sqlite_read;
mod sqlite_rules;
mod steady;
mod torture;
mod upload;
mod watch_events;

/// `base` with failing seeds kept beside the module's source (`<module>.proptest-regressions`)
/// and replayed from there: proptest's default would find this `main.rs` and use
/// `tests/proptest-regressions/<module>.txt` instead.
fn proptest_config(base: proptest::test_runner::Config) -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..base
    }
}
