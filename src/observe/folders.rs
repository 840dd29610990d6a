//! One look at a task's own folders (`logs/`, `progress/`, `findings/`): each opened once
//! beneath the task handle and, for tasks of many agents, listed once, so an agent's file
//! that is not there costs no lookup and one that is costs one `fstatat` of a plain name.

use crate::archive::store::name_hash;
use crate::fs::{Dir, Entry, FsError};
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// Agents in a task from which its folders are listed (below it, each name is looked up).
pub const LIST_FROM: usize = 8;

/// A subfolder as this look found it.
enum Folder {
    /// Not there: nothing below it exists.
    Missing,
    /// Opened (no symlink on the way); `names`: hashes of what it held when listed.
    Open {
        dir: Dir,
        names: Option<HashSet<u64>>,
    },
    /// Could not be opened as a folder (a symlink, a file, an error): each name goes the
    /// long way, which names the problem.
    Unusable,
}

/// The folders of one task looked at in one pass.
pub struct Folders<'d> {
    task_dir: &'d Dir,
    list: bool,
    opened: HashMap<PathBuf, Folder>,
    /// Hashes of the task folder's own names, once listed (for its agents' prompts).
    root: Option<Option<HashSet<u64>>>,
}

impl<'d> Folders<'d> {
    /// `agents`: how many agents' files will be asked about (listing pays off for many).
    pub fn new(task_dir: &'d Dir, agents: usize) -> Self {
        Folders {
            task_dir,
            list: agents >= LIST_FROM,
            opened: HashMap::new(),
            root: None,
        }
    }

    /// What is at `rel` (below the task folder), not following a symlink anywhere: as
    /// `Dir::metadata` on the task handle says it, for a name in a subfolder through that
    /// subfolder's handle.
    pub fn metadata(&mut self, rel: &Path) -> Result<Option<Entry>, FsError> {
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
            return self.task_dir.metadata(rel);
        };
        // A name in the task folder: not in its one listing means not there.
        if parent.as_os_str().is_empty() && self.list {
            let task_dir = self.task_dir;
            let names = self.root.get_or_insert_with(|| listing(task_dir));
            if names
                .as_ref()
                .is_some_and(|n| !n.contains(&name_hash(name)))
            {
                return Ok(None);
            }
            return self.task_dir.metadata(rel);
        }
        // The task folder itself, or deeper than one subfolder: the usual way.
        if parent.as_os_str().is_empty() || parent.parent() != Some(Path::new("")) {
            return self.task_dir.metadata(rel);
        }
        let (task_dir, list) = (self.task_dir, self.list);
        let folder = self
            .opened
            .entry(parent.to_path_buf())
            .or_insert_with(|| open(task_dir, parent, list));
        match folder {
            Folder::Missing => Ok(None),
            Folder::Unusable => self.task_dir.metadata(rel),
            Folder::Open { dir, names } => {
                if names
                    .as_ref()
                    .is_some_and(|n| !n.contains(&name_hash(name)))
                {
                    return Ok(None);
                }
                dir.metadata(name)
            }
        }
    }
}

fn open(task_dir: &Dir, parent: &Path, list: bool) -> Folder {
    match task_dir.open_dir(parent) {
        Ok(dir) => {
            let names = list.then(|| listing(&dir)).flatten();
            Folder::Open { dir, names }
        }
        Err(e) if e.is_not_found() => Folder::Missing,
        Err(_) => Folder::Unusable,
    }
}

fn listing(dir: &Dir) -> Option<HashSet<u64>> {
    let mut names = HashSet::new();
    dir.for_each_name(|name: &OsStr, _| {
        names.insert(name_hash(name));
    })
    .ok()?;
    Some(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::EntryKind;
    use std::fs;

    fn look(task: &Path, agents: usize, rel: &str) -> Result<Option<Entry>, FsError> {
        let dir = Dir::open_base(task).unwrap();
        Folders::new(&dir, agents).metadata(Path::new(rel))
    }

    #[test]
    fn listed_or_not_a_look_says_what_the_task_handle_says() {
        let tmp = tempfile::tempdir().unwrap();
        let task = tmp.path();
        fs::create_dir_all(task.join("logs")).unwrap();
        fs::write(task.join("logs/a_stream.jsonl"), "x").unwrap();
        fs::write(task.join("agent_prompt_a.txt"), "x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", task.join("logs/b_stream.jsonl")).unwrap();
        fs::create_dir(task.join("elsewhere")).unwrap();
        fs::write(task.join("elsewhere/c_progress.jsonl"), "x").unwrap();
        std::os::unix::fs::symlink(task.join("elsewhere"), task.join("progress")).unwrap();
        for agents in [1, LIST_FROM] {
            let a = look(task, agents, "logs/a_stream.jsonl").unwrap().unwrap();
            assert_eq!(a.kind, EntryKind::File);
            let b = look(task, agents, "logs/b_stream.jsonl").unwrap().unwrap();
            assert_eq!(
                b.kind,
                EntryKind::Symlink,
                "a symlink is seen, never followed"
            );
            assert!(look(task, agents, "logs/missing.jsonl").unwrap().is_none());
            assert!(look(task, agents, "findings/x.jsonl").unwrap().is_none());
            let prompt = look(task, agents, "agent_prompt_a.txt").unwrap().unwrap();
            assert_eq!(prompt.kind, EntryKind::File, "a name of the task folder");
            assert!(look(task, agents, "agent_prompt_b.txt").unwrap().is_none());
            // A symlinked subfolder is refused the way the task handle refuses it.
            let err = look(task, agents, "progress/c_progress.jsonl").unwrap_err();
            assert!(matches!(err, FsError::Symlink { .. }), "{err}");
        }
    }
}
