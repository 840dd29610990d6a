//! The steady state: task registries a pass found wholly cleaned are not read again while
//! their file and their folders (identity, size, mtime) stay the same and no live tmux
//! session carries one of their agents' names. Kept in the state dir across runs.

mod disk;
mod stamp;
#[cfg(test)]
mod tests;

use super::read::FileKey;
use crate::decide::{AgentClass, Decision};
use crate::model::{AgentId, Backend};
use crate::observe::{DecidedAgent, PendingAgent, TaskView, task_view};
use crate::workspace::TaskDir;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

pub use disk::CacheError;
use stamp::Seen;

/// A task whose agents were all cleaned, with nothing of theirs present, as last looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanTask {
    /// The registry as read then.
    registry: Seen,
    /// The task folder and its `logs/`, `progress/`, `findings/` (see `stamp::FOLDERS`): a
    /// late log, prompt or folder is a new name in one of them, which changes its mtime.
    folders: [Seen; stamp::FOLDERS.len()],
    /// How many agents it lists (counted as seen in each pass that skips it).
    pub agents: usize,
    /// Their ids, one per line: archive retention removes an agent's archives by their
    /// exact names (a hash could make a stranger's file look like an agent's).
    ids: Box<str>,
    /// `session_hash` of its agents' session names, sorted. A live one means: look again.
    /// Also the pass-wide ambiguity check: an id read elsewhere with one of these hashes
    /// has the task read again this pass (see `Reaper::run_scoped`), so the check always
    /// compares real ids. A 64-bit collision only makes the task read: the safe direction.
    pub sessions: Vec<u64>,
}

/// A stable 64-bit hash (FNV-1a) of a session name: the same in every run and build, as
/// it is kept on disk. Not collision-resistant: a collision only ever costs a read.
pub fn session_hash(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The clean tasks, per task folder (`<base>/<task>`), and where they are kept.
#[derive(Debug, Default)]
pub struct CleanTasks {
    /// `<state_dir>/clean-tasks.bin`; `None`: kept in memory only (plan, tests).
    path: Option<PathBuf>,
    tasks: HashMap<PathBuf, CleanTask>,
    /// Changed since loaded or saved.
    dirty: bool,
    /// Tasks whose last confirmation found something present, by the registry key read
    /// then: not confirmed again until the registry changes (a cleaned agent whose prompt
    /// is kept would otherwise cost a second read every pass).
    rejected: HashMap<PathBuf, FileKey>,
    /// The tasks the last full pass skipped (for archive retention, which lists their
    /// archives as the pass had read them).
    unread: Vec<PathBuf>,
}

/// What a look at a cached task found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holds {
    /// Still clean: skip it.
    Yes,
    /// Something changed (or a live session): read it.
    No,
}

impl CleanTasks {
    /// A cache that is never written.
    pub fn in_memory() -> Self {
        CleanTasks::default()
    }

    /// Loads `<state_dir>/clean-tasks.bin`; missing is empty. A corrupt, truncated or
    /// foreign-version file is never trusted: an empty cache (replaced at the next save)
    /// and the problem to report.
    pub fn load(state_dir: &Path) -> (Self, Option<CacheError>) {
        let path = state_dir.join(disk::FILE_NAME);
        let (tasks, problem) = disk::load(&path);
        let cache = CleanTasks {
            dirty: problem.is_some(),
            path: Some(path),
            tasks,
            rejected: HashMap::new(),
            unread: Vec::new(),
        };
        (cache, problem)
    }

    /// [`CleanTasks::load`], with a bad file reported (as a warning) rather than returned:
    /// the cache then starts empty (every task is read once, then cached).
    pub fn load_or_warn(state_dir: &Path) -> Self {
        let (cache, problem) = CleanTasks::load(state_dir);
        if let Some(e) = problem {
            tracing::warn!("{e}");
        }
        tracing::debug!("clean-task cache: {} task(s) loaded", cache.len());
        cache
    }

