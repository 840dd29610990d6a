//! Retention: which archives of cleaned agents go (by age, and by total size per workspace base), and removing exactly those.
//!
//! One function decides for `plan`, `status` and the real pass ([`survey`]): it lists each
//! task's archive folder through directory handles and asks the pure [`choose`] which
//! files go. [`remove`] then unlinks exactly the listed files, each only if it is still
//! the file listed (same inode, size and mtime), so what `plan` printed is what goes.
//!
//! Only a task whose every agent the pass found already cleaned (terminal status, cleanup
//! recorded, nothing left to do) has removable archives, and only files named after
//! those agents' logs (`<id>_stream.jsonl`, `<id>_progress.jsonl`, `<id>_findings.jsonl`,
//! `deploy_<id>.json`, plain or `.zst`). Everything else in an archive folder (a task
//! with an active or settling agent, an unreadable registry, a `.partial`, a stranger's
//! file) counts towards the base's size but is never removed.

use crate::archive::upload::ledger::Ledger;
use crate::config::{Config, Retention};
use crate::fs::{self as cfs, Compare, Dir, EntryKind, FileId, UnlinkOutcome};
use serde::Serialize;
use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[cfg(test)]
mod tests;

/// Why an archive goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    MaxAge,
    MaxTotalSize,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MaxAge => "max_age",
            Reason::MaxTotalSize => "max_total_size",
        }
    }
}

/// One archived file as [`choose`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub bytes: u64,
    pub mtime: SystemTime,
    /// Belongs to a cleaned agent of a task without any other agent.
    pub removable: bool,
}

/// The files that go, as indexes into `files` with the reason, oldest first (ties in the
/// order given): every
/// removable file older than `max_age`, then more removable files, oldest first, until
/// the total of all files (removable or not) fits `max_total_size`.
pub fn choose(files: &[Candidate], retention: &Retention, now: SystemTime) -> Vec<(usize, Reason)> {
    let mut order: Vec<usize> = (0..files.len()).filter(|&i| files[i].removable).collect();
    order.sort_by_key(|&i| files[i].mtime);
    let mut total: u64 = files.iter().map(|f| f.bytes).sum();
    let mut out = Vec::new();
    let mut rest = Vec::new();
    for i in order {
        let age = now.duration_since(files[i].mtime).unwrap_or(Duration::ZERO);
        if retention.max_age.is_some_and(|max| age > max) {
            total -= files[i].bytes;
            out.push((i, Reason::MaxAge));
        } else {
            rest.push(i);
        }
    }
    if let Some(max) = retention.max_total_size {
        for i in rest {
            if total <= max {
                break;
            }
            total -= files[i].bytes;
            out.push((i, Reason::MaxTotalSize));
        }
    }
    out
}

/// Archive sizes per base and task, and what retention removes (or, in `plan`, would).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ArchiveSurvey {
    pub bases: Vec<BaseArchives>,
    /// Whether `[retention]` is configured at all.
    pub retention: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct BaseArchives {
    pub base: PathBuf,
    pub bytes: u64,
    pub files: usize,
    pub tasks: Vec<TaskArchives>,
    /// What retention removes, oldest first.
    pub remove: Vec<Removal>,
    /// Filled by [`remove`]: what was removed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<PathBuf>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskArchives {
    pub task_id: String,
    pub folder: PathBuf,
    pub bytes: u64,
    pub files: usize,
    /// Every agent of the task is cleaned: its archives may be removed.
    pub cleaned: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Removal {
    pub path: PathBuf,
    pub bytes: u64,
    pub age_seconds: u64,
    pub reason: Reason,
    #[serde(skip)]
    dir: Option<Arc<Dir>>,
    #[serde(skip)]
    name: OsString,
    #[serde(skip)]
    id: Option<FileId>,
}

/// A task a pass looked at, as retention needs it.
#[derive(Debug, Clone)]
pub struct SeenTask<'a> {
    pub dir: &'a Path,
    pub task_id: &'a str,
    pub agent_ids: Vec<&'a str>,
    /// Every agent cleaned with nothing left to do, and the registry read without error:
    /// only then are its agents' archives removable.
    pub cleaned: bool,
}

