//! agent-reaper: cleans up after Claude Orchestrator agents (library behind the binary).

pub mod act;
pub mod archive;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dbtasks;
pub mod decide;
pub mod demo;
pub mod failpoint;
pub mod fs;
pub mod hooks;
pub mod instance;
pub mod journal;
pub mod late;
pub mod logging;
pub mod model;
pub mod observe;
pub mod pass;
pub mod procs;
pub mod record;
pub mod registry;
pub mod report;
pub mod watch;
pub mod workspace;

/// Unit tests find `../shared` (and skip without it) by the same rule as the integration tests.
#[cfg(test)]
#[path = "../tests/common/shared.rs"]
pub(crate) mod test_shared;
