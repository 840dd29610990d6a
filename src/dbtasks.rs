//! Tasks kept in the orchestrator's SQLite state DB: which tasks it owns, and writing their transitions.

use crate::act::Outcome;
use crate::decide::{Action, Decision};
use crate::model::format_timestamp;
use crate::observe::TaskView;
use crate::record::Applied;
use crate::registry::sqlite::{
    DbChange, StateDb, append_progress_line, progress_line, state_db_path, terminal_message,
};
use crate::workspace::TaskDir;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// A base's state DB for one pass, with the agent rows read at its start.
pub struct BaseDb {
    pub db: Mutex<StateDb>,
    pub rows: BTreeMap<String, Vec<Value>>,
}

/// Opens `<base>/registry/state.sqlite3` if there is one. An unusable DB (corrupt, a
/// symlink, locked past the timeout while reading) is reported and the base falls back to
/// its JSON registries; it is never rewritten.
pub fn open_base_db(base: &Path, busy_timeout: Duration) -> Result<Option<BaseDb>, String> {
    let path = state_db_path(base);
    let Some(db) = StateDb::open_with_timeout(&path, busy_timeout).map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    let rows = db.agents_by_task().map_err(|e| e.to_string())?;
    Ok(Some(BaseDb {
        db: Mutex::new(db),
        rows,
    }))
}

/// Task folders the DB has agent rows for: `<base>/<task id>`, a real folder (not a link).
pub fn db_task_dirs(base: &Path, rows: &BTreeMap<String, Vec<Value>>) -> Vec<TaskDir> {
    rows.iter()
        .filter(|(id, agents)| {
            !agents.is_empty()
                && id.starts_with("TASK-")
                && crate::model::AgentId::parse(id).is_ok()
        })
        .filter(|(id, _)| {
            std::fs::symlink_metadata(base.join(id)).is_ok_and(|m| m.file_type().is_dir())
        })
        .map(|(id, _)| TaskDir::new(base, id))
        .collect()
}

/// One DB-backed task's share of a round: its view, decisions and outcomes.
pub type TaskWork<'a> = (&'a TaskView, &'a [Decision], &'a mut [Outcome]);

/// Writes this round's status transitions of every DB-backed task of a base in one
/// `BEGIN IMMEDIATE` transaction, then appends the terminal progress line the
/// orchestrator's health checks read. Runs before the logs are archived, so that line is
/// archived with them. A DB held by another writer past the timeout is one error for the
/// whole base (not one per agent); the caller skips these tasks this round.
pub fn apply_transitions(
    db: &Mutex<StateDb>,
    tasks: &mut [TaskWork<'_>],
    now: SystemTime,
) -> Result<(), String> {
    let stamp = format_timestamp(now);
    let mut changes = Vec::new();
    let mut which = Vec::new();
    for (t, (view, decisions, _)) in tasks.iter().enumerate() {
        for (a, (agent, decision)) in view.agents.iter().zip(decisions.iter()).enumerate() {
            let Some((status, reason)) = decision.actions.iter().find_map(|x| match x {
                Action::SetStatus {
                    status,
                    termination_reason,
                } => Some((*status, *termination_reason)),
                _ => None,
            }) else {
                continue;
            };
            changes.push(DbChange {
                task_id: view.task.task_id.clone(),
                agent_id: agent.id.to_string(),
                expect_status: agent.registry_status.clone(),
                set_status: Some((status, reason)),
                message: terminal_message(status, reason),
            });
            which.push((t, a));
        }
    }
    if changes.is_empty() {
        return Ok(());
    }
    let applied = db
        .lock()
        .expect("state db lock")
        .apply_detailed(&changes, &stamp)
        .map_err(|e| e.to_string())?;
    for ((&(t, a), change), result) in which.iter().zip(&changes).zip(applied) {
        let (view, _, outcomes) = &mut tasks[t];
        let out = &mut outcomes[a];
        match result.applied {
            Applied::Done => {
                let (status, reason) = change.set_status.expect("set above");
                out.status_applied = Some(status.to_string());
                out.done.push(match reason {
                    Some(r) => format!("marked {status} ({r})"),
                    None => format!("marked {status}"),
                });
                if let Some(progress) = result.progress {
                    let path = view
                        .task
                        .dir
                        .join("progress")
                        .join(format!("{}_progress.jsonl", view.agents[a].id));
                    let line =
                        progress_line(&stamp, &change.agent_id, status, &change.message, progress);
                    if let Err(e) = append_progress_line(&path, &line) {
                        out.errors.push(e.to_string());
                    }
                }
            }
            Applied::StatusMoved => out
                .done
                .push("state DB status changed meanwhile: left as the orchestrator set it".into()),
            Applied::Missing => out
                .errors
                .push("agent row vanished from the state DB meanwhile".into()),
        }
    }
    Ok(())
}
