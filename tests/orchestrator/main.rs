//! The `orchestrator` test binary: agent-reaper judged by the Claude Orchestrator's own code (both generations).
//!
//! Every test here needs `../shared/orchestrator` (or `$AGENT_REAPER_ORCHESTRATOR_SRC`) and
//! python3; without the code it prints one `skipped: needs ../shared/orchestrator` line and
//! passes, unless `CI=true`, where it fails. Helpers add their module below.

#[path = "../common/mod.rs"]
mod common;

mod harness;
mod json2025;
mod sqlite2026;
