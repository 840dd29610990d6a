//! What we write into registries: status transitions, `auto_cleanup_result`, counters. Pure edits on JSON.

use crate::model::{StatusClass, classify_status};
use serde::Serialize;
use serde_json::{Map, Value, json};
use std::borrow::Cow;
use std::collections::HashMap;

mod streamed;
pub use streamed::{GlobalEdit, TaskEdit};

/// The orchestrator's `auto_cleanup_result` keys, plus what only we can tell.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CleanupRecord {
    pub success: bool,
    pub tmux_session_killed: bool,
    pub prompt_file_deleted: bool,
    pub log_files_archived: bool,
    pub verified_no_zombies: bool,
    pub errors: Vec<String>,
    pub archived_files: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub escalated_to_sigkill: Option<bool>,
    /// Defunct processes left behind, as `"<pid> (parent <ppid>)"`: the parent must reap them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub defunct_processes: Vec<String>,
    /// What the search for the agent's processes looked at: `verified_no_zombies` speaks
    /// for these checks only.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub processes_checked: Vec<String>,
}

/// One agent's changes, applied under the registry lock.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentChange {
    /// Shared with the pass's view of the agent (no copy per change).
    pub id: std::sync::Arc<str>,
    /// The status we decided on; if the registry now says otherwise, nothing is applied.
    pub expect_status: std::sync::Arc<str>,
    pub set_status: Option<(&'static str, Option<&'static str>)>,
    pub cleanup: Option<Record>,
    /// Naive local ISO-8601, as the orchestrator writes; one text shared by a pass's changes.
    pub now: std::sync::Arc<str>,
}

/// The record a change merges into the entry's `auto_cleanup_result`.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Given(Box<CleanupRecord>),
    /// Made when its entry is written, by the edit's [`RecordMaker`] (given to
    /// [`TaskEdit::with_records`]), from what the pass kept: 40,000 records made before the
    /// edit and held through it were 35 MB of strings (archive paths, processes checked).
    Made,
}

impl From<CleanupRecord> for Record {
    fn from(record: CleanupRecord) -> Record {
        Record::Given(Box::new(record))
    }
}

/// Makes the record of the change at an index of the edit's changes.
pub type RecordMaker<'m> = dyn Fn(usize) -> CleanupRecord + 'm;

/// The record change `c` merges, if any.
fn record_of<'r>(
    change: &'r AgentChange,
    c: usize,
    maker: Option<&RecordMaker<'_>>,
) -> Option<Cow<'r, CleanupRecord>> {
    match change.cleanup.as_ref()? {
        Record::Given(record) => Some(Cow::Borrowed(&**record)),
        Record::Made => Some(Cow::Owned(maker.expect(
            "a change whose record is made when written comes with the edit's record maker",
        )(c))),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Done,
    /// The entry's status changed since we looked (or the entry went away): left as is.
    StatusMoved,
    Missing,
}

fn set(obj: &mut Map<String, Value>, key: &str, value: Value) {
    // Map::insert keeps the position of an existing key (indexmap), so key order holds.
    obj.insert(key.to_string(), value);
}

/// Merges our record into an existing one: the archive list grows, flags only turn true.
fn merge_record(existing: Option<&Value>, new: &CleanupRecord) -> Value {
    let mut merged = new.clone();
    if let Some(old) = existing {
        let mut files: Vec<String> = old
            .get("archived_files")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        for f in &new.archived_files {
            if !files.contains(f) {
                files.push(f.clone());
            }
        }
        merged.archived_files = files;
        let flag = |key: &str| old.get(key).and_then(Value::as_bool).unwrap_or(false);
        merged.tmux_session_killed |= flag("tmux_session_killed");
        merged.prompt_file_deleted |= flag("prompt_file_deleted");
        merged.log_files_archived |= flag("log_files_archived");
        // A SIGKILL an earlier pass sent stays sent, whatever this pass had to do.
        if flag("escalated_to_sigkill") {
            merged.escalated_to_sigkill = Some(true);
        }
    }
    merged.log_files_archived |= !merged.archived_files.is_empty();
    serde_json::to_value(merged).expect("record serialises")
}

/// Where each id sits in `agents` (the first entry when an id repeats, as a scan would find),
/// built once per edit so that applying many changes stays linear in the registry's size.
pub fn index_by_id(agents: &[Value]) -> HashMap<&str, usize> {
    let mut index = HashMap::with_capacity(agents.len());
    for (i, agent) in agents.iter().enumerate() {
        if let Some(id) = agent.get("id").and_then(Value::as_str) {
            index.entry(id).or_insert(i);
        }
    }
    index
}

