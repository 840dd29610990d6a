//! The file side of one task's cleanup, all through the task's directory handle: archiving
//! an agent's logs (one archive per log: later bytes are appended to it, journaled),
//! and deleting its prompt only if it is still the file that was checked.

use super::Outcome;
use crate::agent_file::{AgentFile, LogKind, TaskPath};
use crate::archive::compress;
use crate::archive::late::append_late_write_at;
use crate::archive::outcome::AppendOutcome;
use crate::archive::store::{ArchiveError, Archived, Archiver, name_hash, sync_dirs};
use crate::config::Config;
use crate::fs::{self, Dir, FsError, UnlinkOutcome};
use crate::journal::{Journal, Step};
use crate::observe::{DecidedAgent, TaskView};
use crate::reap::events::PassEvent;
use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Records at least this many in one task: list the archive folder once (see
/// [`Archiver::name_hashes`]) instead of a lookup per log.
pub(super) const LIST_ABOVE: usize = 64;

/// A source folder, opened once per pass part, and its identity (asked once, not per file).
#[derive(Clone)]
struct SrcDir {
    dir: Arc<Dir>,
    identity: (u64, u64),
}

/// One task's file work in one pass (or one part of a large task's, on its own thread);
/// folders are opened once and fsynced together.
pub(super) struct TaskFiles<'a> {
    view: &'a TaskView<DecidedAgent>,
    config: &'a Config,
    task: Option<Result<Arc<Dir>, String>>,
    archiver: Option<Result<Archiver, String>>,
    /// Source folders by their path relative to the task folder ("" = the task folder).
    dirs: HashMap<PathBuf, SrcDir>,
    /// Folders whose entries changed (each once): fsynced before the registry records the moves.
    touched: Vec<Arc<Dir>>,
    /// Name hashes of the archive folder as listed before this pass's moves, when many
    /// records ask about it.
    listing: Option<Arc<HashSet<u64>>>,
}

impl<'a> TaskFiles<'a> {
    pub(super) fn new(
        view: &'a TaskView<DecidedAgent>,
        config: &'a Config,
        listing: Option<Arc<HashSet<u64>>>,
    ) -> Self {
        TaskFiles {
            view,
            config,
            task: None,
            archiver: None,
            dirs: HashMap::new(),
            touched: Vec::new(),
            listing,
        }
    }

    /// Whether the archive folder may hold `name`: not when the listing taken before this
    /// pass's moves lacks it (this pass adds a name only for the log it archives itself).
    fn may_be_archived(&self, name: &OsStr) -> bool {
        self.listing
            .as_ref()
            .is_none_or(|l| l.contains(&name_hash(name)))
    }

    fn touch(&mut self, dir: &Arc<Dir>) {
        if !self.touched.iter().any(|d| Arc::ptr_eq(d, dir)) {
            self.touched.push(Arc::clone(dir));
        }
    }

    fn task(&mut self) -> Result<Arc<Dir>, String> {
        let task = &self.view.task;
        self.task
            .get_or_insert_with(|| task.handle().map_err(|e| e.to_string()))
            .clone()
    }

    /// The archive folder: `<task>/archive/`, or `<archive_dir>/<task id>/` (the configured
    /// folder is trusted and opened by path; the task's folder in it is opened beneath it).
    fn archiver(&mut self) -> Result<&mut Archiver, String> {
        if self.archiver.is_none() {
            let made = match &self.config.archive_dir {
                Some(root) => Dir::open_or_create_base(root)
                    .map(|d| Archiver::new(Arc::new(d), &self.view.task.task_id))
                    .map_err(|e| e.to_string()),
                None => self.task().map(|t| Archiver::new(t, "archive")),
            };
            self.archiver = Some(made);
        }
        match self.archiver.as_mut().expect("set above") {
            Ok(a) => Ok(a),
            Err(e) => Err(e.clone()),
        }
    }

    /// `path` (below the task folder) as its folder's handle and its name.
    fn locate(&mut self, path: &TaskPath) -> Result<(SrcDir, OsString), String> {
        let (parent, name) = match path {
            TaskPath::Agent(file) => (Path::new(file.folder()), file.file_name()),
            // Any other path must lie inside the task folder.
            TaskPath::Other(path) => {
                let rel = match path.strip_prefix(&self.view.task.dir) {
                    Ok(rel) => rel,
                    Err(_) if path.is_relative() => path,
                    Err(_) => {
                        return Err(format!(
                            "{}: not inside the task folder {}; left alone",
                            path.display(),
                            self.view.task.dir.display()
                        ));
                    }
                };
                let name = rel
                    .file_name()
                    .ok_or_else(|| format!("{}: no file name; left alone", path.display()))?;
                (rel.parent().unwrap_or(Path::new("")), name.to_os_string())
            }
        };
        if let Some(dir) = self.dirs.get(parent) {
            return Ok((dir.clone(), name));
        }
        let task = self.task()?;
        let dir = if parent.as_os_str().is_empty() {
            task
        } else {
            Arc::new(task.open_dir(parent).map_err(|e| e.to_string())?)
        };
        let identity = dir.identity().map_err(|e| e.to_string())?;
        let src = SrcDir { dir, identity };
        self.dirs.insert(parent.to_path_buf(), src.clone());
        Ok((src, name))
    }

