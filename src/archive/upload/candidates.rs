//! Which archives are settled enough to upload: the decision (pure) and the walk that
//! gathers its facts through `crate::fs` handles.
//!
//! Settled means all of:
//! - it is an archive the daemon made: a regular file with one link in a task's archive
//!   folder, named as one of an agent's logs (or its `.zst`), not a working file;
//! - its agent is cleaned and no late bytes are pending: the live file it was archived
//!   from (`logs/<name>`, `progress/<name>`, `findings/<name>`) is absent. Archiving only
//!   happens once the agent's processes are gone and its logs settled; a live file back at
//!   that name is a late write the next pass appends to this archive (`crate::archive::late`), so
//!   uploading now would ship a copy that is about to grow;
//! - no journal step is pending on it (an append, a copy, a compression, an upload);
//! - with `compress = true`, a log of a kind in `compress_kinds` is already compressed
//!   (`.zst`): the plain one is about to be replaced;
//! - it has not changed for `upload_after`;
//! - with `keep_local`, it is not already uploaded as it is now (the ledger).

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::config::Config;
use crate::fs::{Dir, EntryKind, FileId};

/// Why an archive is not uploaded (yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotYet {
    /// Not an archive name the daemon makes (a working file, a dotfile).
    NotAnArchive,
    /// More than one hard link: refused, like every agent-writable file.
    HardLinked,
    /// Changed less than `upload_after` ago.
    Young,
    /// Its live file is back: late bytes will be appended first.
    LateBytesPending,
    /// A journal step is still working on it.
    StepPending,
    /// `compress = true` and not compressed yet.
    AwaitingCompression,
    /// Uploaded and kept local (`keep_local`), unchanged since.
    AlreadyUploaded,
}

/// What the walk found out about one file in an archive folder.
#[derive(Debug, Clone)]
pub(crate) struct Facts<'a> {
    pub name: &'a str,
    pub nlink: u64,
    pub mtime: SystemTime,
    pub source_present: bool,
    pub step_pending: bool,
    /// `compress = true` covers its kind (`compress_kinds`) and it is not `.zst` yet.
    pub awaiting_compression: bool,
    pub in_ledger: bool,
}

/// The decision for one file (pure).
pub(crate) fn judge(f: &Facts, now: SystemTime, upload_after: Duration) -> Result<(), NotYet> {
    if !is_archive_name(f.name) {
        return Err(NotYet::NotAnArchive);
    }
    if f.nlink != 1 {
        return Err(NotYet::HardLinked);
    }
    if f.step_pending {
        return Err(NotYet::StepPending);
    }
    if f.source_present {
        return Err(NotYet::LateBytesPending);
    }
    if f.awaiting_compression {
        return Err(NotYet::AwaitingCompression);
    }
    if f.in_ledger {
        return Err(NotYet::AlreadyUploaded);
    }
    let age = now.duration_since(f.mtime).unwrap_or(Duration::ZERO);
    if age < upload_after {
        return Err(NotYet::Young);
    }
    Ok(())
}

/// A name the daemon gives archives: one of an agent's logs (`<id>_stream.jsonl`,
/// `<id>_progress.jsonl`, `<id>_findings.jsonl`, `deploy_<id>.json`, or their `.zst`),
/// agent-id characters, no leading dot, not a working file of a copy or compression.
pub(crate) fn is_archive_name(name: &str) -> bool {
    source_of(name).is_some()
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && ![".partial", ".tmp", ".part"]
            .iter()
            .any(|s| name.ends_with(s))
}

/// The live file an archive was made from, relative to the task folder (`.zst` stripped).
pub(crate) fn source_of(name: &str) -> Option<PathBuf> {
    let plain = name.strip_suffix(".zst").unwrap_or(name);
    let folder = if plain.ends_with("_stream.jsonl") || plain.starts_with("deploy_") {
        "logs"
    } else if plain.ends_with("_progress.jsonl") {
        "progress"
    } else if plain.ends_with("_findings.jsonl") {
        "findings"
    } else {
        return None;
    };
    Some(Path::new(folder).join(plain))
}

/// One settled archive, ready to upload. It holds no descriptor (a backlog of thousands
/// of task folders must not hold thousands open): [`Candidate::open_folder`] reopens its
/// archive folder, without following a symlink below the configured folders.
#[derive(Debug)]
pub(crate) struct Candidate {
    /// The workspace base (as configured) and, when set, `archive_dir`.
    pub base: PathBuf,
    pub archive_dir: Option<PathBuf>,
    pub name: OsString,
    /// Display path (journal, ledger, messages).
    pub path: PathBuf,
    pub file: FileId,
    /// The workspace base's folder name, the task id: parts of the object key.
    pub base_name: String,
    pub task_id: String,
}

impl Candidate {
    /// The archive folder: `<archive_dir>/<task id>` or `<base>/<task id>/archive`.
    pub(crate) fn open_folder(&self) -> Result<Dir, crate::fs::FsError> {
        match &self.archive_dir {
            Some(root) => Dir::open_base(root)?.open_dir(&self.task_id),
            None => Dir::open_base(&self.base)?
                .open_dir(&self.task_id)?
                .open_dir("archive"),
        }
    }
}

