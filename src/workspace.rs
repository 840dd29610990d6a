//! Workspace layout: finding task folders, and joining untrusted names into paths that stay inside.

use crate::model::AgentId;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

pub const TASK_REGISTRY: &str = "AGENT_REGISTRY.json";
pub const GLOBAL_REGISTRY: &str = "registry/GLOBAL_REGISTRY.json";

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("{path}: cannot list workspace base: {source}")]
    ListBase {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{raw}: not inside the task folder {task}; ignored")]
    OutsideTask { raw: String, task: PathBuf },
    #[error("{path}: passes through a symlink; ignored")]
    ThroughSymlink { path: PathBuf },
}

/// One task folder: where its registry lies (never its `workspace` field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDir {
    pub base: PathBuf,
    pub dir: PathBuf,
    pub task_id: String,
}

impl TaskDir {
    pub fn registry(&self) -> PathBuf {
        self.dir.join(TASK_REGISTRY)
    }
}

/// What a task's folder is called: `TASK-` followed by a safe name.
fn is_task_dir_name(name: &str) -> bool {
    name.starts_with("TASK-") && AgentId::parse(name).is_ok()
}

/// Task folders under `base`, sorted: real directories (not symlinks) named `TASK-*`
/// that hold a regular-file (or, left for the reader to refuse, any) `AGENT_REGISTRY.json`.
pub fn discover_tasks(base: &Path) -> Result<Vec<TaskDir>, WorkspaceError> {
    let entries = fs::read_dir(base).map_err(|source| WorkspaceError::ListBase {
        path: base.to_path_buf(),
        source,
    })?;
    let mut tasks = Vec::new();
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if !is_task_dir_name(&name) {
            continue;
        }
        // file_type() does not follow symlinks: a symlinked task folder is not ours.
        if !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        let dir = entry.path();
        if fs::symlink_metadata(dir.join(TASK_REGISTRY)).is_ok() {
            tasks.push(TaskDir {
                base: base.to_path_buf(),
                dir,
                task_id: name,
            });
        }
    }
    tasks.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    Ok(tasks)
}

pub fn global_registry(base: &Path) -> PathBuf {
    base.join(GLOBAL_REGISTRY)
}

/// Which of an agent's files a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogKind {
    Stream,
    Deploy,
    Progress,
    Findings,
}

/// The files the orchestrator writes for one agent, at their conventional places.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentFiles {
    pub prompt: PathBuf,
    pub logs: Vec<(LogKind, PathBuf)>,
}

impl AgentFiles {
    pub fn stream_log(&self) -> Option<&Path> {
        self.logs
            .iter()
            .find(|(k, _)| *k == LogKind::Stream)
            .map(|(_, p)| p.as_path())
    }
}

pub fn agent_files(task: &TaskDir, id: &AgentId) -> AgentFiles {
    let d = &task.dir;
    AgentFiles {
        prompt: d.join(format!("agent_prompt_{id}.txt")),
        logs: vec![
            (
                LogKind::Stream,
                d.join("logs").join(format!("{id}_stream.jsonl")),
            ),
            (
                LogKind::Deploy,
                d.join("logs").join(format!("deploy_{id}.json")),
            ),
            (
                LogKind::Progress,
                d.join("progress").join(format!("{id}_progress.jsonl")),
            ),
            (
                LogKind::Findings,
                d.join("findings").join(format!("{id}_findings.jsonl")),
            ),
        ],
    }
}

/// Lexical normalisation: `.` dropped, `..` pops (never above the root).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Accepts a path from a registry field only when it lies inside `task_dir` and no
/// component below `task_dir` is a symlink (a missing tail is fine: it may come later).
pub fn resolve_inside(task_dir: &Path, raw: &str) -> Result<PathBuf, WorkspaceError> {
    let outside = || WorkspaceError::OutsideTask {
        raw: raw.to_string(),
        task: task_dir.to_path_buf(),
    };
    if raw.contains('\0') {
        return Err(outside());
    }
    let task = normalize(task_dir);
    let candidate = normalize(&task.join(raw));
    let rel = candidate.strip_prefix(&task).map_err(|_| outside())?;
    if rel.as_os_str().is_empty() {
        return Err(outside());
    }
    let mut walk = task.clone();
    for part in rel.components() {
        walk.push(part.as_os_str());
        match fs::symlink_metadata(&walk) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(WorkspaceError::ThroughSymlink { path: walk });
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    Ok(candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_takes_real_task_folders_only() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        for name in ["TASK-1", "TASK-2", "NOT-A-TASK", "TASK-3"] {
            fs::create_dir(base.join(name)).unwrap();
        }
        fs::write(base.join("TASK-1").join(TASK_REGISTRY), "{}").unwrap();
        fs::write(base.join("NOT-A-TASK").join(TASK_REGISTRY), "{}").unwrap();
        fs::write(base.join("TASK-3").join(TASK_REGISTRY), "{}").unwrap();
        std::os::unix::fs::symlink(base.join("TASK-1"), base.join("TASK-link")).unwrap();
        let ids: Vec<_> = discover_tasks(base)
            .unwrap()
            .into_iter()
            .map(|t| t.task_id)
            .collect();
        assert_eq!(ids, ["TASK-1", "TASK-3"]);
    }

    #[test]
    fn paths_must_stay_inside_the_task() {
        let tmp = tempfile::tempdir().unwrap();
        let task = tmp.path().join("TASK-1");
        fs::create_dir_all(task.join("progress")).unwrap();
        let inside = format!("{}/progress/a_progress.jsonl", task.display());
        assert_eq!(
            resolve_inside(&task, &inside).unwrap(),
            task.join("progress/a_progress.jsonl")
        );
        assert!(resolve_inside(&task, "progress/x.jsonl").is_ok());
        for bad in [
            "/etc/passwd",
            "../TASK-2/x",
            "progress/../../x",
            "",
            ".",
            "/home/other/.agent-workspace/TASK-1/progress/a.jsonl",
        ] {
            assert!(resolve_inside(&task, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn symlinks_below_the_task_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let task = tmp.path().join("TASK-1");
        fs::create_dir_all(&task).unwrap();
        std::os::unix::fs::symlink("/etc", task.join("logs")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", task.join("x.jsonl")).unwrap();
        assert!(matches!(
            resolve_inside(&task, "logs/passwd"),
            Err(WorkspaceError::ThroughSymlink { .. })
        ));
        assert!(resolve_inside(&task, "x.jsonl").is_err());
        assert!(resolve_inside(&task, "logs/a_stream.jsonl").is_err());
    }
}