/// Lists the archive folder of every task in `tasks` (grouped by workspace base) and
/// decides, with [`choose`], what `config.retention` removes. Changes nothing.
pub fn survey(config: &Config, tasks: &[SeenTask<'_>], now: SystemTime) -> ArchiveSurvey {
    let mut out = ArchiveSurvey {
        bases: Vec::new(),
        retention: config.retention.is_enabled(),
    };
    for base in &config.workspace_bases {
        let mut b = BaseArchives {
            base: base.clone(),
            bytes: 0,
            files: 0,
            tasks: Vec::new(),
            remove: Vec::new(),
            removed: Vec::new(),
            errors: Vec::new(),
        };
        let mut listed: Vec<(Candidate, Removal)> = Vec::new();
        // With object storage configured, a local archive is the only copy until it went up:
        // retention may only drop what the upload ledger says is in the bucket unchanged
        // (`keep_local`); without `keep_local` an uploaded archive is already gone locally.
        let uploaded = config.archive_url.as_ref().map(|_| {
            crate::config::layer::state_dir(config)
                .and_then(|d| Ledger::load(&d).ok())
                .unwrap_or_default()
        });
        let in_base = tasks
            .iter()
            .filter(|t| t.dir.parent() == Some(base.as_path()));
        for task in in_base {
            match list_task(config, base, task, uploaded.as_ref()) {
                Ok(None) => {}
                Ok(Some((summary, files))) => {
                    b.bytes += summary.bytes;
                    b.files += summary.files;
                    b.tasks.push(summary);
                    listed.extend(files);
                }
                Err(e) => b
                    .errors
                    .push(format!("{}: archives not listed: {e}", task.task_id)),
            }
        }
        if config.retention.is_enabled() {
            let candidates: Vec<Candidate> = listed.iter().map(|(c, _)| *c).collect();
            for (i, reason) in choose(&candidates, &config.retention, now) {
                let (c, r) = &listed[i];
                b.remove.push(Removal {
                    reason,
                    age_seconds: now.duration_since(c.mtime).unwrap_or_default().as_secs(),
                    ..r.clone()
                });
            }
        }
        out.bases.push(b);
    }
    out
}

/// Removes exactly the files [`survey`] listed, each only if it is still that file.
pub fn remove(survey: &mut ArchiveSurvey) {
    for base in &mut survey.bases {
        let mut synced: HashSet<(u64, u64)> = HashSet::new();
        for r in &base.remove {
            let (Some(dir), Some(id)) = (&r.dir, &r.id) else {
                continue;
            };
            match cfs::unlink_if_same(dir, &r.name, id, Compare::Unchanged) {
                Ok(UnlinkOutcome::Unlinked) => {
                    tracing::info!(path = %r.path.display(), bytes = r.bytes, reason = r.reason.as_str(), "retention removed archive");
                    base.removed.push(r.path.clone());
                    if synced.insert(dir.identity().unwrap_or_default())
                        && let Err(e) = dir.sync()
                    {
                        tracing::warn!(error = %e, "fsync of archive folder failed");
                    }
                }
                Ok(UnlinkOutcome::Gone) => {}
                Err(e) => base
                    .errors
                    .push(format!("{}: not removed: {e}", r.path.display())),
            }
        }
    }
}

/// The task's archive folder, listed: its summary and its files (none when it has no
/// archive folder).
#[allow(clippy::type_complexity)]
fn list_task(
    config: &Config,
    base: &Path,
    task: &SeenTask<'_>,
    uploaded: Option<&Ledger>,
) -> Result<Option<(TaskArchives, Vec<(Candidate, Removal)>)>, cfs::FsError> {
    let dir = match &config.archive_dir {
        Some(root) => Dir::open_base(root).and_then(|d| d.open_dir(task.task_id)),
        None => Dir::open_base(base)
            .and_then(|b| b.open_dir(task.task_id))
            .and_then(|t| t.open_dir("archive")),
    };
    let dir = match dir {
        Ok(d) => Arc::new(d),
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e),
    };
    let cleaned = task.cleaned;
    let ours: HashSet<OsString> = if cleaned {
        task.agent_ids.iter().flat_map(|id| log_names(id)).collect()
    } else {
        HashSet::new()
    };
    let mut summary = TaskArchives {
        task_id: task.task_id.to_string(),
        folder: dir.path().to_path_buf(),
        bytes: 0,
        files: 0,
        cleaned,
    };
    let mut files = Vec::new();
    for entry in dir.list()? {
        if !matches!(entry.kind, EntryKind::File | EntryKind::Unknown) {
            continue;
        }
        let Some(meta) = dir.metadata(&entry.name)? else {
            continue;
        };
        if meta.kind != EntryKind::File {
            continue;
        }
        summary.bytes += meta.id.size;
        summary.files += 1;
        let mtime = UNIX_EPOCH
            + Duration::new(
                meta.id.mtime.0.max(0) as u64,
                meta.id.mtime.1.clamp(0, 999_999_999) as u32,
            );
        let path = dir.display(&entry.name);
        let candidate = Candidate {
            bytes: meta.id.size,
            mtime,
            // A second name for the file would keep its bytes anyway; never ours to drop.
            removable: cleaned
                && meta.nlink == 1
                && ours.contains(&entry.name)
                && uploaded.is_none_or(|l| l.has(&path, &meta.id)),
        };
        let removal = Removal {
            path,
            bytes: meta.id.size,
            age_seconds: 0,
            reason: Reason::MaxAge,
            dir: Some(Arc::clone(&dir)),
            name: entry.name,
            id: Some(meta.id),
        };
        files.push((candidate, removal));
    }
    // Files of one age go in name order, whatever order the folder lists them in.
    files.sort_by(|a, b| a.1.name.cmp(&b.1.name));
    Ok(Some((summary, files)))
}

