//! What happened to one agent in a pass: filled while acting, read by the report.

use crate::agent_file::TaskPath;
use crate::reap::events::{Events, PassEvent};

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
    pub prompt_deleted: bool,
    pub recorded: bool,
    pub status_applied: Option<&'static str>,
    /// What the last search for its processes looked at (empty: the observation's).
    pub checked: Vec<String>,
    /// What was done, in order.
    pub done: Events,
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
            prompt_deleted: false,
            recorded: false,
            status_applied: None,
            checked: Vec::new(),
            done: Events::new(),
            errors: Vec::new(),
        }
    }
}

impl Outcome {
    /// Where this pass archived its logs, as they are now: the archive each move or append
    /// made, or the `.zst` a compression made of it (a compression of an earlier pass's
    /// archive is not this pass's). Read from the events, not kept beside them: the agent's
    /// own files in the task's archive folder hold no text (see [`TaskPath`]), others are
    /// relative to the task folder when inside it; the record joins them to the folder.
    pub fn archived(&self) -> Vec<TaskPath> {
        let mut archived: Vec<TaskPath> = Vec::new();
        for event in &self.done {
            match event {
                PassEvent::Archived { to, .. } | PassEvent::Appended { to, .. } => {
                    archived.push(to.shown().clone())
                }
                PassEvent::Compressed { path, .. } => {
                    let plain = path.shown().uncompressed();
                    if let Some(listed) = archived.iter_mut().find(|p| **p == plain) {
                        *listed = path.shown().clone();
                    }
                }
                _ => {}
            }
        }
        archived
    }

    /// How many of its logs this pass archived (or appended to their archives).
    pub fn archives_made(&self) -> usize {
        self.done
            .iter()
            .filter(|e| matches!(e, PassEvent::Archived { .. } | PassEvent::Appended { .. }))
            .count()
    }
}
