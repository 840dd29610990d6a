//! Stopping processes: pidfd-verified SIGTERM, escalating waits, SIGKILL for survivors.

use super::table::{ProcKey, ProcTable};
use crate::model::AgentId;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct StopPolicy {
    /// Waits after SIGTERM before SIGKILL (0.5 s, 1 s, 2 s by default).
    pub term_steps: Vec<Duration>,
}

#[derive(Debug, Clone)]
pub struct StopRequest {
    pub agent: AgentId,
    pub processes: Vec<ProcKey>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct StopReport {
    pub signalled: Vec<ProcKey>,
    pub escalated_to_sigkill: bool,
    /// Still alive after SIGKILL (should not happen).
    pub survivors: Vec<ProcKey>,
    /// Defunct processes, with the parent that has to reap them: `(pid, ppid)`.
    pub defunct: Vec<(i32, i32)>,
    /// Processes left alone, with why (pid reused, protected, another user's, ...).
    pub refused: Vec<(ProcKey, String)>,
}

impl StopReport {
    pub fn verified_no_zombies(&self) -> bool {
        self.survivors.is_empty() && self.defunct.is_empty()
    }
}

/// Stops every request's processes at once (never one agent after another), one report each.
pub fn stop_all(
    requests: &[StopRequest],
    table: &ProcTable,
    policy: &StopPolicy,
) -> Vec<StopReport> {
    let _ = (requests, table, policy);
    todo!("procs helper")
}