/// The archive names an agent's logs can have, plain and compressed.
fn log_names(id: &str) -> Vec<OsString> {
    let plain = [
        format!("{id}_stream.jsonl"),
        format!("{id}_progress.jsonl"),
        format!("{id}_findings.jsonl"),
        format!("deploy_{id}.json"),
    ];
    plain
        .into_iter()
        .flat_map(|p| {
            let zst = format!("{p}{}", super::compress::ZST_SUFFIX);
            [OsString::from(p), OsString::from(zst)]
        })
        .collect()
}

/// `1536` → `"1.5 KiB"`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `plan`/`once` text: what retention removes (or would).
pub fn render_removals(survey: &ArchiveSurvey, done: bool, out: &mut String) {
    use std::fmt::Write;
    if !survey.retention {
        return;
    }
    for b in &survey.bases {
        let (list, verb): (Vec<&Path>, &str) = if done {
            (b.removed.iter().map(PathBuf::as_path).collect(), "removed")
        } else {
            (
                b.remove.iter().map(|r| r.path.as_path()).collect(),
                "would remove",
            )
        };
        let bytes: u64 = b
            .remove
            .iter()
            .filter(|r| list.contains(&r.path.as_path()))
            .map(|r| r.bytes)
            .sum();
        let _ = writeln!(
            out,
            "\nRetention in {}: {verb} {} archive(s), {}",
            b.base.display(),
            list.len(),
            human_bytes(bytes)
        );
        for r in b.remove.iter().filter(|r| list.contains(&r.path.as_path())) {
            let _ = writeln!(
                out,
                "  {} ({}, {} day(s) old, {})",
                r.path.display(),
                human_bytes(r.bytes),
                r.age_seconds / 86_400,
                r.reason.as_str()
            );
        }
        for e in &b.errors {
            let _ = writeln!(out, "  error: {e}");
        }
    }
}

/// `status` text: archive sizes per task and per base, and what retention removes next.
pub fn render_sizes(survey: &ArchiveSurvey, out: &mut String) {
    use std::fmt::Write;
    for b in &survey.bases {
        let _ = writeln!(
            out,
            "\nArchives in {}: {} in {} file(s)",
            b.base.display(),
            human_bytes(b.bytes),
            b.files
        );
        for t in &b.tasks {
            let _ = writeln!(
                out,
                "  {:<32} {:>10} {:>6} file(s){}",
                t.task_id,
                human_bytes(t.bytes),
                t.files,
                if t.cleaned {
                    ""
                } else {
                    "  (kept: agents not all cleaned)"
                }
            );
        }
        if survey.retention {
            let bytes: u64 = b.remove.iter().map(|r| r.bytes).sum();
            let _ = writeln!(
                out,
                "  retention removes next: {} archive(s), {}",
                b.remove.len(),
                human_bytes(bytes)
            );
        }
        for e in &b.errors {
            let _ = writeln!(out, "  error: {e}");
        }
    }
}
