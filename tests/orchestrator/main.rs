//! The `orchestrator` test binary: agent-reaper judged by the Claude Orchestrator's own code.

#[path = "../common/mod.rs"]
mod common;

mod hooks2026;