/// Applies `change` to `agents[at]` (`None`: no such entry).
fn apply_at(agents: &mut [Value], at: Option<usize>, change: &AgentChange) -> Applied {
    let Some(entry) = at.and_then(|i| agents.get_mut(i)) else {
        return Applied::Missing;
    };
    let Some(obj) = entry.as_object_mut() else {
        return Applied::Missing;
    };
    apply_to_entry(obj, change, record_of(change, 0, None).as_deref())
}

/// Applies `change` to one agent entry.
pub(super) fn apply_to_entry(
    obj: &mut Map<String, Value>,
    change: &AgentChange,
    record: Option<&CleanupRecord>,
) -> Applied {
    if obj.get("status").and_then(Value::as_str) != Some(&*change.expect_status) {
        return Applied::StatusMoved;
    }
    if let Some((status, reason)) = change.set_status {
        set(obj, "status", json!(status));
        set(obj, "last_update", json!(&*change.now));
        if status == "terminated" {
            set(obj, "terminated_at", json!(&*change.now));
        } else if !obj.contains_key("completed_at") {
            set(obj, "completed_at", json!(&*change.now));
        }
        if let Some(reason) = reason {
            set(obj, "termination_reason", json!(reason));
        }
    }
    if let Some(record) = record {
        let merged = merge_record(obj.get("auto_cleanup_result"), record);
        // The same outcome again (say a persisting error) is not news: no rewrite.
        if obj.get("auto_cleanup_result") != Some(&merged) {
            set(obj, "auto_cleanup_result", merged);
            set(obj, "auto_cleanup_timestamp", json!(&*change.now));
        }
    }
    Applied::Done
}

pub(super) fn count_active<'a>(statuses: impl Iterator<Item = Option<&'a str>>) -> i64 {
    statuses
        .filter(|s| s.is_some_and(|s| classify_status(s) == StatusClass::Active))
        .count() as i64
}

/// Applies changes to a task registry and recomputes `active_count` from statuses.
pub fn edit_task_registry(root: &mut Value, changes: &[AgentChange]) -> Vec<Applied> {
    let Some(obj) = root.as_object_mut() else {
        return vec![Applied::Missing; changes.len()];
    };
    let mut applied = Vec::with_capacity(changes.len());
    if let Some(agents) = obj.get_mut("agents").and_then(Value::as_array_mut) {
        // One pass over the agents finds every change's entry: linear, not a scan per change.
        let at: Vec<Option<usize>> = {
            let index = index_by_id(agents);
            changes.iter().map(|c| index.get(&*c.id).copied()).collect()
        };
        for (change, at) in changes.iter().zip(at) {
            applied.push(apply_at(agents, at, change));
        }
    } else {
        applied.resize(changes.len(), Applied::Missing);
    }
    let active = obj.get("agents").and_then(Value::as_array).map(|agents| {
        count_active(
            agents
                .iter()
                .map(|a| a.get("status").and_then(Value::as_str)),
        )
    });
    if let Some(active) = active
        && obj.contains_key("active_count")
    {
        set(obj, "active_count", json!(active));
    }
    applied
}

/// A status transition to mirror into the global registry.
#[derive(Debug, Clone, PartialEq)]
pub struct GlobalChange {
    pub id: String,
    pub status: &'static str,
    pub now: String,
}

/// Mirrors transitions into `agents{id: {...}}` and recomputes `active_agents`.
pub fn edit_global_registry(root: &mut Value, changes: &[GlobalChange]) {
    let Some(obj) = root.as_object_mut() else {
        return;
    };
    let Some(agents) = obj.get_mut("agents").and_then(Value::as_object_mut) else {
        return;
    };
    for change in changes {
        if let Some(entry) = agents.get_mut(&*change.id).and_then(Value::as_object_mut) {
            apply_global(entry, change);
        }
    }
    let active = global_active_agents(agents);
    if obj.contains_key("active_agents") {
        set(obj, "active_agents", json!(active));
    }
}

/// Whether a global entry whose status is `current` follows a transition: only one still
/// active (or without a string status).
pub(super) fn follows_transition(current: Option<&str>) -> bool {
    !current.is_some_and(|s| classify_status(s) != StatusClass::Active)
}

/// Applies one transition to a global entry (when it still follows transitions).
pub(super) fn apply_global(entry: &mut Map<String, Value>, change: &GlobalChange) {
    if !follows_transition(entry.get("status").and_then(Value::as_str)) {
        return;
    }
    set(entry, "status", json!(change.status));
    if entry.contains_key("last_update") {
        set(entry, "last_update", json!(&*change.now));
    }
    let at = if change.status == "terminated" {
        "terminated_at"
    } else {
        "completed_at"
    };
    if !entry.contains_key(at) {
        set(entry, at, json!(&*change.now));
    }
}

