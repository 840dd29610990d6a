//! Tasks kept in the orchestrator's SQLite state DB: which tasks it owns, the status its generation uses, and writing their transitions (DB, then the task's JSON registry where it lists the agent).

use crate::model::{StatusClass, classify_status, format_timestamp};
use crate::registry::edit::{AgentChange, Applied, edit_task_registry};
use crate::registry::sqlite::{
    DbApplied, DbChange, StateDb, append_progress_line_in, progress_line, state_db_path,
    terminal_message,
};
use crate::registry::{RegistryError, UpdateOptions, update_registry};
use crate::workspace::TaskDir;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
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
    // Without a readable base there are no folders to reap (discovery reports it).
    let Ok(base_dir) = crate::fs::Dir::open_base(base) else {
        return Vec::new();
    };
    rows.iter()
        .filter(|(id, agents)| {
            !agents.is_empty()
                && id.starts_with("TASK-")
                && crate::model::AgentId::parse(id).is_ok()
        })
        .filter(|(id, _)| {
            base_dir
                .metadata(id.as_str())
                .is_ok_and(|e| e.is_some_and(|e| e.kind == crate::fs::EntryKind::Dir))
        })
        .map(|(id, _)| TaskDir::new(base, id))
        .collect()
}

/// One agent's transition as written to the DB.
#[derive(Debug, Clone, PartialEq)]
pub struct DbTransition {
    pub id: String,
    pub status: &'static str,
    pub reason: Option<&'static str>,
    /// The row's progress after the write (the value in the terminal progress line).
    pub progress: Option<i64>,
}

/// The JSON-registry side of DB transitions: for each transition, a change for the entry
/// with that id if it is still active there (whatever active status the JSON cache holds:
/// it often lags the DB's). Entries already terminal, or absent, are left alone.
pub fn mirror_changes(root: &Value, transitions: &[DbTransition], now: &str) -> Vec<AgentChange> {
    let Some(agents) = root.get("agents").and_then(Value::as_array) else {
        return Vec::new();
    };
    transitions
        .iter()
        .filter_map(|t| {
            let current = agents
                .iter()
                .find(|a| a.get("id").and_then(Value::as_str) == Some(t.id.as_str()))?
                .get("status")?
                .as_str()?;
            (classify_status(current) == StatusClass::Active).then(|| AgentChange {
                id: t.id.as_str().into(),
                expect_status: current.into(),
                set_status: Some((t.status, t.reason)),
                cleanup: None,
                now: now.into(),
            })
        })
        .collect()
}

/// Applies [`mirror_changes`] to a task registry, and gives each transitioned entry the
/// DB's `progress` too: once the progress file is archived, `reconcile_task_workspace`
/// takes progress from this file, and the JSON cache's value is whatever the deploy wrote
/// (0), not what the agent last reported. A registry listing none of ours is left as is.
pub fn mirror_edit(root: &mut Value, transitions: &[DbTransition], now: &str) {
    let changes = mirror_changes(root, transitions, now);
    if changes.is_empty() {
        return;
    }
    let applied = edit_task_registry(root, &changes);
    let Some(agents) = root.get_mut("agents").and_then(Value::as_array_mut) else {
        return;
    };
    for (change, applied) in changes.iter().zip(applied) {
        let progress = transitions
            .iter()
            .find(|t| *t.id == *change.id)
            .and_then(|t| t.progress);
        if let (Applied::Done, Some(progress)) = (applied, progress)
            && let Some(entry) = agents
                .iter_mut()
                .find(|a| a.get("id").and_then(Value::as_str) == Some(&*change.id))
                .and_then(Value::as_object_mut)
        {
            entry.insert("progress".into(), progress.into());
        }
    }
}

