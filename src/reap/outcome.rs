//! What happened to one agent in a pass: filled while acting, read by the report.

use crate::agent_file::TaskPath;
use crate::reap::events::PassEvent;

/// What happened to one agent this pass.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub stopped: bool,
    pub session_killed: bool,
    pub escalated: Option<bool>,
    pub survivors: usize,
    pub defunct: Vec<String>,
    /// No defunct process waits on a living parent (see `StopReport::verified_no_zombies`).
    pub reaped: bool,
    /// Where its logs are archived now: the agent's own files in the task's archive folder
    /// (no text held; see [`TaskPath`]), else relative to the task folder when inside it.
    /// The record joins them to the folder.
    pub archived: Vec<TaskPath>,
    pub prompt_deleted: bool,
    pub recorded: bool,
    pub status_applied: Option<&'static str>,
    /// What the last search for its processes looked at (empty: the observation's).
    pub checked: Vec<String>,
    /// What was done, in order.
    pub done: Vec<PassEvent>,
    pub errors: Vec<String>,
}

impl Default for Outcome {
    fn default() -> Self {
        Outcome {
            stopped: false,
            session_killed: false,
            escalated: None,
            survivors: 0,
            defunct: Vec::new(),
            reaped: true,
            archived: Vec::new(),
            prompt_deleted: false,
            recorded: false,
            status_applied: None,
            checked: Vec::new(),
            done: Vec::new(),
            errors: Vec::new(),
        }
    }
}