/// Settled archives below every base, and one line per base or folder that could not be
/// looked at. `pending` holds the paths journal steps are working on.
pub(crate) fn gather(
    config: &Config,
    pending: &HashSet<PathBuf>,
    in_ledger: &dyn Fn(&Path, &FileId) -> bool,
    now: SystemTime,
) -> (Vec<Candidate>, Vec<String>) {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    let archive_root = match &config.archive_dir {
        None => None,
        Some(root) => match Dir::open_base(root) {
            Ok(d) => Some(d),
            // Nothing archived there yet.
            Err(e) if e.is_not_found() => return (out, problems),
            Err(e) => {
                problems.push(e.to_string());
                return (out, problems);
            }
        },
    };
    for base in &config.workspace_bases {
        let base_name = base
            .file_name()
            .map_or_else(|| "workspace".into(), |n| n.to_string_lossy().into_owned());
        let base_dir = match Dir::open_base(base) {
            Ok(d) => d,
            Err(e) => {
                problems.push(e.to_string());
                continue;
            }
        };
        let listed = match base_dir.list() {
            Ok(l) => l,
            Err(e) => {
                problems.push(e.to_string());
                continue;
            }
        };
        for entry in listed {
            let Some(task_id) = entry.name.to_str() else {
                continue;
            };
            if entry.kind != EntryKind::Dir || !task_id.starts_with("TASK-") {
                continue;
            }
            let Ok(task_dir) = base_dir.open_dir(task_id) else {
                continue;
            };
            let archive = match &archive_root {
                Some(root) => root.open_dir(task_id),
                None => task_dir.open_dir("archive"),
            };
            let archive = match archive {
                Ok(a) => a,
                Err(e) if e.is_not_found() => continue,
                Err(e) => {
                    problems.push(e.to_string());
                    continue;
                }
            };
            let names = match archive.list() {
                Ok(n) => n,
                Err(e) => {
                    problems.push(e.to_string());
                    continue;
                }
            };
            for listed in names {
                if listed.kind != EntryKind::File {
                    continue;
                }
                let Some(name) = listed.name.to_str() else {
                    continue;
                };
                if !is_archive_name(name) {
                    continue;
                }
                let Ok(Some(meta)) = archive.metadata(name) else {
                    continue;
                };
                if meta.kind != EntryKind::File {
                    continue;
                }
                let path = archive.display(name);
                let source_present = source_of(name)
                    .is_some_and(|rel| task_dir.metadata(&rel).map_or(true, |m| m.is_some()));
                let mtime = SystemTime::UNIX_EPOCH
                    + Duration::new(meta.id.mtime.0.max(0) as u64, meta.id.mtime.1.max(0) as u32);
                let facts = Facts {
                    name,
                    nlink: meta.nlink,
                    mtime,
                    source_present,
                    step_pending: pending.contains(&path),
                    awaiting_compression: config.compress
                        && !name.ends_with(crate::archive::compress::ZST_SUFFIX)
                        && crate::archive::compress::kind_of(listed.name.as_ref())
                            .is_some_and(|k| config.compress_kinds.contains(&k)),
                    in_ledger: in_ledger(&path, &meta.id),
                };
                if judge(&facts, now, config.upload_after).is_ok() {
                    out.push(Candidate {
                        base: base.clone(),
                        archive_dir: config.archive_dir.clone(),
                        name: listed.name.clone(),
                        path,
                        file: meta.id,
                        base_name: base_name.clone(),
                        task_id: task_id.to_string(),
                    });
                }
            }
        }
    }
    (out, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(name: &str) -> Facts<'_> {
        Facts {
            name,
            nlink: 1,
            mtime: SystemTime::UNIX_EPOCH,
            source_present: false,
            step_pending: false,
            awaiting_compression: false,
            in_ledger: false,
        }
    }

    #[test]
    fn only_quiet_archives_without_pending_bytes_are_settled() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(600);
        let wait = Duration::from_secs(300);
        assert_eq!(judge(&facts("a_stream.jsonl"), now, wait), Ok(()));
        let young = Facts {
            mtime: now - Duration::from_secs(10),
            ..facts("a_stream.jsonl")
        };
        assert_eq!(judge(&young, now, wait), Err(NotYet::Young));
        let late = Facts {
            source_present: true,
            ..facts("a_progress.jsonl")
        };
        assert_eq!(judge(&late, now, wait), Err(NotYet::LateBytesPending));
        let linked = Facts {
            nlink: 2,
            ..facts("a_stream.jsonl")
        };
        assert_eq!(judge(&linked, now, wait), Err(NotYet::HardLinked));
        let busy = Facts {
            step_pending: true,
            ..facts("a_stream.jsonl")
        };
        assert_eq!(judge(&busy, now, wait), Err(NotYet::StepPending));
        let plain = Facts {
            awaiting_compression: true,
            ..facts("a_stream.jsonl")
        };
        assert_eq!(judge(&plain, now, wait), Err(NotYet::AwaitingCompression));
        for working in [
            "a_stream.jsonl.partial",
            ".x_stream.jsonl",
            "a_stream.jsonl.zst.partial",
            "a b_stream.jsonl",
            "notes.txt",
            "AGENT_REGISTRY.json",
        ] {
            assert_eq!(judge(&facts(working), now, wait), Err(NotYet::NotAnArchive));
        }
    }

    #[test]
    fn each_archive_name_maps_to_its_live_file() {
        assert_eq!(
            source_of("a_stream.jsonl"),
            Some("logs/a_stream.jsonl".into())
        );
        assert_eq!(
            source_of("a_stream.jsonl.zst"),
            Some("logs/a_stream.jsonl".into())
        );
        assert_eq!(
            source_of("a_progress.jsonl"),
            Some("progress/a_progress.jsonl".into())
        );
        assert_eq!(
            source_of("a_findings.jsonl"),
            Some("findings/a_findings.jsonl".into())
        );
        assert_eq!(
            source_of("deploy_a.json"),
            Some("logs/deploy_a.json".into())
        );
        assert_eq!(source_of("notes.txt"), None);
    }
}
