//! An agent once its decision is final: what the file work, the records, the registries
//! and the report still need of its view.

use super::{AgentView, TaskView};
use crate::model::AgentId;
use crate::procs::evidence::Searched;
use crate::workspace::TaskDir;
use std::sync::Arc;

/// What is kept of an [`AgentView`] once the pass decided for good (after the second look
/// of a pass that acts): the view's facts, log identities, panes and processes served the
/// judging and the stopping only. The actions hold the paths they act on.
///
/// A view is 384 bytes and its logs' facts 240 more; this is 96 (the evidence is kept as
/// what the record says of it, [`Searched`]). One task of 40,000 agents held its views
/// through the file work and the registry edit: 25 MB.
#[derive(Debug, Clone)]
pub struct DecidedAgent {
    pub id: AgentId,
    /// The status as read from the registry.
    pub registry_status: Arc<str>,
    /// Live processes of its set at the last look (the record's `verified_no_zombies`).
    pub live_processes: usize,
    /// What the search for its processes looked at, for the record's `processes_checked`.
    pub searched: Searched,
    pub warnings: Vec<String>,
    /// The agent's task: its folder handle for the file work.
    pub task: TaskDir,
}

impl DecidedAgent {
    /// What the search for its processes looked at (for the record). Made when a record
    /// asks, from the evidence kept (fixed once observed): 40,000 agents' lists held from
    /// observation to record were 10 MB, and as many again in the records.
    pub fn checked(&self) -> Vec<String> {
        self.searched.checked(&self.id)
    }
}

impl From<AgentView> for DecidedAgent {
    fn from(view: AgentView) -> DecidedAgent {
        DecidedAgent {
            id: view.id,
            registry_status: view.registry_status,
            live_processes: view.facts.live_processes,
            searched: view.evidence.searched(view.env_read),
            warnings: view.warnings,
            task: view.task,
        }
    }
}

impl AgentView {
    /// Lets go of its logs' facts once they are judged for good: a decision that stops
    /// nothing and waits for nothing is not revised by a second look, and nothing after
    /// deciding reads them (40,000 agents' were 10 MB of the pass's peak, at the end of
    /// deciding).
    pub fn let_go_of_judged_logs(&mut self) {
        self.facts.logs = Vec::new();
        self.log_ids = Vec::new();
    }
}

impl TaskView {
    /// The task with its agents as decided (see [`DecidedAgent`]). The kept parts are made
    /// in the views' own vector, each view's facts let go as it is made (a collect in
    /// place), then moved into a vector of their size: a new vector made beside the views
    /// was the pass's peak (40,000 agents: 29 MB of views and their facts, and 6.7 MB).
    pub fn decided(self) -> TaskView<DecidedAgent> {
        let mut kept: Vec<DecidedAgent> = self.agents.into_iter().map(DecidedAgent::from).collect();
        kept.shrink_to_fit();
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
