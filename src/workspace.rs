//! Workspace layout: finding task folders, and joining untrusted names into paths that stay inside.

pub use crate::agent_file::{FileOf, LogKind, agent_file_rel};
use crate::fs;
use crate::model::AgentId;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

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
///
/// `dir` is for display and reports only; every file operation goes through
/// [`TaskDir::handle`], a directory handle opened beneath the base handle without following
/// a symlink. The first open pins the folder's identity (dev, ino): a folder swapped in
/// under the same name later is refused, not used. Handles are shared while in use and
/// closed when the last user drops them, so 20,000 tasks do not hold 20,000 descriptors.
///
/// Cloned for every agent a pass looks at: a clone shares one allocation.
#[derive(Debug, Clone)]
pub struct TaskDir(Arc<TaskPlace>);

/// Where a task folder is (read through [`TaskDir`]).
#[derive(Debug)]
pub struct TaskPlace {
    pub base: PathBuf,
    pub dir: PathBuf,
    pub task_id: String,
    handle: TaskHandle,
}

impl std::ops::Deref for TaskDir {
    type Target = TaskPlace;
    fn deref(&self) -> &TaskPlace {
        &self.0
    }
}

#[derive(Debug, Default)]
struct TaskHandle {
    /// The base, opened once per discovery (opened on demand for tasks found elsewhere).
    base: OnceLock<Arc<fs::Dir>>,
    /// (dev, ino) of the task folder when first opened.
    pinned: OnceLock<(u64, u64)>,
    /// The open handle while someone uses it.
    open: Mutex<Weak<fs::Dir>>,
}

impl PartialEq for TaskDir {
    fn eq(&self, other: &Self) -> bool {
        (&self.base, &self.dir, &self.task_id) == (&other.base, &other.dir, &other.task_id)
    }
}

impl Eq for TaskDir {}

impl TaskDir {
    /// A task folder `<base>/<task_id>` whose base handle is opened on first use.
    pub fn new(base: &Path, task_id: &str) -> TaskDir {
        TaskDir(Arc::new(TaskPlace {
            base: base.to_path_buf(),
            dir: base.join(task_id),
            task_id: task_id.to_string(),
            handle: TaskHandle::default(),
        }))
    }

    /// A task folder below an open base handle.
    pub fn beneath(base_dir: &Arc<fs::Dir>, task_id: &str) -> TaskDir {
        let task = TaskDir::new(base_dir.path(), task_id);
        let _ = task.handle.base.set(Arc::clone(base_dir));
        task
    }

    /// Display path of the task registry.
    pub fn registry(&self) -> PathBuf {
        self.dir.join(TASK_REGISTRY)
    }

    /// The base folder's handle.
    pub fn base_handle(&self) -> Result<Arc<fs::Dir>, fs::FsError> {
        if let Some(b) = self.handle.base.get() {
            return Ok(Arc::clone(b));
        }
        let opened = Arc::new(fs::Dir::open_base(&self.base)?);
        Ok(Arc::clone(self.handle.base.get_or_init(|| opened)))
    }

    /// The task folder's handle: `O_DIRECTORY|O_NOFOLLOW` beneath the base, the same
    /// folder every time (identity pinned by the first open).
    pub fn handle(&self) -> Result<Arc<fs::Dir>, fs::FsError> {
        let mut open = self.handle.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(dir) = open.upgrade() {
            return Ok(dir);
        }
        let dir = self.base_handle()?.open_dir(&self.task_id)?;
        let id = dir.identity()?;
        let pinned = *self.handle.pinned.get_or_init(|| id);
        if pinned != id {
            return Err(fs::FsError::Changed {
                path: self.dir.clone(),
                what: "the task folder was replaced by another folder".into(),
            });
        }
        let dir = Arc::new(dir);
        *open = Arc::downgrade(&dir);
        Ok(dir)
    }
}

/// What a task's folder is called: `TASK-` followed by a safe name.
fn is_task_dir_name(name: &str) -> bool {
    name.starts_with("TASK-") && AgentId::parse(name).is_ok()
}

