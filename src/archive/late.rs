//! Late writes: a log recreated after archiving is appended to its archive exactly once.
//!
//! The orchestrator appends with `open('a')`/write/close and no lock, so after
//! `progress/x.jsonl` went to `archive/x.jsonl` a late writer may recreate it. Once the
//! new file has settled (the caller decides), [`append_late_write`] moves its bytes to
//! the archive's end. Bytes, not lines: an archive whose last line lacks its newline
//! gets the new bytes right after it, nothing dropped, nothing added.
//!
//! State machine of one append (J = journal record, fsynced before the next state):
//!
//! ```text
//! S0 ──J begin{archive_len, src dev/ino/len}──▶ S1 ──copy, fsync, verify──▶ S2
//! S2 ──J appended──▶ S3 ──unlink src, fsync its folder, rescue tail──▶ S4 ──J done──▶ end
//! S1/S2/S3 with src changed or verify failed ──truncate archive to archive_len, fsync──▶ J undone
//! ```
//!
//! Recovery of a pending append, decided from the records and the files alone:
//! * no `appended` (S1, S2, or an undo cut short): the archive's bytes past `archive_len`
//!   can only be (a prefix of) our copy, and the source was not unlinked (that needs
//!   `appended`). Truncate back to `archive_len`, record `undone`, and redo the append at
//!   once if the same source file is still there.
//! * `appended` (S3, S4): the archive durably held `src[..src_len]` at `archive_len`.
//!   - source name gone: we unlinked it → `done`.
//!   - same file, same length, bytes equal the archive's tail: the unlink did not
//!     happen → unlink, fsync the folder, `done`.
//!   - same file grown, prefix equal: a writer appended before the unlink → truncate
//!     back, `undone`; the whole file is retried once it settles.
//!   - same file, archive already cut back to `archive_len` (an undo cut short) → `undone`.
//!   - another file at the name: a new late write made after our unlink → `done`; it
//!     is the caller's next job.
//!
//! "Same file" is dev/ino plus birth time where the filesystem keeps one: the inode
//! number of the unlinked source is reused at once. Any state none of these steps can
//! leave (archive shorter than recorded, or grown by more than the source) is reported
//! as `LeftAlone`, nothing removed. Either way a byte is in the archive xor in the
//! source, never both, never neither.
//!
//! A failure before the unlink undoes at once; after it, the step stays pending and
//! [`append_late_write`] refuses that archive (`LateError::Pending`) until recovery at
//! the next start, since a new step would record a length including stray bytes.
//!
//! The recovery steps shared with the compressed variant (`crate::archive::compress::frame`,
//! the same protocol with a zstd frame as the appended bytes) are here: reopening the
//! recorded archive and source, finishing the unlink, leaving a step alone.
//!
//! Limits: one append per archive at a time (the caller serialises them). A writer that
//! opened the source before our unlink and writes after our rescue read loses those
//! bytes into the nameless inode; without a lock this window cannot be closed.

use crate::fs::{self as cfs, Compare, Dir, FsError, Purpose, RegularFile, UnlinkOutcome};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::archive::outcome::{AppendOutcome, RecoveryAction};
use crate::journal::{Journal, JournalError, LateAppend, Pending, Step};

#[derive(Debug, thiserror::Error)]
pub enum LateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path}: not a regular file (a symlink or reached through one, a FIFO, device or folder); left alone"
    )]
    NotRegular { path: PathBuf },
    #[error(transparent)]
    Fs(FsError),
    #[error("{src}: is the archive {archive} itself; left alone")]
    SameFile { src: PathBuf, archive: PathBuf },
    #[error("{src}: bytes appended to {archive} do not match; archive restored, source kept")]
    VerifyFailed { src: PathBuf, archive: PathBuf },
    #[error("{archive}: append {seq} still pending; settled at the next start")]
    Pending { archive: PathBuf, seq: u64 },
    #[error(transparent)]
    Journal(#[from] JournalError),
}

impl From<FsError> for LateError {
    fn from(e: FsError) -> Self {
        refused_path(e).map_or_else(LateError::Fs, |path| LateError::NotRegular { path })
    }
}

