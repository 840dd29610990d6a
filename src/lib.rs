//! agent-reaper: cleans up after Claude Orchestrator agents (library behind the binary).

pub mod archive;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod decide;
pub mod failpoint;
pub mod fs;
pub mod hooks;
pub mod journal;
pub mod logging;
pub mod model;
pub mod observe;
pub mod procs;
pub mod reap;
pub mod registry;
pub mod state;
pub mod watch;
pub mod workspace;

/// Unit tests find `../shared` (and skip without it) by the same rule as the integration tests.
#[cfg(test)]
#[path = "../tests/common/shared.rs"]
pub(crate) mod test_shared;