/// Task folders under `base`, sorted: real directories (not symlinks) named `TASK-*`
/// that hold a regular-file (or, left for the reader to refuse, any) `AGENT_REGISTRY.json`.
/// One `readdir` of the base and one `fstatat` per task folder.
pub fn discover_tasks(base: &Path) -> Result<Vec<TaskDir>, WorkspaceError> {
    let list_err = |source: io::Error| WorkspaceError::ListBase {
        path: base.to_path_buf(),
        source,
    };
    let base_dir = Arc::new(fs::Dir::open_base(base).map_err(|e| list_err(e.into()))?);
    let entries = base_dir.list().map_err(|e| list_err(e.into()))?;
    let mut tasks = Vec::new();
    for entry in entries {
        let Some(name) = entry.name.to_str() else {
            continue;
        };
        if !is_task_dir_name(name) {
            continue;
        }
        // readdir's type does not follow symlinks: a symlinked task folder is not ours.
        let is_dir = match entry.kind {
            fs::EntryKind::Dir => true,
            fs::EntryKind::Unknown => base_dir
                .metadata(name)
                .is_ok_and(|m| m.is_some_and(|m| m.kind == fs::EntryKind::Dir)),
            _ => false,
        };
        if is_dir && base_dir.probe_exists(Path::new(name).join(TASK_REGISTRY)) {
            tasks.push(TaskDir::beneath(&base_dir, name));
        }
    }
    tasks.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    Ok(tasks)
}

pub fn global_registry(base: &Path) -> PathBuf {
    base.join(GLOBAL_REGISTRY)
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
    let mut buf = String::new();
    let mut at = |which| task.dir.join(agent_file_rel(&mut buf, which, id));
    AgentFiles {
        prompt: at(None),
        logs: LogKind::ALL.iter().map(|k| (*k, at(Some(*k)))).collect(),
    }
}

/// Lexical normalisation: `.` dropped, `..` pops (never above the root).
pub(crate) fn normalize(path: &Path) -> PathBuf {
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
    // Looked at beneath the task folder's handle: a symlink anywhere below it (final or
    // on the way) is refused; a missing tail is fine (it may come later).
    if let Ok(dir) = fs::Dir::open_base(&task) {
        let through = |path| Err(WorkspaceError::ThroughSymlink { path });
        match dir.metadata(rel) {
            Err(fs::FsError::Symlink { path }) => return through(path),
            Ok(Some(entry)) if entry.kind == fs::EntryKind::Symlink => return through(candidate),
            _ => {}
        }
    }
    Ok(candidate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

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
            .map(|t| t.task_id.clone())
            .collect();
        assert_eq!(ids, ["TASK-1", "TASK-3"]);
    }

    #[test]
    fn a_task_handle_is_the_folder_first_opened_never_a_replacement() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("base");
        fs::create_dir_all(base.join("TASK-1")).unwrap();
        fs::write(base.join("TASK-1").join(TASK_REGISTRY), "{}").unwrap();
        let task = discover_tasks(&base).unwrap().remove(0);
        let held = task.handle().unwrap();
        // While in use, one shared handle.
        assert!(Arc::ptr_eq(&held, &task.handle().unwrap()));
        drop(held);
        // Replaced by another folder: refused (the pinned identity differs).
        fs::rename(base.join("TASK-1"), base.join("old")).unwrap();
        fs::create_dir(base.join("TASK-1")).unwrap();
        let err = task.handle().unwrap_err();
        assert!(matches!(err, crate::fs::FsError::Changed { .. }), "{err}");
        // Replaced by a symlink to the original: refused too.
        fs::remove_dir(base.join("TASK-1")).unwrap();
        std::os::unix::fs::symlink(base.join("old"), base.join("TASK-1")).unwrap();
        let err = task.handle().unwrap_err();
        assert!(matches!(err, crate::fs::FsError::Symlink { .. }), "{err}");
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
