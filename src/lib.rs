//! agent-reaper: cleans up after Claude Orchestrator agents (library behind the binary).

pub mod archive;
pub mod model;
pub mod procs;
pub mod registry;
