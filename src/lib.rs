//! agent-reaper: cleans up after Claude Orchestrator agents (library behind the binary).

pub mod agent_file;
pub mod archive;
pub mod cli;
pub(crate) mod config;
pub(crate) mod daemon;
pub(crate) mod decide;
pub(crate) mod failpoint;
pub mod fs;
pub(crate) mod hooks;
pub mod journal;
pub(crate) mod logging;
pub mod model;
pub(crate) mod observe;
pub(crate) mod packed;
pub mod procs;
pub(crate) mod reap;
pub mod registry;
pub(crate) mod state;
pub(crate) mod state_file;
pub mod watch;
pub mod workspace;

/// Unit tests find `../shared` (and skip without it) by the same rule as the integration tests.
#[cfg(test)]
#[path = "../tests/common/shared.rs"]
pub(crate) mod test_shared;