/// The path of a file refused as not regular (a symlink or reached through one, a FIFO,
/// device or folder), or `e` back when it failed otherwise. Both archive errors sort
/// `FsError`s by it, so a move and a late append refuse the same cases; it lives here,
/// not in `store`, because `store` already builds on this file.
pub(crate) fn refused_path(e: FsError) -> Result<PathBuf, FsError> {
    match e {
        FsError::Symlink { path }
        | FsError::NotRegular { path, .. }
        | FsError::NotDir { path, .. } => Ok(path),
        e => Err(e),
    }
}

/// Appends the settled late write `src` to the end of `archive` and unlinks `src`,
/// journaled so that a crash at any point is finished or undone by [`recover_append`].
/// Both parent folders are trusted as given (opened by path); the pass uses
/// [`append_late_write_at`] with handles.
pub fn append_late_write(
    src: &Path,
    archive: &Path,
    journal: &mut Journal,
) -> Result<AppendOutcome, LateError> {
    let out = append_with(src, archive, journal, CHUNK, |_| false)?;
    Ok(out.expect("only a test hook stops an append half-way"))
}

/// [`append_late_write`] between directory handles: `src_dir/src_name` is appended to
/// `archive_dir/archive_name`.
pub fn append_late_write_at(
    src_dir: &Dir,
    src_name: &OsStr,
    archive_dir: &Dir,
    archive_name: &OsStr,
    journal: &mut Journal,
) -> Result<AppendOutcome, LateError> {
    let src = Loc::new(src_dir, src_name);
    let archive = Loc::new(archive_dir, archive_name);
    let out = append_at(&src, &archive, journal, CHUNK, |_| false)?;
    Ok(out.expect("only a test hook stops an append half-way"))
}

const CHUNK: usize = 1 << 20;

/// A file as a (folder handle, name) pair, with its display path for messages and the journal.
struct Loc<'a> {
    dir: &'a Dir,
    name: &'a OsStr,
    path: PathBuf,
}

impl<'a> Loc<'a> {
    fn new(dir: &'a Dir, name: &'a OsStr) -> Self {
        Loc {
            dir,
            name,
            path: dir.display(name),
        }
    }
}

/// Points where tests stop an append (simulating SIGKILL) or inject a writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// `begin` is durable; the archive is untouched.
    Begun,
    /// One chunk of the source was written to the archive, not fsynced.
    Chunk,
    /// Every byte is appended, fsynced and verified; no `appended` record yet.
    Copied,
    /// The `appended` record is durable; the source is not unlinked yet.
    Marked,
    /// The source is unlinked and its folder fsynced; no `done` yet.
    Unlinked,
}

/// [`append_at`] for two paths whose parents are trusted (tests).
fn append_with(
    src: &Path,
    archive: &Path,
    journal: &mut Journal,
    chunk: usize,
    hook: impl FnMut(Stage) -> bool,
) -> Result<Option<AppendOutcome>, LateError> {
    let (sdir, sname) = crate::fs::open_parent_within(src, &[])?;
    let (adir, aname) = crate::fs::open_parent_within(archive, &[])?;
    let src = Loc::new(&sdir, &sname);
    let archive = Loc::new(&adir, &aname);
    append_at(&src, &archive, journal, chunk, hook)
}

