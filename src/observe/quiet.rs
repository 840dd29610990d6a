//! Cleaned agents with nothing present: what a pass keeps of them (id and status, no view).

use super::entries::LeanAgent;
use crate::model::{AgentId, TERMINAL_STATUSES};

/// An agent whose entry shows it terminal with its cleanup recorded, whose session is
/// gone and remembered nowhere, with no file of its present (logs, prompt) and no warning:
/// it is cleaned and nothing is to be done (what `decide` says of it, without the view).
#[derive(Debug, Clone)]
pub struct QuietAgent {
    pub id: AgentId,
    /// How many of the task's full views (`agents`) precede it in registry order.
    at: u32,
    /// Its status: which of `TERMINAL_STATUSES` (32 bytes an agent, for 600,000 of them).
    status: u8,
}

impl QuietAgent {
    pub fn session_name(&self) -> String {
        self.id.session_name()
    }

    /// How many of the task's full views precede it in registry order.
    pub fn at(&self) -> usize {
        self.at as usize
    }

    pub fn status(&self) -> &'static str {
        TERMINAL_STATUSES[usize::from(self.status)]
    }
}

/// Which of `TERMINAL_STATUSES` an entry shows, when it shows the agent terminal with its
/// cleanup recorded.
pub(super) fn cleaned_status(entry: &LeanAgent, db_backed: bool) -> Option<u8> {
    let status = entry.status.as_ref()?.as_str();
    let known = TERMINAL_STATUSES.iter().position(|s| *s == status)?;
    let recorded = db_backed || entry.cleanup_success.unwrap_or(false);
    recorded.then_some(known as u8)
}

impl QuietAgent {
    /// `status`: from [`cleaned_status`]; `at`: full views before it.
    pub(super) fn new(id: AgentId, at: usize, status: u8) -> QuietAgent {
        QuietAgent {
            id,
            // A registry is far smaller than 4 billion entries (`max_registry_size`).
            at: u32::try_from(at).unwrap_or(u32::MAX),
            status,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::model::{AgentId, Backend};
    use crate::observe::task_view;
    use crate::workspace::discover_tasks;
    use serde_json::json;
    use std::fs;

    const TASK: &str = "TASK-20261127-120000-quiet001";

    fn cleaned(id: &str) -> serde_json::Value {
        json!({"id": id, "status": "completed", "auto_cleanup_result": {"success": true}})
    }

    /// Only a cleaned agent with nothing present and no session is kept as its id; a late
    /// log, a leftover prompt, a live session or a missing record each bring the full view.
    #[test]
    fn a_cleaned_agent_without_files_gets_no_view_and_one_with_a_file_does() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(TASK);
        fs::create_dir_all(dir.join("logs")).unwrap();
        fs::write(dir.join("AGENT_REGISTRY.json"), "{}").unwrap();
        fs::write(dir.join("logs/late-000001-00000a_stream.jsonl"), "{}\n").unwrap();
        fs::write(dir.join("agent_prompt_left-000002-00000b.txt"), "p").unwrap();
        // Many agents, so the folders are listed (the path a large registry takes).
        let quiet_ids: Vec<String> = (0..10).map(|n| format!("done-00000{n}-00000c")).collect();
        let mut agents = vec![
            cleaned("late-000001-00000a"),
            cleaned("left-000002-00000b"),
            cleaned("live-000003-00000d"),
            json!({"id": "norec-000004-00000e", "status": "completed"}),
        ];
        agents.extend(quiet_ids.iter().map(|id| cleaned(id)));
        let task = discover_tasks(tmp.path()).unwrap().remove(0);
        let unseen = |id: &AgentId| id.as_str() != "live-000003-00000d";
        let (view, pending) = task_view(
            &task,
            Backend::Json,
            Ok(crate::observe::entries::from_value(
                &json!({ "agents": agents }),
            )),
            &unseen,
        );

        let full: Vec<String> = pending.iter().map(|p| p.id.to_string()).collect();
        assert_eq!(
            full,
            [
                "late-000001-00000a",
                "left-000002-00000b",
                "live-000003-00000d",
                "norec-000004-00000e"
            ]
        );
        let quiet: Vec<(usize, String)> = view
            .quiet
            .iter()
            .map(|q| (q.at(), q.id.to_string()))
            .collect();
        let want: Vec<(usize, String)> = quiet_ids.iter().map(|id| (4, id.clone())).collect();
        assert_eq!(quiet, want);
        assert!(view.quiet.iter().all(|q| q.status() == "completed"));
    }
}