    /// Writes the cache if it changed (temp file, fsync, rename, folder fsync).
    pub fn save(&mut self) -> Result<(), CacheError> {
        let Some(path) = &self.path else {
            self.dirty = false;
            return Ok(());
        };
        if self.dirty {
            disk::save(path, &self.tasks)?;
            self.dirty = false;
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Its last confirmation found something present (tests: whether a pass judged it).
    #[cfg(test)]
    pub(crate) fn was_refused(&self, dir: &Path) -> bool {
        self.rejected.contains_key(dir)
    }

    pub fn get(&self, dir: &Path) -> Option<&CleanTask> {
        self.tasks.get(dir)
    }

    /// Whether the cached task at `task.dir` is still clean. `live`: `session_hash` of
    /// every live session, sorted. `trusted`: file events keep the cache current (a task
    /// with an event since is looked at by its own pass), so nothing is looked at; else a
    /// few `fstatat`s beneath the base handle (and, for a stamp too recent to tell a change
    /// by, one listing or read, see `stamp`).
    pub fn check(&mut self, task: &TaskDir, live: &[u64], trusted: bool) -> Holds {
        let Some(clean) = self.tasks.get_mut(&task.dir) else {
            return Holds::No;
        };
        if intersect(live, &clean.sessions) {
            return Holds::No;
        }
        if trusted {
            return Holds::Yes;
        }
        match stamp::verify(task, &mut clean.registry, &mut clean.folders) {
            stamp::Verified::Same => Holds::Yes,
            stamp::Verified::SameSettled => {
                self.dirty = true;
                Holds::Yes
            }
            stamp::Verified::Changed => Holds::No,
        }
    }

    /// Keeps only the tasks in `keep` (full passes: tasks read again or gone leave).
    pub fn retain(&mut self, keep: impl Fn(&Path) -> bool) {
        let before = self.tasks.len();
        self.tasks.retain(|dir, _| keep(dir));
        self.dirty |= self.tasks.len() != before;
    }

    /// Records which tasks this pass skipped as still clean.
    pub fn set_unread(&mut self, dirs: Vec<PathBuf>) {
        self.unread = dirs;
    }

    /// The tasks the last pass skipped, as archive retention sees a wholly cleaned task.
    pub fn unread_seen(&self) -> Vec<crate::archive::retention::SeenTask<'_>> {
        self.unread
            .iter()
            .filter_map(|dir| {
                let clean = self.tasks.get(dir)?;
                Some(crate::archive::retention::SeenTask {
                    dir,
                    task_id: dir.file_name()?.to_str()?,
                    agent_ids: clean.ids.lines().collect(),
                    cleaned: true,
                })
            })
            .collect()
    }

    pub fn remove(&mut self, dir: &Path) {
        self.dirty |= self.tasks.remove(dir).is_some();
    }

    fn insert(&mut self, dir: PathBuf, clean: CleanTask) {
        self.rejected.remove(&dir);
        if self.tasks.get(&dir) != Some(&clean) {
            self.tasks.insert(dir, clean);
            self.dirty = true;
        }
    }

    /// After a pass: each task it saw that may now be wholly cleaned (`candidates`) is
    /// looked at once more, its stamps taken BEFORE that look, so a log written after
    /// the look changes a stamp and one written before is seen by it. This also covers
    /// the pass's own moves and registry writes (they precede the stamps). `keys`: the
    /// registry versions this pass read, for `rejected`.
    pub fn confirm(
        &mut self,
        candidates: &[&TaskDir],
        keys: &HashMap<PathBuf, FileKey>,
        max_bytes: u64,
        unseen: &(dyn Fn(&AgentId) -> bool + Sync),
    ) {
        let looked: Vec<&TaskDir> = candidates
            .iter()
            .copied()
            .filter(|task| {
                let read = keys.get(&task.dir);
                read.is_none() || self.rejected.get(&task.dir) != read
            })
            .collect();
        // Each look reads a registry and stats its agents' files: on a few threads, as the
        // pass's own reads (100 registries of 100 agents: 80 -> 55 ms on 2 cores).
        let judged =
            super::parallel::map_ordered(looked.clone(), super::parallel::io_threads(), |t| {
                judge(t, max_bytes, unseen)
            });
        for (task, judged) in looked.into_iter().zip(judged) {
            match judged {
                Some(clean) => self.insert(task.dir.clone(), clean),
                None => {
                    if let Some(key) = keys.get(&task.dir) {
                        self.rejected.insert(task.dir.clone(), *key);
                    }
                }
            }
        }
    }
}

/// Whether two sorted lists share a value: each of the shorter looked up in the longer (a
/// few live sessions against 600,000 cleaned agents, or the other way round).
fn intersect(a: &[u64], b: &[u64]) -> bool {
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    short.iter().any(|h| long.binary_search(h).is_ok())
}

/// Stamps, then a fresh look at the registry and the agents' files: a clean task when every
/// agent is cleaned with nothing present and no session (`observe::QuietAgent`), nothing
/// odd in the registry, and it is a JSON registry the fast reader parses.
fn judge(task: &TaskDir, max_bytes: u64, unseen: &dyn Fn(&AgentId) -> bool) -> Option<CleanTask> {
    let now = SystemTime::now();
    let folders = stamp::take_folders(task, now)?;
    // A large registry's view is as large as its text: built before the next large read.
    let (registry, root, _turn) = stamp::parse_registry(task, now, max_bytes)?;
    let (view, pending) = task_view(task, Backend::Json, Ok(root), unseen);
    let clean = pending.is_empty()
        && view.error.is_none()
        && view.warnings.is_empty()
        && view.duplicates.is_empty();
    if !clean {
        return None;
    }
    let mut sessions: Vec<u64> = view
        .quiet
        .iter()
        .map(|q| session_hash(&q.session_name()))
        .collect();
    sessions.sort_unstable();
    sessions.dedup();
    let ids: Vec<&str> = view.quiet.iter().map(|q| q.id.as_str()).collect();
    Some(CleanTask {
        registry,
        folders,
        agents: view.quiet.len(),
        ids: ids.join("\n").into(),
        sessions,
    })
}

/// The tasks of this pass that may now be wholly cleaned: JSON registries read without a
/// problem whose agents are cleaned, or finished with their cleanup done this pass
/// (`judge` looks again before anything is cached), and no ambiguous id. `acted`: the pass
/// carried its decisions out; a finished agent a pass only planned for is still to clean,
/// and a look at its task would only be refused (`plan` over one task of 40,000 finished
/// agents read and judged its 7 MB registry again: 374 ms).
pub fn candidates<'v>(
    views: &'v [TaskView<DecidedAgent>],
    decisions: &[Vec<Decision>],
    ambiguous: &BTreeMap<AgentId, String>,
    acted: bool,
) -> Vec<&'v TaskDir> {
    views
        .iter()
        .zip(decisions)
        .filter(|(v, d)| {
            v.backend == Backend::Json
                && v.error.is_none()
                && v.warnings.is_empty()
                && v.duplicates.is_empty()
                && v.agents.iter().zip(d.iter()).all(|(a, d)| {
                    (d.class == AgentClass::Cleaned || (acted && d.class == AgentClass::Finished))
                        && d.waiting.is_none()
                        && a.warnings.is_empty()
                        && !ambiguous.contains_key(&a.id)
                })
                && v.quiet.iter().all(|q| !ambiguous.contains_key(&q.id))
        })
        .map(|(v, _)| &v.task)
        .collect()
}