/// The append, in chunks of `chunk` bytes; `hook` returning true stops it dead
/// (`Ok(None)`), leaving files and journal as a SIGKILL at that point would.
fn append_at(
    src: &Loc<'_>,
    archive: &Loc<'_>,
    journal: &mut Journal,
    chunk: usize,
    mut hook: impl FnMut(Stage) -> bool,
) -> Result<Option<AppendOutcome>, LateError> {
    // Regular files only, opened without following and without blocking.
    let sf = src.dir.open_file(src.name, Purpose::Read)?;
    let start = sf.id;
    // A step left pending by a failure mid-way may have left bytes past the length a
    // new step would record; recovery must settle it first.
    let busy = journal
        .pending()
        .find(|p| matches!(&p.step, Step::Append(a) if a.archive == archive.path));
    if let Some(p) = busy {
        return Err(LateError::Pending {
            archive: archive.path.clone(),
            seq: p.seq,
        });
    }
    let seen = archive.dir.open_file(archive.name, Purpose::Read)?;
    if seen.id.same_file(&start) {
        return Err(LateError::SameFile {
            src: src.path.clone(),
            archive: archive.path.clone(),
        });
    }
    // Appended to and deleted: one link each, or a link to an outside file would change.
    let mut af = archive.dir.open_file(archive.name, Purpose::Append)?;
    if !af.id.same_file(&seen.id) {
        return Err(LateError::Fs(FsError::Changed {
            path: archive.path.clone(),
            what: "replaced while being opened".into(),
        }));
    }
    if sf.links != 1 {
        return Err(LateError::Fs(FsError::HardLinked {
            path: src.path.clone(),
            links: sf.links,
        }));
    }
    let archive_len = af.id.size;
    let src_len = start.size;
    let step = Step::Append(LateAppend::new(&sf, archive.path.clone(), archive_len));
    let seq = journal.begin(&[step])?[0];
    if hook(Stage::Begun) {
        return Ok(None);
    }
    let apath = archive.path.as_path();
    let undo = |af: &File, journal: &mut Journal| -> Result<(), LateError> {
        af.set_len(archive_len).map_err(|e| io_err(apath, e))?;
        af.sync_all().map_err(|e| io_err(apath, e))?;
        journal.undo(&[seq])?;
        Ok(())
    };
    let mut unlinked = false;
    let mut run = || -> Result<Option<AppendOutcome>, LateError> {
        if !copy_verified(&sf, &mut af, archive_len, src_len, chunk, &mut hook)? {
            return Ok(None);
        }
        if sf.current()? != start {
            undo(&af.file, journal)?;
            return Ok(Some(AppendOutcome::Changed));
        }
        if hook(Stage::Copied) {
            return Ok(None);
        }
        journal.mark_appended(&[seq])?;
        if hook(Stage::Marked) {
            return Ok(None);
        }
        if sf.current()? != start {
            // Grew since the copy: undo rather than keep a prefix, so the retry appends
            // the whole file once.
            undo(&af.file, journal)?;
            return Ok(Some(AppendOutcome::Changed));
        }
        match cfs::unlink_if_same(src.dir, src.name, &start, Compare::Inode) {
            Ok(UnlinkOutcome::Unlinked | UnlinkOutcome::Gone) => {}
            // Someone else replaced the name: the archive holds every byte of the inode
            // we read, and the name is not ours to unlink any more.
            Err(FsError::Changed { .. }) => {
                tracing::warn!(path = %src.path.display(), "late write replaced during append; left alone")
            }
            Err(e) => return Err(e.into()),
        }
        unlinked = true;
        // `done` must not become durable before the unlink does, or a crash could bring
        // the name back with no pending step and the bytes would be appended twice.
        src.dir.sync()?;
        if hook(Stage::Unlinked) {
            return Ok(None);
        }
        // An `open('a')` writer that opened before the unlink wrote into the inode we
        // still hold: carry those bytes over. Logged, not returned: the name is gone.
        let rescued = rescue_tail(&sf.file, src_len, &mut af.file).unwrap_or_else(|e| {
            tracing::error!(path = %apath.display(), error = %e, "could not carry over bytes written during unlink");
            0
        });
        journal.finish(&[seq])?;
        Ok(Some(AppendOutcome::Appended {
            bytes: src_len,
            rescued,
        }))
    };
    match run() {
        // While the source is still there, undoing is always right; once it is gone the
        // step stays pending (it blocks this archive) until recovery settles it.
        Err(e) if !unlinked => Err(undo_after(undo(&af.file, journal), e)),
        r => r,
    }
}

/// Copies exactly `src[..src_len]` to the archive's end (a writer's later bytes wait
/// for the next round), fsyncs and verifies. False when the hook stopped it; a
/// mismatch (other than the source changing, which the caller checks) is an error.
fn copy_verified(
    sf: &RegularFile,
    af: &mut RegularFile,
    archive_len: u64,
    src_len: u64,
    chunk: usize,
    hook: &mut impl FnMut(Stage) -> bool,
) -> Result<bool, LateError> {
    let (src, archive) = (sf.path.as_path(), af.path.clone());
    let mut buf = vec![0u8; chunk.min(src_len as usize)];
    let mut off = 0u64;
    while off < src_len {
        let want = buf.len().min((src_len - off) as usize);
        let got = sf
            .file
            .read_at(&mut buf[..want], off)
            .map_err(|e| io_err(src, e))?;
        if got == 0 {
            break; // shrunk under us
        }
        af.file
            .write_all(&buf[..got])
            .map_err(|e| io_err(&archive, e))?;
        off += got as u64;
        if hook(Stage::Chunk) {
            return Ok(false);
        }
    }
    af.sync()?;
    let verified = off == src_len
        && af.current()?.size == archive_len + src_len
        && same_bytes(&sf.file, 0, &af.file, archive_len, src_len)
            .map_err(|e| io_err(&archive, e))?;
    if !verified {
        let changed = sf.current()?.size != src_len;
        if !changed {
            return Err(LateError::VerifyFailed {
                src: src.to_path_buf(),
                archive,
            });
        }
    }
    Ok(true)
}

