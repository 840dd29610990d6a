//! An agent once its decision is final: what the file work, the records, the registries
//! and the report still need of its view.

use super::{AgentView, TaskView};
use crate::model::AgentId;
use crate::procs::evidence::Evidence;
use crate::workspace::TaskDir;
use std::sync::Arc;

/// What is kept of an [`AgentView`] once the pass decided for good (after the second look
/// of a pass that acts): the view's facts, log identities, panes and processes served the
/// judging and the stopping only. The actions hold the paths they act on.
///
/// A view is 376 bytes and its logs' facts 240 more; this is 168. One task of 40,000
/// agents held its views through the file work and the registry edit: 25 MB.
#[derive(Debug, Clone)]
pub struct DecidedAgent {
    pub id: AgentId,
    /// The status as read from the registry.
    pub registry_status: Arc<str>,
    /// Live processes of its set at the last look (the record's `verified_no_zombies`).
    pub live_processes: usize,
    /// What tied processes to it, for the record's `processes_checked`.
    pub evidence: Evidence,
    /// The round's environment read looked for its sessions.
    pub env_read: bool,
    pub warnings: Vec<String>,
    /// The agent's task: its folder handle for the file work.
    pub task: TaskDir,
}

impl DecidedAgent {
    /// What the search for its processes looked at (for the record). Made when a record
    /// asks, from the evidence kept (fixed once observed): 40,000 agents' lists held from
    /// observation to record were 10 MB, and as many again in the records.
    pub fn checked(&self) -> Vec<String> {
        self.evidence.checked(self.env_read)
    }
}

impl From<AgentView> for DecidedAgent {
    fn from(view: AgentView) -> DecidedAgent {
        DecidedAgent {
            id: view.id,
            registry_status: view.registry_status,
            live_processes: view.facts.live_processes,
            evidence: view.evidence,
            env_read: view.env_read,
            warnings: view.warnings,
            task: view.task,
        }
    }
}

impl TaskView {
    /// The task with its agents as decided (see [`DecidedAgent`]). The views' vector is
    /// let go here, not reused for the smaller kept parts (which would hold its size).
    pub fn decided(self) -> TaskView<DecidedAgent> {
        let mut kept = Vec::with_capacity(self.agents.len());
        for view in self.agents {
            kept.push(DecidedAgent::from(view));
        }
        TaskView {
            task: self.task,
            backend: self.backend,
            agents: kept,
            active_count: self.active_count,
            expected_active: self.expected_active,
            warnings: self.warnings,
            duplicates: self.duplicates,
            error: self.error,
            quiet: self.quiet,
        }
    }
}
