//! The `orchestrator` test binary: agent-reaper judged by the Claude Orchestrator's own code.
//!
//! Every test here needs `../shared/orchestrator` (or `$AGENT_REAPER_ORCHESTRATOR_SRC`) and
//! python3; without the code it prints one skip line and passes.

#[path = "../common/mod.rs"]
mod common;

mod json2025;