    /// Archives one log: moved into the archive, or, when the archive already holds a
    /// file of that name (a late write, a second pass, a crash between archive and
    /// record), appended to it through the journal, exactly once.
    pub(super) fn archive(
        &mut self,
        path: &TaskPath,
        journal: Option<&Mutex<Journal>>,
        out: &mut Outcome,
    ) {
        if let Err(e) = self.try_archive(path, journal, out) {
            out.errors.push(e);
        }
    }

    fn try_archive(
        &mut self,
        path: &TaskPath,
        journal: Option<&Mutex<Journal>>,
        out: &mut Outcome,
    ) -> Result<(), String> {
        let (src, name) = self.locate(path)?;
        // One log, one archive: a compressed archive of this name takes the new bytes as a
        // further frame (the plain one, if both are there, takes them as they are).
        let zst = compress::zst_name(&name);
        if self.may_be_archived(&zst)
            && self
                .archiver()?
                .existing(&zst)
                .map_err(|e| e.to_string())?
                .is_some()
        {
            if self
                .archiver()?
                .existing(&name)
                .map_err(|e| e.to_string())?
                .is_some()
            {
                return self.append(path, &src.dir, &name, journal, out);
            }
            return self.append_frame(path, &src.dir, &name, &zst, journal, out);
        }
        // No lookup of the plain name first: `RENAME_NOREPLACE` (or the copy's check) says
        // when the archive already holds it, atomically, and the bytes are appended instead.
        let archiver = self.archiver()?;
        match archive_journaled(archiver, &src, &name, journal) {
            Ok(done) => {
                self.touch(&src.dir);
                let to = self.archive_of(path, done.path(), false);
                out.done.push(PassEvent::Archived {
                    from: path.clone().into(),
                    to: to.into(),
                });
                self.maybe_compress(path, &name, journal, out);
                Ok(())
            }
            Err(ArchiveError::Taken { .. }) => self.append(path, &src.dir, &name, journal, out),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Appends the bytes of `src_dir/name` to its archive and unlinks it (journaled).
    fn append(
        &mut self,
        path: &TaskPath,
        src_dir: &Dir,
        name: &OsStr,
        journal: Option<&Mutex<Journal>>,
        out: &mut Outcome,
    ) -> Result<(), String> {
        let archiver = self.archiver()?;
        let adir = archiver.open().map_err(|e| e.to_string())?;
        let target = adir.display(name);
        let Some(journal_lock) = journal else {
            return Err(format!(
                "{}: {} already holds this log's archive; appending to it needs the journal (a state dir); left for a later pass",
                path,
                target.display()
            ));
        };
        let mut journal = journal_lock.lock().expect("journal lock");
        match append_late_write_at(src_dir, name, adir, name, &mut journal) {
            Ok(AppendOutcome::Appended { bytes, rescued }) => {
                let target = self.archive_of(path, &target, false);
                out.done.push(PassEvent::Appended {
                    bytes: bytes + rescued,
                    from: path.clone().into(),
                    to: target.into(),
                });
                drop(journal);
                self.maybe_compress(path, name, Some(journal_lock), out);
            }
            Ok(AppendOutcome::Changed) => out.done.push(PassEvent::AppendRetried {
                path: path.clone().into(),
            }),
            Err(e) => return Err(e.to_string()),
        }
        Ok(())
    }

    /// Appends the late write `src_dir/name` to its compressed archive `<name>.zst` as one
    /// more zstd frame and unlinks it (journaled, `crate::archive::compress::frame`).
    fn append_frame(
        &mut self,
        path: &TaskPath,
        src_dir: &Dir,
        name: &OsStr,
        zst: &OsStr,
        journal: Option<&Mutex<Journal>>,
        out: &mut Outcome,
    ) -> Result<(), String> {
        let level = self.config.compress_level;
        let archiver = self.archiver()?;
        let adir = archiver.open().map_err(|e| e.to_string())?;
        let target = adir.display(zst);
        let Some(journal) = journal else {
            return Err(format!(
                "{}: {} already holds this log's archive; appending to it needs the journal (a state dir); left for a later pass",
                path,
                target.display()
            ));
        };
        let mut journal = journal.lock().expect("journal lock");
        match compress::frame::append_frame(src_dir, name, adir, zst, level, &mut journal) {
            Ok(AppendOutcome::Appended { bytes, rescued }) => {
                let target = self.archive_of(path, &target, true);
                out.done.push(PassEvent::Appended {
                    bytes: bytes + rescued,
                    from: path.clone().into(),
                    to: target.into(),
                });
            }
            Ok(AppendOutcome::Changed) => out.done.push(PassEvent::AppendRetried {
                path: path.clone().into(),
            }),
            Err(e) => return Err(e.to_string()),
        }
        Ok(())
    }

    /// With `compress` on and a kind listed in `compress_kinds`, compresses the archive
    /// `name` just made (or appended to) into `<name>.zst`; its event says so (and puts the
    /// `.zst` in the plain archive's place in [`Outcome::archived`]). A failure keeps the
    /// plain archive and is reported. `log`: the log archived as `name`.
    fn maybe_compress(
        &mut self,
        log: &TaskPath,
        name: &OsStr,
        journal: Option<&Mutex<Journal>>,
        out: &mut Outcome,
    ) {
        let wanted = self.config.compress
            && compress::kind_of(name).is_some_and(|k| self.config.compress_kinds.contains(&k));
        // Without a journal a crash mid-way could not be settled: stay plain.
        let (true, Some(journal)) = (wanted, journal) else {
            return;
        };
        let level = self.config.compress_level;
        let Some(adir) = self.archiver().ok().and_then(|a| a.open().ok()) else {
            return;
        };
        let mut journal = journal.lock().expect("journal lock");
        match compress::compress_archived(adir, name, level, &mut journal) {
            Ok(compress::Compressed::Done {
                zst,
                bytes_in,
                bytes_out,
            }) => {
                out.done.push(PassEvent::Compressed {
                    path: self.archive_of(log, &zst, true).into(),
                    bytes_in,
                    bytes_out,
                });
            }
            Ok(compress::Compressed::Changed) => {
                let plain = adir.display(name);
                drop(journal);
                out.done.push(PassEvent::CompressRetried {
                    path: self.archive_of(log, &plain, false).into(),
                });
            }
            Err(e) => out.errors.push(format!("kept uncompressed: {e}")),
        }
    }

    /// Deletes the prompt file if it is a regular file with one link, judged on the very
    /// file unlinked (a file swapped in after a check is never deleted).
    pub(super) fn delete_prompt(&mut self, path: &TaskPath) -> Result<UnlinkOutcome, String> {
        let (src, name) = self.locate(path)?;
        fs::unlink_regular(&src.dir, &name).map_err(|e| e.to_string())
    }

    /// Puts what [`Self::delete_prompt`] did into the agent's outcome, its event and error
    /// at `at` (the lengths of `out.done` and `out.errors` when its turn came among the
    /// agent's actions), so the outcome reads in the order of the actions.
    pub(super) fn record_prompt(
        &self,
        path: &TaskPath,
        deleted: Result<UnlinkOutcome, String>,
        out: &mut Outcome,
        at: (usize, usize),
    ) {
        match deleted {
            Ok(UnlinkOutcome::Unlinked) => {
                out.prompt_deleted = true;
                let event = PassEvent::PromptDeleted {
                    path: path.clone().into(),
                };
                out.done.insert(at.0.min(out.done.len()), event);
            }
            Ok(UnlinkOutcome::Gone) => {}
            Err(e) => out.errors.insert(at.1.min(out.errors.len()), e),
        }
    }

    /// Compresses the plain archives of `agent`'s logs that should be compressed but are
    /// not (a pass killed between the archive and its compression, a failed or undone
    /// compression, `compress` turned on later), before the record lists what is on disk.
    pub(super) fn compress_leftovers(
        &mut self,
        agent: &DecidedAgent,
        journal: Option<&Mutex<Journal>>,
        out: &mut Outcome,
    ) {
        if !self.config.compress || journal.is_none() {
            return;
        }
        for kind in LogKind::ALL {
            if !self.config.compress_kinds.contains(&kind) {
                continue;
            }
            let log = TaskPath::from(AgentFile::new(&agent.id, Some(kind)));
            let Some(name) = log.file_name() else {
                continue;
            };
            let Ok(archiver) = self.archiver() else {
                return;
            };
            let plain = archiver.existing(&name).ok().flatten();
            let zst = archiver.existing(&compress::zst_name(&name)).ok().flatten();
            // Its event puts the `.zst` in place of a plain archive this pass made
            // (`Outcome::archived`): the record names what is on disk now.
            if let (Some(_), None) = (plain, zst) {
                self.maybe_compress(&log, &name, journal, out);
            }
        }
    }

    /// The archives of `agent`'s logs present in the archive folder now (by the logs'
    /// conventional names): what an earlier pass archived counts in a later record.
    /// `this_pass` (archives this pass just made, all in this archive folder) are not
    /// looked up again: a lookup per log in a folder of 100,000 archives is what a
    /// backlog's pass spent a tenth of its time on.
    pub(super) fn archives_of(
        &mut self,
        agent: &DecidedAgent,
        this_pass: &[TaskPath],
    ) -> Vec<PathBuf> {
        // The logs' names only (no whole path made per agent).
        let names = LogKind::ALL.map(|kind| AgentFile::new(&agent.id, Some(kind)).file_name());
        let listing = self.listing.clone();
        let listed = |name: &OsStr| {
            listing
                .as_ref()
                .is_none_or(|l| l.contains(&name_hash(name)))
        };
        let Ok(archiver) = self.archiver() else {
            return Vec::new();
        };
        names
            .iter()
            .filter(|name| !this_pass.iter().any(|p| p.has_name(name)))
            .filter_map(|name| {
                // What is on disk: the plain archive, else its compressed form.
                let plain = listed(name)
                    .then(|| archiver.existing(name).ok().flatten())
                    .flatten();
                plain.or_else(|| {
                    let zst = compress::zst_name(name);
                    if !listed(&zst) || this_pass.iter().any(|p| p.has_name(&zst)) {
                        return None;
                    }
                    archiver.existing(&zst).ok().flatten()
                })
            })
            .collect()
    }

    /// Where the log `log` is archived as an outcome keeps it (see [`Outcome::archived`]):
    /// the agent's own file in the task's archive folder (no text held), else the path
    /// `whole`, relative to the task folder when inside it. `compressed`: the `.zst`.
    fn archive_of(&self, log: &TaskPath, whole: &Path, compressed: bool) -> TaskPath {
        match log {
            TaskPath::Agent(file) if self.config.archive_dir.is_none() => {
                let archived = file.archived(compressed);
                debug_assert_eq!(
                    TaskPath::from(archived.clone()).whole(&self.view.task.dir),
                    whole
                );
                archived.into()
            }
            _ => TaskPath::shown_from(whole, &self.view.task.dir),
        }
    }
}

/// The archive folder's name hashes (see [`Archiver::name_hashes`]); `None` when it cannot
/// be listed (then each name is looked up).
pub(super) fn archive_listing(
    view: &TaskView<DecidedAgent>,
    config: &Config,
) -> Option<HashSet<u64>> {
    TaskFiles::new(view, config, None)
        .archiver()
        .ok()?
        .name_hashes()
        .ok()
}

/// Makes the moves of every part of a task durable, one fsync per folder (parts share
/// folders), before the registry records them.
pub(super) fn sync_all<'x, 'a: 'x>(parts: impl IntoIterator<Item = &'x mut TaskFiles<'a>>) {
    let mut dirs: Vec<&Dir> = Vec::new();
    for part in parts {
        let TaskFiles {
            touched, archiver, ..
        } = part;
        if touched.is_empty() {
            continue;
        }
        dirs.extend(touched.iter().map(|d| &**d));
        if let Some(Ok(a)) = archiver.as_mut()
            && let Ok(d) = a.open()
        {
            dirs.push(d);
        }
    }
    sync_dirs(dirs);
}

/// Archives `src_dir/name`; a copy to another filesystem is journaled first, so a crash
/// between its rename and the unlink of the original is finished (not duplicated) at restart.
fn archive_journaled(
    archiver: &mut Archiver,
    src: &SrcDir,
    name: &OsStr,
    journal: Option<&Mutex<Journal>>,
) -> Result<Archived, ArchiveError> {
    let src_dir = &*src.dir;
    let step = match journal {
        Some(j) if archiver.crosses_filesystems(src.identity) => {
            let src_len = src_dir
                .metadata(name)?
                .map(|m| m.id.size)
                .ok_or_else(|| FsError::io(src_dir.display(name), std::io::ErrorKind::NotFound))?;
            let adir = archiver.open()?;
            let mut partial = name.to_os_string();
            partial.push(".partial");
            let step = Step::Copy {
                src: src_dir.display(name),
                partial: adir.display(&partial),
                dest: adir.display(name),
                src_len,
            };
            match j.lock().expect("journal lock").begin(&[step]) {
                Ok(seqs) => Some((j, seqs)),
                Err(e) => {
                    tracing::warn!(
                        "journal: {e}; copying {} unjournaled",
                        src_dir.display(name).display()
                    );
                    None
                }
            }
        }
        _ => None,
    };
    let result = archiver.archive(src_dir, src.identity, name);
    if let Some((j, seqs)) = step {
        let mut j = j.lock().expect("journal lock");
        let recorded = match &result {
            Ok(_) => j.finish(&seqs),
            Err(_) => j.undo(&seqs),
        };
        if let Err(e) = recorded {
            tracing::warn!("journal: {e}");
        }
    }
    result
}