/// `active_agents` as the orchestrator keeps it: `deploy_headless_agent` adds an entry
/// without a status and counts it, and only a later move to a terminal status uncounts it.
/// So an entry without a status is active; one with a status counts by that status.
pub fn global_active_agents(agents: &Map<String, Value>) -> i64 {
    agents
        .values()
        .filter(|a| match a.get("status") {
            None | Some(Value::Null) => true,
            Some(s) => s
                .as_str()
                .is_some_and(|s| classify_status(s) == StatusClass::Active),
        })
        .count() as i64
}

/// `active_count` that a registry should hold, from the statuses it lists.
pub fn expected_active_count(root: &Value) -> Option<i64> {
    root.get("agents").and_then(Value::as_array).map(|agents| {
        count_active(
            agents
                .iter()
                .map(|a| a.get("status").and_then(Value::as_str)),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Value {
        serde_json::from_str(
            r#"{"task_id":"TASK-1","agents":[
              {"id":"a","status":"working","zz_unknown":{"k":[1,2.50]},"last_update":"2025-10-29T23:02:51"},
              {"id":"b","status":"completed","completed_at":"2025-10-29T23:00:00"}
            ],"total_spawned":2,"active_count":7,"completed_count":1}"#,
        )
        .unwrap()
    }

    /// The record `change` gives, to change in a test.
    fn given(change: &mut AgentChange) -> &mut CleanupRecord {
        match change.cleanup.as_mut() {
            Some(Record::Given(record)) => record,
            other => panic!("no given record: {other:?}"),
        }
    }

    fn zombie_change() -> AgentChange {
        AgentChange {
            id: "a".into(),
            expect_status: "working".into(),
            set_status: Some(("terminated", Some("session_not_found"))),
            cleanup: Some(
                CleanupRecord {
                    success: true,
                    archived_files: vec!["/w/archive/a_progress.jsonl".into()],
                    ..Default::default()
                }
                .into(),
            ),
            now: "2026-11-27T10:00:00.000000".into(),
        }
    }

    #[test]
    fn zombie_transition_keeps_other_fields_and_order() {
        let mut root = registry();
        let applied = edit_task_registry(&mut root, &[zombie_change()]);
        assert_eq!(applied, vec![Applied::Done]);
        let a = &root["agents"][0];
        assert_eq!(a["status"], "terminated");
        assert_eq!(a["termination_reason"], "session_not_found");
        assert_eq!(a["terminated_at"], "2026-11-27T10:00:00.000000");
        let unknown: Value = serde_json::from_str(r#"{"k":[1,2.50]}"#).unwrap();
        assert_eq!(a["zz_unknown"], unknown);
        let keys: Vec<_> = a.as_object().unwrap().keys().cloned().collect();
        assert_eq!(&keys[..4], ["id", "status", "zz_unknown", "last_update"]);
        assert_eq!(a["auto_cleanup_result"]["log_files_archived"], true);
        assert_eq!(root["active_count"], 0);
        assert_eq!(root["completed_count"], 1);
        let top: Vec<_> = root.as_object().unwrap().keys().cloned().collect();
        assert_eq!(top.last().unwrap(), "completed_count");
    }

    #[test]
    fn a_status_that_moved_is_not_overwritten() {
        let mut root = registry();
        let mut change = zombie_change();
        change.expect_status = "running".into();
        assert_eq!(
            edit_task_registry(&mut root, &[change]),
            vec![Applied::StatusMoved]
        );
        assert_eq!(root["agents"][0]["status"], "working");
    }

    #[test]
    fn the_same_record_twice_changes_nothing() {
        let mut root = registry();
        edit_task_registry(&mut root, &[zombie_change()]);
        let once = root.clone();
        let mut again = zombie_change();
        again.expect_status = "terminated".into();
        again.set_status = None;
        again.now = "2026-11-27T11:00:00.000000".into();
        edit_task_registry(&mut root, &[again]);
        assert_eq!(root, once);
    }

    #[test]
    fn records_merge_archive_lists() {
        let mut root = registry();
        edit_task_registry(&mut root, &[zombie_change()]);
        let mut later = zombie_change();
        later.expect_status = "terminated".into();
        later.set_status = None;
        given(&mut later).archived_files = vec!["/w/archive/late.jsonl".into()];
        edit_task_registry(&mut root, &[later]);
        assert_eq!(
            root["agents"][0]["auto_cleanup_result"]["archived_files"],
            json!(["/w/archive/a_progress.jsonl", "/w/archive/late.jsonl"])
        );
    }

    /// Marks global entry `a` terminated, the one change both global tests make.
    fn terminate_a(root: &mut Value) {
        edit_global_registry(
            root,
            &[GlobalChange {
                id: "a".into(),
                status: "terminated",
                now: "2026-11-27T10:00:00.000000".into(),
            }],
        );
        assert_eq!(root["agents"]["a"]["status"], "terminated");
    }

    #[test]
    fn global_registry_follows_and_recounts() {
        let mut root: Value = serde_json::from_str(
            r#"{"active_agents":1,"agents":{"a":{"task_id":"T","status":"working"},"b":{"task_id":"T","status":"completed"}}}"#,
        )
        .unwrap();
        terminate_a(&mut root);
        assert_eq!(root["active_agents"], 0);
    }

    #[test]
    fn a_later_pass_never_takes_back_what_an_earlier_one_did() {
        let mut root = registry();
        let mut first = zombie_change();
        let rec = given(&mut first);
        rec.tmux_session_killed = true;
        rec.prompt_file_deleted = true;
        rec.escalated_to_sigkill = Some(true);
        rec.errors = vec!["first attempt failed".into()];
        edit_task_registry(&mut root, &[first]);
        // The second pass found the session gone and nothing left to stop or delete.
        let mut later = zombie_change();
        later.expect_status = "terminated".into();
        later.set_status = None;
        later.cleanup = Some(
            CleanupRecord {
                success: true,
                verified_no_zombies: true,
                escalated_to_sigkill: Some(false),
                archived_files: vec!["/w/archive/a_stream.jsonl".into()],
                ..Default::default()
            }
            .into(),
        );
        edit_task_registry(&mut root, &[later]);
        let r = &root["agents"][0]["auto_cleanup_result"];
        assert_eq!(r["tmux_session_killed"], true);
        assert_eq!(r["prompt_file_deleted"], true);
        assert_eq!(r["escalated_to_sigkill"], true);
        assert_eq!(r["log_files_archived"], true);
        assert_eq!(r["errors"], json!([]), "errors are the latest attempt's");
        assert_eq!(r["success"], true);
        assert_eq!(
            r["archived_files"],
            json!(["/w/archive/a_progress.jsonl", "/w/archive/a_stream.jsonl"])
        );
    }

    #[test]
    fn global_entries_without_a_status_are_active_as_the_orchestrator_counts_them() {
        // deploy_headless_agent adds entries with no status and counts them active.
        let mut root: Value = serde_json::from_str(
            r#"{"active_agents":0,"agents":{
                "a":{"task_id":"T","type":"x"},
                "b":{"task_id":"T","status":"working"},
                "c":{"task_id":"T","status":"completed"},
                "d":{"task_id":"T","status":null}}}"#,
        )
        .unwrap();
        edit_global_registry(&mut root, &[]);
        assert_eq!(root["active_agents"], 3);
        terminate_a(&mut root);
        assert_eq!(root["active_agents"], 2);
    }

    #[test]
    fn forty_thousand_agents_edit_in_one_linear_pass() {
        let n = 40_000;
        let agents: Vec<Value> = (0..n)
            .map(|i| json!({"id": format!("a-{i}"), "status": "completed", "progress": 100}))
            .collect();
        let mut root = json!({"agents": agents, "active_count": 0});
        let changes: Vec<AgentChange> = (0..n)
            .map(|i| AgentChange {
                id: format!("a-{i}").into(),
                expect_status: "completed".into(),
                set_status: None,
                cleanup: Some(
                    CleanupRecord {
                        success: true,
                        ..Default::default()
                    }
                    .into(),
                ),
                now: "2026-11-27T10:00:00.000000".into(),
            })
            .collect();
        let start = std::time::Instant::now();
        let applied = edit_task_registry(&mut root, &changes);
        let took = start.elapsed();
        println!("edit of {n} agents: {took:?} (goal: well under 1 s in release)");
        assert!(applied.iter().all(|a| *a == Applied::Done));
        assert_eq!(
            root["agents"][n - 1]["auto_cleanup_result"]["success"],
            true
        );
    }

    #[test]
    fn a_repeated_id_is_edited_at_its_first_entry_as_before() {
        let mut root: Value = serde_json::from_str(
            r#"{"agents":[{"id":"a","status":"working"},{"id":"a","status":"working"}]}"#,
        )
        .unwrap();
        edit_task_registry(&mut root, &[zombie_change()]);
        assert_eq!(root["agents"][0]["status"], "terminated");
        assert_eq!(root["agents"][1]["status"], "working");
    }
}
