//! The `orchestrator` test binary: agent-reaper judged by the Claude Orchestrator's own code (both generations).
//!
//! The tests need python3 and, through `harness::World`, `../shared/orchestrator` (or
//! `$AGENT_REAPER_ORCHESTRATOR_SRC`); without the code a test prints one `skipped: needs
//! ../shared/orchestrator` line and passes, unless `CI=true`, where it fails. Helpers add
//! their module below.

#[path = "../common/mod.rs"]
mod common;

mod baselock;
mod harness;
mod hooks2026;
mod json2025;
mod sqlite2026;
mod tears;
