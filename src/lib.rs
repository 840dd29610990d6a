//! agent-reaper: cleans up after Claude Orchestrator agents (library behind the binary).

pub mod archive;
pub mod config;
pub mod decide;
pub mod model;
pub mod procs;
pub mod registry;
pub mod workspace;
