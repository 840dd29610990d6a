//! The steady state: task registries a full pass found wholly cleaned are not read again
//! while their file (identity, size, mtime) stays the same and no live tmux session
//! carries one of their agents' names.

use super::read::FileKey;
use crate::decide::{AgentClass, Decision};
use crate::fs::EntryKind;
use crate::model::AgentId;
use crate::model::Backend;
use crate::observe::TaskView;
use crate::workspace::{TASK_REGISTRY, TaskDir};
use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

/// A task whose agents were all cleaned, as last read.
#[derive(Debug, Clone)]
pub struct CleanTask {
    pub key: FileKey,
    pub task_id: String,
    /// Its agents' ids, for the pass-wide ambiguity check (an id listed in two tasks).
    pub ids: Vec<AgentId>,
    /// Hashes of its agents' session names, sorted (a live one means: look again).
    pub sessions: Vec<u64>,
}

pub fn session_hash(name: &str) -> u64 {
    let mut h = DefaultHasher::new();
    name.hash(&mut h);
    h.finish()
}

impl CleanTask {
    /// Still clean: none of its sessions runs and the registry is the one read then.
    /// `live`: `session_hash` of every live `agent_*` session. `trusted`: file events keep
    /// the cache current (a task with an event since is looked at by its own pass), so the
    /// registry is not even looked at; else one `fstatat` beneath the base handle.
    pub fn still_holds(&self, task: &TaskDir, live: &[u64], trusted: bool) -> bool {
        !live.iter().any(|h| self.sessions.binary_search(h).is_ok())
            && (trusted || registry_key_beneath(task) == Some(self.key))
    }
}

/// The registry's key by one `fstatat` through the base handle discovery opened. The
/// folder on the way is not checked for a symlink: a match only ever means "skip", and a
/// swapped folder holding this very file (same device, inode, size, mtime) is as clean.
fn registry_key_beneath(task: &TaskDir) -> Option<FileKey> {
    let base = task.base_handle().ok()?;
    let entry = base.probe_metadata(Path::new(&task.task_id).join(TASK_REGISTRY))?;
    (entry.kind == EntryKind::File).then_some(FileKey {
        dev: entry.id.dev,
        ino: entry.id.ino,
        size: entry.id.size,
        mtime: entry.id.mtime,
    })
}

/// Ambiguous ids (see `procs::ambiguity`) over the tasks read this pass and the clean ones
/// skipped, so skipping a task never hides that an id is listed twice.
pub fn ambiguous(views: &[TaskView], clean: &[&CleanTask]) -> BTreeMap<AgentId, String> {
    let read = views.iter().flat_map(|v| {
        let task = v.task.task_id.as_str();
        v.agents
            .iter()
            .map(|a| &a.id)
            .chain(v.quiet.iter().map(|q| &q.id))
            .chain(v.duplicates.iter().flat_map(|d| [d, d]))
            .map(move |id| (task, id))
    });
    let skipped = clean
        .iter()
        .flat_map(|c| c.ids.iter().map(move |id| (c.task_id.as_str(), id)));
    crate::procs::ambiguity::ambiguous_ids(read.chain(skipped))
}

/// The tasks of this pass that are wholly cleaned and were not written: cached until their
/// registry changes. `keys`: what was read of each JSON registry; `written`: per view.
pub fn newly_clean(
    views: &[TaskView],
    decisions: &[Vec<Decision>],
    written: &[bool],
    keys: &HashMap<PathBuf, FileKey>,
    ambiguous: &BTreeMap<AgentId, String>,
) -> Vec<(PathBuf, CleanTask)> {
    let mut out = Vec::new();
    for (t, v) in views.iter().enumerate() {
        let clean = v.backend == Backend::Json
            && v.error.is_none()
            && v.warnings.is_empty()
            && v.duplicates.is_empty()
            && !written.get(t).copied().unwrap_or(false)
            && v.agents.iter().zip(&decisions[t]).all(|(a, d)| {
                d.class == AgentClass::Cleaned
                    && d.actions.is_empty()
                    && d.waiting.is_none()
                    && a.warnings.is_empty()
            })
            && v.quiet.iter().all(|q| !ambiguous.contains_key(&q.id));
        let Some(key) = keys.get(&v.task.dir).filter(|_| clean) else {
            continue;
        };
        let mut sessions: Vec<u64> = v
            .agents
            .iter()
            .map(|a| session_hash(&a.session_name()))
            .chain(v.quiet.iter().map(|q| session_hash(&q.session_name())))
            .collect();
        sessions.sort_unstable();
        sessions.dedup();
        out.push((
            v.task.dir.clone(),
            CleanTask {
                key: *key,
                task_id: v.task.task_id.clone(),
                ids: v
                    .agents
                    .iter()
                    .map(|a| a.id.clone())
                    .chain(v.quiet.iter().map(|q| q.id.clone()))
                    .collect(),
                sessions,
            },
        ));
    }
    out
}