/// Settles one pending [`Step::Append`] after a crash (see the module doc) and records
/// the result in the journal. The recorded paths are reopened beneath the journal's
/// trusted roots ([`Journal::locate`]), so a folder swapped for a symlink meanwhile is
/// refused, not followed.
pub fn recover_append(journal: &mut Journal, p: &Pending) -> Result<RecoveryAction, LateError> {
    let Step::Append(step) = &p.step else {
        unreachable!("recover_append called with {:?}", p.step);
    };
    let (src, archive) = (&step.src, &step.archive);
    let (archive_len, src_len) = (step.archive_len, step.src_len);
    let left_alone = |journal: &mut Journal, reason: String| -> Result<RecoveryAction, LateError> {
        Ok(left_alone(journal, p.seq, "append", reason)?)
    };
    let Some((adir, aname, af)) = open_recorded_archive(journal, step)? else {
        return left_alone(journal, format!("{} missing", archive.display()));
    };
    let alen = af.id.size;
    // The source, if the same file is still at its name.
    let source_dir = locate_source(journal, step)?;
    let sf = match &source_dir {
        Some((sdir, sname)) => open_source(step, sdir, sname)?,
        None => None,
    };
    let truncate = |len: u64| -> Result<(), LateError> {
        af.file.set_len(len).map_err(|e| io_err(archive, e))?;
        af.file.sync_all().map_err(|e| io_err(archive, e))
    };

    if p.appended {
        let Some(sf) = sf else {
            journal.finish(&[p.seq])?;
            return Ok(RecoveryAction::AlreadyDone);
        };
        let len = sf.id.size;
        let holds = alen >= archive_len + src_len
            && len >= src_len
            && same_bytes(&sf.file, 0, &af.file, archive_len, src_len)
                .map_err(|e| io_err(archive, e))?;
        if holds && len == src_len {
            let (sdir, sname) = source_dir.as_ref().expect("sf was opened in it");
            return unlink_source(journal, p.seq, "append", step, (sdir, sname), &sf);
        }
        if holds {
            truncate(archive_len)?;
        } else if alen != archive_len {
            let reason = format!(
                "{} does not end with {}; both kept",
                archive.display(),
                src.display()
            );
            return left_alone(journal, reason);
        }
        // Cut back now or by an undo that crashed before its record: src holds it all.
        journal.undo(&[p.seq])?;
        return Ok(RecoveryAction::Undone);
    }

    if alen > archive_len {
        let extra = alen - archive_len;
        // Only our copy can be there, so it is at most src_len bytes and a prefix of src.
        let ours = extra <= src_len
            && match &sf {
                Some(f) => {
                    f.id.size >= extra
                        && same_bytes(&f.file, 0, &af.file, archive_len, extra)
                            .map_err(|e| io_err(archive, e))?
                }
                None => true,
            };
        if !ours {
            return left_alone(
                journal,
                format!("{} grew past the recorded append", archive.display()),
            );
        }
        truncate(archive_len)?;
    } else if alen < archive_len {
        return left_alone(
            journal,
            format!("{} is shorter than recorded", archive.display()),
        );
    }
    journal.undo(&[p.seq])?;
    drop(sf);
    if let Some((sdir, sname)) = &source_dir
        && open_source(step, sdir, sname)?.is_some()
    {
        // It had settled when the step began; if it has changed since, the append says so.
        let out = append_late_write_at(sdir, sname, &adir, &aname, journal)?;
        return Ok(RecoveryAction::Redone(out));
    }
    Ok(RecoveryAction::Undone)
}