/// Gives the task's `AGENT_REGISTRY.json` at `path` (when there is one, as on installs
/// upgraded from the JSON generation) the transitions being written to the DB. The
/// orchestrator's `reconcile_task_workspace` rewrites the DB status from that file plus the
/// last progress line; once the progress file is archived only the file is left, so without
/// this it would set the agent back to `working`.
fn mirror_to_json(
    path: &Path,
    transitions: &[DbTransition],
    opts: &UpdateOptions,
    now: &str,
) -> Result<(), String> {
    // The registry's own opener refuses symlinks, FIFOs and devices.
    match update_registry(path, opts, |root| mirror_edit(root, transitions, now)) {
        Ok(_) => Ok(()),
        // No JSON registry (a DB-only task): nothing can undo the DB's status.
        Err(RegistryError::Open { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(())
        }
        Err(e) => Err(format!("AGENT_REGISTRY.json not given the transition: {e}")),
    }
}

/// Where a change's other stores are: the agent's progress log (in the task folder opened
/// at discovery), the task's JSON registry.
struct SideStores {
    task_dir: TaskDir,
    progress_name: String,
    registry: PathBuf,
    task: usize,
}

/// Appends the line to `progress/<name>` beneath the task folder's pinned handle.
fn append_in_task(side: &SideStores, line: &str) -> Result<(), String> {
    let dir = side
        .task_dir
        .handle()
        .and_then(|task| task.open_dir("progress"))
        .map_err(|e| e.to_string())?;
    append_progress_line_in(&dir, std::ffi::OsStr::new(&side.progress_name), line)
        .map_err(|e| e.to_string())
}

/// While the DB transaction holds the write lock: the terminal progress line of each
/// written transition, then each task's JSON registry. Returns errors by change index.
fn write_side_stores(
    changes: &[DbChange],
    results: &[DbApplied],
    sides: &[SideStores],
    opts: &UpdateOptions,
    stamp: &str,
) -> Vec<(usize, String)> {
    let mut errors = Vec::new();
    // Per task: (change index, transition), for its JSON registry.
    let mut mirror: BTreeMap<usize, Vec<(usize, DbTransition)>> = BTreeMap::new();
    for (i, ((change, result), side)) in changes.iter().zip(results).zip(sides).enumerate() {
        let (Applied::Done, Some((status, reason))) = (result.applied, change.set_status) else {
            continue;
        };
        if let Some(progress) = result.progress {
            let line = progress_line(stamp, &change.agent_id, status, &change.message, progress);
            if let Err(e) = append_in_task(side, &line) {
                errors.push((i, e));
            }
        }
        mirror.entry(side.task).or_default().push((
            i,
            DbTransition {
                id: change.agent_id.clone(),
                status,
                reason,
                progress: result.progress,
            },
        ));
    }
    // The orchestrator's writers wait for the DB lock we hold (their busy timeout is 10 s):
    // a JSON registry someone else holds gets a short wait here, not the full one.
    let opts = UpdateOptions {
        lock_timeout: opts.lock_timeout.min(MIRROR_LOCK_WAIT),
        ..opts.clone()
    };
    for agents in mirror.values() {
        let transitions: Vec<DbTransition> = agents.iter().map(|(_, t)| t.clone()).collect();
        let registry = &sides[agents[0].0].registry;
        if let Err(e) = mirror_to_json(registry, &transitions, &opts, stamp) {
            errors.extend(agents.iter().map(|(i, _)| (*i, e.clone())));
        }
    }
    errors
}

/// How long the JSON mirror waits for a registry lock while the DB write lock is held.
const MIRROR_LOCK_WAIT: Duration = Duration::from_secs(1);

/// One agent's status change for the state DB, as the pass asks for it.
#[derive(Debug, Clone)]
pub struct StatusWrite {
    /// The agent's task folder: its progress log and JSON registry follow the DB.
    pub task: TaskDir,
    pub agent_id: String,
    /// Compare-and-set: the row's status as read at the start of the pass.
    pub expect_status: String,
    pub status: &'static str,
    pub reason: Option<&'static str>,
}

/// What became of one [`StatusWrite`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusWritten {
    /// Written to the DB; `side_errors`: its progress line or JSON registry did not follow.
    Done { side_errors: Vec<String> },
    /// The orchestrator changed the status meanwhile: left as it set it.
    StatusMoved,
    /// The agent's row vanished from the DB meanwhile.
    Missing,
}

