//! The daemon's write-ahead journal: steps recorded before they start, settled after a crash.
//!
//! `<state_dir>/journal.jsonl` holds one JSON record per line, appended with `O_APPEND`
//! and fsynced:
//!
//! ```text
//! {"seq":1,"op":"begin","step":{"kind":"append",...}}
//! {"seq":1,"op":"appended"}      (late-write appends only: the archive holds the bytes)
//! {"seq":1,"op":"done"}          (or "undone")
//! ```
//!
//! A step is pending from its `begin` until its `done`/`undone`. All records written by
//! one call share one fsync, so a round that begins a thousand steps pays one fsync, not a
//! thousand. A crash mid-write leaves at most a torn last line (no trailing newline):
//! it was never fsynced, so nothing acted on it, and [`Journal::open`] cuts it off.
//!
//! Compaction: a journal with nothing pending is truncated to zero on open, and once it
//! passes [`COMPACT_AT`]; with steps still pending it is rewritten to hold only them
//! (temp file, fsync, rename, fsync of the folder). The file is ours alone, so a rename
//! is safe here (unlike the registry, whose writers hold flocks on it).
//!
//! [`crate::archive::recover::recover`] settles the steps [`Journal::open`] found pending.

use std::collections::BTreeMap;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fs::RegularFile;

/// The journal's file name inside the state dir.
pub const JOURNAL_FILE: &str = "journal.jsonl";
/// Size past which the journal is compacted after a `done`.
pub const COMPACT_AT: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: cannot encode journal record: {source}")]
    Encode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// One multi-step operation, as recorded in a `begin` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Step {
    /// A late write appended to an uncompressed archive (`crate::archive::late`).
    Append(LateAppend),
    /// A cross-filesystem archive copy: `src` → `partial` → `dest`, then `src` unlinked.
    Copy {
        src: PathBuf,
        partial: PathBuf,
        dest: PathBuf,
        src_len: u64,
    },
    /// An archived log being compressed: `archive` → `partial` → `zst`, then `archive`
    /// unlinked if it is still `archive_id` (`crate::archive::compress`).
    Compress {
        archive: PathBuf,
        zst: PathBuf,
        partial: PathBuf,
        archive_id: crate::fs::FileId,
    },
    /// A late write appended to a compressed archive as one more zstd frame
    /// (`crate::archive::compress::frame`).
    AppendFrame(LateAppend),
    /// A registry rewrite; informative only, the registry recovers through its sidecar.
    RegistryWrite { registry: PathBuf, sidecar: PathBuf },
    /// An archive being uploaded to object storage under `key` (`s3://bucket/key`); once
    /// the object is verified (an `uploaded` record), the local file goes if it is still
    /// the one `file` describes, unless `keep_local`.
    Upload {
        local: PathBuf,
        url: String,
        key: String,
        file: crate::fs::FileId,
        keep_local: bool,
    },
}

/// A late write (`src`, recreated after archiving) being appended to `archive`, which
/// was `archive_len` bytes long before the append: the record of [`Step::Append`] and
/// [`Step::AppendFrame`] (same fields, same JSON as when they were inline).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LateAppend {
    pub src: PathBuf,
    pub archive: PathBuf,
    pub archive_len: u64,
    pub src_dev: u64,
    pub src_ino: u64,
    pub src_len: u64,
    /// Birth time (ns since the epoch) where the filesystem reports one: an inode
    /// number is reused as soon as it is freed, e.g. right after our unlink, so
    /// dev/ino alone cannot tell our file from a late write made after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_birth_ns: Option<u64>,
}

impl LateAppend {
    /// The record for appending the open source `src` (as it is now) to `archive`.
    pub(crate) fn new(src: &RegularFile, archive: PathBuf, archive_len: u64) -> Self {
        LateAppend {
            src: src.path.clone(),
            archive,
            archive_len,
            src_dev: src.id.dev,
            src_ino: src.id.ino,
            src_len: src.id.size,
            src_birth_ns: crate::fs::birth_ns(&src.file),
        }
    }

    /// Whether `f` is the recorded source: same dev/ino, and same birth time where both
    /// sides know one.
    pub(crate) fn is_source(&self, f: &RegularFile) -> bool {
        let born_same = match (self.src_birth_ns, crate::fs::birth_ns(&f.file)) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        (f.id.dev, f.id.ino) == (self.src_dev, self.src_ino) && born_same
    }
}

/// A step begun but neither done nor undone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub seq: u64,
    pub step: Step,
    /// The step's durable midpoint was recorded: for an append (`appended`), the archive
    /// durably holds the source's bytes; for an upload (`uploaded`), the object is verified.
    pub appended: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Op {
    Begin,
    Appended,
    Uploaded,
    Done,
    Undone,
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    seq: u64,
    op: Op,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    step: Option<Step>,
}