/// `session_hash` of every id a task read lists (its agents still to be looked at, quiet
/// ones, duplicates).
pub fn read_hashes<'v>(
    view: &'v TaskView,
    pending: &'v [PendingAgent],
) -> impl Iterator<Item = u64> + 'v {
    pending
        .iter()
        .map(PendingAgent::id)
        .chain(view.agents.iter().map(|a| &a.id))
        .chain(view.quiet.iter().map(|q| &q.id))
        .chain(view.duplicates.iter())
        .map(|id| session_hash(&id.session_name()))
}

/// Ambiguous ids (see `procs::ambiguity`) over the tasks read this pass. Clean tasks
/// skipped hold no id another task lists or shares a session name with: those are read.
pub fn ambiguous(views: &[TaskView]) -> BTreeMap<AgentId, String> {
    let read = views.iter().flat_map(|v| {
        let task = v.task.task_id.as_str();
        v.agents
            .iter()
            .map(|a| &a.id)
            .chain(v.quiet.iter().map(|q| &q.id))
            .chain(v.duplicates.iter().flat_map(|d| [d, d]))
            .map(move |id| (task, id))
    });
    crate::procs::ambiguity::ambiguous_ids(read)
}

/// Which skipped clean tasks must be read after all for the ambiguity check: those sharing
/// a session hash with another skipped one, and (through `more`) those sharing one with a
/// task read. `skipped`: the cached entries, in order.
pub struct Overlap {
    owner: HashMap<u64, usize>,
    taken: Vec<bool>,
}

impl Overlap {
    /// Also returns the skipped tasks that share a hash with another skipped one.
    pub fn new(skipped: &[&CleanTask]) -> (Self, Vec<usize>) {
        let mut owner = HashMap::with_capacity(skipped.iter().map(|c| c.sessions.len()).sum());
        let mut taken = vec![false; skipped.len()];
        let mut out = Vec::new();
        for (i, clean) in skipped.iter().enumerate() {
            for h in &clean.sessions {
                if let Some(j) = owner.insert(*h, i)
                    && j != i
                {
                    for k in [i, j] {
                        if !taken[k] {
                            taken[k] = true;
                            out.push(k);
                        }
                    }
                }
            }
        }
        (Overlap { owner, taken }, out)
    }

    /// The skipped tasks not yet taken that hold one of `hashes`.
    pub fn more(&mut self, hashes: impl IntoIterator<Item = u64>) -> Vec<usize> {
        let mut out = Vec::new();
        for h in hashes {
            if let Some(&i) = self.owner.get(&h)
                && !self.taken[i]
            {
                self.taken[i] = true;
                out.push(i);
            }
        }
        out
    }

    pub fn is_taken(&self, i: usize) -> bool {
        self.taken[i]
    }
}