/// Writes this round's status changes of a base's DB-backed tasks in one
/// `BEGIN IMMEDIATE` transaction; before it commits, appends the terminal progress line
/// the orchestrator's health checks read and gives the task's JSON registry the same
/// transitions where it lists the agent, so no orchestrator writer acts on one store
/// disagreeing with another (`reconcile_task_workspace` reads the file and the line, then
/// writes the DB). Runs before the logs are archived, so that line is archived with them.
/// Returns one result per write, in order. A DB held by another writer past the timeout
/// is one error for the whole base (not one per agent); the caller skips these tasks this
/// round.
pub fn apply_transitions(
    db: &Mutex<StateDb>,
    writes: &[StatusWrite],
    opts: &UpdateOptions,
    now: SystemTime,
) -> Result<Vec<StatusWritten>, String> {
    if writes.is_empty() {
        return Ok(Vec::new());
    }
    let stamp = format_timestamp(now);
    let changes: Vec<DbChange> = writes
        .iter()
        .map(|w| DbChange {
            task_id: w.task.task_id.clone(),
            agent_id: w.agent_id.clone(),
            expect_status: w.expect_status.clone(),
            set_status: Some((w.status, w.reason)),
            message: terminal_message(w.status, w.reason),
        })
        .collect();
    // Writes of one task share its JSON registry: numbered by folder, first seen first.
    let mut task_numbers: HashMap<&Path, usize> = HashMap::new();
    let sides: Vec<SideStores> = writes
        .iter()
        .map(|w| {
            let next = task_numbers.len();
            SideStores {
                task_dir: w.task.clone(),
                progress_name: format!("{}_progress.jsonl", w.agent_id),
                registry: w.task.registry(),
                task: *task_numbers.entry(w.task.dir.as_path()).or_insert(next),
            }
        })
        .collect();
    let mut side_errors = Vec::new();
    let applied = db
        .lock()
        .expect("state db lock")
        .apply_detailed_then(&changes, &stamp, |results| {
            side_errors = write_side_stores(&changes, results, &sides, opts, &stamp);
        })
        .map_err(|e| e.to_string())?;
    Ok(applied
        .into_iter()
        .enumerate()
        .map(|(i, result)| match result.applied {
            Applied::Done => StatusWritten::Done {
                side_errors: side_errors
                    .iter()
                    .filter(|(k, _)| *k == i)
                    .map(|(_, e)| e.clone())
                    .collect(),
            },
            Applied::StatusMoved => StatusWritten::StatusMoved,
            Applied::Missing => StatusWritten::Missing,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_entries_still_active_in_the_json_cache_follow_the_db() {
        let root = serde_json::json!({"agents": [
            {"id": "a-1", "status": "running"},
            {"id": "b-1", "status": "completed"},
            {"id": "c-1"},
        ]});
        let t = |id: &str| DbTransition {
            id: id.to_string(),
            status: "failed",
            reason: Some("session_not_found"),
            progress: Some(30),
        };
        let changes = mirror_changes(&root, &[t("a-1"), t("b-1"), t("c-1"), t("d-1")], "now");
        assert_eq!(changes.len(), 1);
        // Compare-and-set on what the JSON says (it lags the DB's `working`).
        assert_eq!(&*changes[0].id, "a-1");
        assert_eq!(&*changes[0].expect_status, "running");
        assert_eq!(
            changes[0].set_status,
            Some(("failed", Some("session_not_found")))
        );
        assert!(changes[0].cleanup.is_none());
        assert!(mirror_changes(&serde_json::json!([]), &[t("a-1")], "now").is_empty());

        // The edit: status, times, reason and the DB's progress; counters recomputed.
        let mut root = serde_json::json!({"agents": [
            {"id": "a-1", "status": "running", "progress": 0},
            {"id": "b-1", "status": "completed", "progress": 100},
        ], "active_count": 1});
        mirror_edit(&mut root, &[t("a-1"), t("b-1")], "now");
        let a = &root["agents"][0];
        assert_eq!(
            (&a["status"], &a["progress"], &a["termination_reason"]),
            (
                &serde_json::json!("failed"),
                &serde_json::json!(30),
                &serde_json::json!("session_not_found")
            )
        );
        assert_eq!(a["completed_at"], "now");
        assert_eq!(
            root["agents"][1]["progress"], 100,
            "terminal entries untouched"
        );
        assert_eq!(root["active_count"], 0);
        // Nothing of ours listed: not even the counter is touched.
        let mut other = serde_json::json!({"agents": [], "active_count": 7});
        mirror_edit(&mut other, &[t("a-1")], "now");
        assert_eq!(other["active_count"], 7);
    }
}