pub struct Journal {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    /// Length of the file up to its last complete record.
    len: u64,
    next_seq: u64,
    pending: BTreeMap<u64, Pending>,
    syncs: u64,
    /// Trusted folders (workspace bases, `archive_dir`) the recorded paths lie below.
    roots: Vec<PathBuf>,
}

impl Journal {
    /// Opens (creating when missing) `<state_dir>/journal.jsonl` and returns the steps
    /// left pending by the previous run, oldest first. Settle them with [`recover`].
    pub fn open(state_dir: &Path) -> Result<(Journal, Vec<Pending>), JournalError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(|e| io_err(state_dir, e))?;
        let path = state_dir.join(JOURNAL_FILE);
        // A temp file left by a compaction that crashed before its rename: the journal
        // itself is still whole.
        let tmp = tmp_path(&path);
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&tmp, e)),
            _ => {}
        }
        let mut file = open_append(&path)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data).map_err(|e| io_err(&path, e))?;

        let mut j = Journal {
            dir: state_dir.to_path_buf(),
            path,
            file,
            len: data.len() as u64,
            next_seq: 1,
            pending: BTreeMap::new(),
            syncs: 0,
            roots: Vec::new(),
        };
        let complete = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if complete < data.len() {
            tracing::warn!(
                path = %j.path.display(),
                bytes = data.len() - complete,
                "dropping torn last journal record"
            );
            j.truncate(complete as u64)?;
        }
        let mut records = 0usize;
        for line in data[..complete].split(|&b| b == b'\n') {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            records += 1;
            match serde_json::from_slice::<Record>(line) {
                Ok(r) => j.apply(r),
                // Never fsynced (a crash can leave zeroed blocks), so nothing acted on it.
                Err(e) => tracing::warn!(
                    path = %j.path.display(),
                    error = %e,
                    "skipping unreadable journal record"
                ),
            }
        }
        // A fresh file's name must be durable before any record in it counts.
        sync_dir(&j.dir)?;
        let live = j.pending.len() + j.pending.values().filter(|p| p.appended).count();
        if records > live {
            j.compact()?;
        }
        let pending = j.pending.values().cloned().collect();
        Ok((j, pending))
    }

    /// The trusted folders (workspace bases, `archive_dir`) below which recorded paths are
    /// reopened at recovery: each path is resolved beneath the longest root it starts
    /// with, no symlink followed below it. Set before [`recover`]. Without roots (tests),
    /// a recorded path's parent folder is trusted as it is.
    pub fn set_roots(&mut self, roots: Vec<PathBuf>) {
        self.roots = roots;
    }

    /// The folder holding the recorded `path` (opened beneath its root) and its name.
    /// A path below none of the roots is refused.
    pub fn locate(
        &self,
        path: &Path,
    ) -> Result<(crate::fs::Dir, std::ffi::OsString), crate::fs::FsError> {
        crate::fs::open_parent_within(path, &self.roots)
    }

    /// Records the start of `steps` (all in one write and one fsync) and returns their
    /// sequence numbers, in order. Act on a step only after this returns.
    pub fn begin(&mut self, steps: &[Step]) -> Result<Vec<u64>, JournalError> {
        let seqs: Vec<u64> = (self.next_seq..).take(steps.len()).collect();
        let records = seqs.iter().zip(steps).map(|(&seq, step)| Record {
            seq,
            op: Op::Begin,
            step: Some(step.clone()),
        });
        self.write_records(records)?;
        self.next_seq += steps.len() as u64;
        for (&seq, step) in seqs.iter().zip(steps) {
            let step = step.clone();
            self.pending.insert(
                seq,
                Pending {
                    seq,
                    step,
                    appended: false,
                },
            );
        }
        Ok(seqs)
    }

    /// Records that the archive durably holds the appended bytes of these steps.
    pub fn mark_appended(&mut self, seqs: &[u64]) -> Result<(), JournalError> {
        let seqs = self.known(seqs);
        self.write_records(seqs.iter().map(|&seq| rec(seq, Op::Appended)))?;
        for seq in seqs {
            if let Some(p) = self.pending.get_mut(&seq) {
                p.appended = true;
            }
        }
        Ok(())
    }

    /// Records that the objects of these upload steps are stored and verified.
    pub fn mark_uploaded(&mut self, seqs: &[u64]) -> Result<(), JournalError> {
        let seqs = self.known(seqs);
        self.write_records(seqs.iter().map(|&seq| rec(seq, Op::Uploaded)))?;
        for seq in seqs {
            if let Some(p) = self.pending.get_mut(&seq) {
                p.appended = true;
            }
        }
        Ok(())
    }

    /// Records that these steps completed (one write, one fsync).
    pub fn finish(&mut self, seqs: &[u64]) -> Result<(), JournalError> {
        self.end(seqs, Op::Done)
    }

    /// Records that these steps were rolled back (one write, one fsync).
    pub fn undo(&mut self, seqs: &[u64]) -> Result<(), JournalError> {
        self.end(seqs, Op::Undone)
    }

    /// Steps begun and not yet done or undone, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = &Pending> {
        self.pending.values()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many fsyncs of the journal file this handle has made (for tests and stats).
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    fn end(&mut self, seqs: &[u64], op: Op) -> Result<(), JournalError> {
        let seqs = self.known(seqs);
        self.write_records(seqs.iter().map(|&seq| rec(seq, op)))?;
        for seq in &seqs {
            self.pending.remove(seq);
        }
        if !seqs.is_empty() && self.len > COMPACT_AT {
            self.compact()?;
        }
        Ok(())
    }

    /// Drops sequence numbers that are not pending (already ended, or never begun), so a
    /// double `finish` writes nothing.
    fn known(&self, seqs: &[u64]) -> Vec<u64> {
        let (known, unknown): (Vec<u64>, Vec<u64>) =
            seqs.iter().partition(|s| self.pending.contains_key(s));
        if !unknown.is_empty() {
            tracing::warn!(?unknown, "journal: ignoring steps that are not pending");
        }
        known
    }

    fn apply(&mut self, r: Record) {
        self.next_seq = self.next_seq.max(r.seq + 1);
        match (r.op, r.step) {
            (Op::Begin, Some(step)) => {
                let p = Pending {
                    seq: r.seq,
                    step,
                    appended: false,
                };
                self.pending.insert(r.seq, p);
            }
            (Op::Begin, None) => tracing::warn!(seq = r.seq, "journal: begin without a step"),
            (Op::Appended | Op::Uploaded, _) => {
                if let Some(p) = self.pending.get_mut(&r.seq) {
                    p.appended = true;
                }
            }
            (Op::Done | Op::Undone, _) => {
                self.pending.remove(&r.seq);
            }
        }
    }

    /// Appends `records` in one write and fsyncs once. On failure the file is cut back
    /// to its last complete record, so a half-written line cannot glue onto the next.
    fn write_records(&mut self, records: impl Iterator<Item = Record>) -> Result<(), JournalError> {
        let mut buf = Vec::new();
        for r in records {
            serde_json::to_writer(&mut buf, &r).map_err(|source| JournalError::Encode {
                path: self.path.clone(),
                source,
            })?;
            buf.push(b'\n');
        }
        if buf.is_empty() {
            return Ok(());
        }
        let res = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data());
        self.syncs += 1;
        match res {
            Ok(()) => {
                self.len += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                if let Err(e2) = self.truncate(self.len) {
                    tracing::warn!(error = %e2, "journal: could not cut back a failed write");
                }
                Err(io_err(&self.path, e))
            }
        }
    }

    fn truncate(&mut self, len: u64) -> Result<(), JournalError> {
        self.file.set_len(len).map_err(|e| io_err(&self.path, e))?;
        self.file.sync_data().map_err(|e| io_err(&self.path, e))?;
        self.syncs += 1;
        self.len = len;
        Ok(())
    }

    /// Keeps only the pending steps: truncation when there are none, else a rewrite
    /// through a temp file renamed over the journal.
    fn compact(&mut self) -> Result<(), JournalError> {
        if self.pending.is_empty() {
            return self.truncate(0);
        }
        let mut buf = Vec::new();
        for p in self.pending.values() {
            let mut lines = vec![Record {
                seq: p.seq,
                op: Op::Begin,
                step: Some(p.step.clone()),
            }];
            if p.appended {
                let op = match p.step {
                    Step::Upload { .. } => Op::Uploaded,
                    _ => Op::Appended,
                };
                lines.push(rec(p.seq, op));
            }
            for r in lines {
                serde_json::to_writer(&mut buf, &r).map_err(|source| JournalError::Encode {
                    path: self.path.clone(),
                    source,
                })?;
                buf.push(b'\n');
            }
        }
        let tmp = tmp_path(&self.path);
        let write = || -> io::Result<File> {
            match std::fs::remove_file(&tmp) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            let mut f = OpenOptions::new()
                .read(true)
                .append(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&tmp)?;
            f.write_all(&buf)?;
            f.sync_all()?;
            Ok(f)
        };
        let file = write().map_err(|e| io_err(&tmp, e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| io_err(&self.path, e))?;
        // Keep writing through the fd that now has the journal's name: no reopen that
        // could fail and leave us appending to the replaced, nameless file.
        self.file = file;
        self.len = buf.len() as u64;
        self.syncs += 2;
        sync_dir(&self.dir)
    }
}

fn rec(seq: u64, op: Op) -> Record {
    Record {
        seq,
        op,
        step: None,
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(".tmp");
    PathBuf::from(s)
}

fn open_append(path: &Path) -> Result<File, JournalError> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| io_err(path, e))
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_err(dir, e))
}

fn io_err(path: &Path, source: io::Error) -> JournalError {
    JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}