/// True when `a[a_off..a_off+len]` equals `b[b_off..b_off+len]`; false when either is short.
pub(crate) fn same_bytes(a: &File, a_off: u64, b: &File, b_off: u64, len: u64) -> io::Result<bool> {
    let mut x = vec![0u8; 64 * 1024];
    let mut y = vec![0u8; 64 * 1024];
    let mut off = 0u64;
    while off < len {
        let want = x.len().min((len - off) as usize);
        for (f, buf, base) in [(a, &mut x, a_off), (b, &mut y, b_off)] {
            match f.read_exact_at(&mut buf[..want], base + off) {
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
                r => r?,
            }
        }
        if x[..want] != y[..want] {
            return Ok(false);
        }
        off += want as u64;
    }
    Ok(true)
}

/// Appends what the (now nameless) source gained past `copied`; returns the byte count.
fn rescue_tail(src: &File, copied: u64, out: &mut File) -> io::Result<u64> {
    let len = src.metadata()?.len();
    if len <= copied {
        return Ok(0);
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut off = copied;
    while off < len {
        let want = buf.len().min((len - off) as usize);
        let got = src.read_at(&mut buf[..want], off)?;
        if got == 0 {
            break;
        }
        out.write_all(&buf[..got])?;
        off += got as u64;
    }
    out.sync_all()?;
    tracing::warn!(bytes = off - copied, "appended bytes written during unlink");
    Ok(off - copied)
}

/// The recorded archive of a late append, reopened for appending beneath the journal's
/// roots ([`Journal::locate`]); `None` when it or its folder is gone.
pub(crate) fn open_recorded_archive(
    journal: &Journal,
    step: &LateAppend,
) -> Result<Option<(Dir, OsString, RegularFile)>, FsError> {
    let found = journal
        .locate(&step.archive)
        .and_then(|(dir, name)| Ok((dir.open_file(&name, Purpose::Append)?, dir, name)));
    match found {
        Ok((file, dir, name)) => Ok(Some((dir, name, file))),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// The recorded source's folder (beneath the journal's roots) and name; `None` when the
/// folder is gone.
pub(crate) fn locate_source(
    journal: &Journal,
    step: &LateAppend,
) -> Result<Option<(Dir, OsString)>, FsError> {
    match journal.locate(&step.src) {
        Ok(found) => Ok(Some(found)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// The file at `dir/name` if it is still the recorded source ([`LateAppend::is_source`]).
pub(crate) fn open_source(
    step: &LateAppend,
    dir: &Dir,
    name: &OsStr,
) -> Result<Option<RegularFile>, FsError> {
    match dir.open_file(name, Purpose::Read) {
        Ok(f) if step.is_source(&f) => Ok(Some(f)),
        Ok(_) => Ok(None),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Recovery of a late append (`what`: "append", "late frame") that leaves the files as
/// they are: logged, recorded `undone`, nothing removed.
pub(crate) fn left_alone(
    journal: &mut Journal,
    seq: u64,
    what: &str,
    reason: String,
) -> Result<RecoveryAction, JournalError> {
    tracing::warn!(seq, %reason, "{what} left alone");
    journal.undo(&[seq])?;
    Ok(RecoveryAction::LeftAlone { reason })
}

/// `appended`, and the archive holds the whole, unchanged source still at its name: the
/// unlink did not happen. Unlinks it, fsyncs its folder, records `done`.
pub(crate) fn unlink_source<E: From<FsError> + From<JournalError>>(
    journal: &mut Journal,
    seq: u64,
    what: &str,
    step: &LateAppend,
    (dir, name): (&Dir, &OsStr),
    sf: &RegularFile,
) -> Result<RecoveryAction, E> {
    match cfs::unlink_if_same(dir, name, &sf.id, Compare::Unchanged) {
        Ok(_) => {}
        Err(FsError::Changed { .. }) => {
            let reason = format!("{} changed during recovery; both kept", step.src.display());
            return Ok(left_alone(journal, seq, what, reason)?);
        }
        Err(e) => return Err(e.into()),
    }
    dir.sync()?;
    journal.finish(&[seq])?;
    Ok(RecoveryAction::Completed)
}

/// The original error wins; a failed undo leaves the step pending for recovery.
fn undo_after(undo: Result<(), LateError>, err: LateError) -> LateError {
    if let Err(e) = undo {
        tracing::error!(error = %e, "undo of a failed append failed; left to recovery");
    }
    err
}

fn io_err(path: &Path, source: io::Error) -> LateError {
    LateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests;
