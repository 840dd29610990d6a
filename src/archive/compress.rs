//! Compressing archived logs with zstd: `<name>` becomes `<name>.zst`, verified before the original goes, journaled.
//!
//! State machine of one compression (J = journal record, fsynced before the next state;
//! every file reached through the archive folder's handle):
//!
//! ```text
//! S0 ──J begin{archive, zst, partial, archive id}──▶ S1
//! S1 ──<name>.zst.partial created O_EXCL, encoded, fsynced──▶ S2
//! S2 ──decoded back and compared with <name> byte for byte──▶ S3
//! S3 ──rename .partial → .zst (no replace), fsync folder──▶ S4
//! S4 ──unlink <name> only if unchanged (dev/ino/size/mtime), fsync folder──▶ S5 ──J done──▶ end
//! ```
//!
//! Recovery ([`recover_compress`]) decides from the files alone: a `.zst` in place with
//! the original still there is decoded and compared again, and the original goes only if
//! it matches; no `.zst` means the original is whole (it only goes after the rename), so a
//! `.partial` is dropped and the step undone. A crash anywhere leaves the original or a
//! verified `.zst`, never neither, and never both for long.
//!
//! Late bytes reach a compressed archive as a further zstd frame ([`frame`]): a `.zst` of
//! several frames is one valid file that decodes to the concatenation.
//!
//! Test-only crash points ([`crate::failpoint`]) sit between the steps.

use crate::archive::outcome::RecoveryAction as Action;
use crate::failpoint;
use crate::fs::{self as cfs, Compare, Dir, FsError, Purpose, UnlinkOutcome};
use crate::journal::{Journal, JournalError, Pending, Step};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub mod frame;

/// The suffix of a compressed archive.
pub const ZST_SUFFIX: &str = ".zst";

/// Crash points of one compression, in order (`AGENT_REAPER_FAILPOINT=<name>`).
pub const FP_BEGUN: &str = "compress-begun";
/// Half of the `.partial` written and fsynced (a torn write).
pub const FP_TORN: &str = "compress-torn";
pub const FP_WRITTEN: &str = "compress-written";
pub const FP_RENAMED: &str = "compress-renamed";
pub const FP_UNLINKED: &str = "compress-unlinked";

#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(
        "{path}: already exists beside the uncompressed archive; both kept, nothing compressed"
    )]
    Taken { path: PathBuf },
    #[error("{path}: does not decode back to the original; original kept, compressed copy removed")]
    VerifyFailed { path: PathBuf },
    #[error("{archive}: a step on this archive is still pending; settled at the next start")]
    Pending { archive: PathBuf, seq: u64 },
    #[error("{src}: is the archive {archive} itself; left alone")]
    SameFile { src: PathBuf, archive: PathBuf },
}

/// What [`compress_archived`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compressed {
    /// `<name>.zst` holds every byte and the original is gone.
    Done {
        zst: PathBuf,
        bytes_in: u64,
        bytes_out: u64,
    },
    /// The original changed while being compressed: it is kept whole, no `.zst` left.
    /// Retried once it is quiet again.
    Changed,
}

/// Which of an agent's logs `name` is, by the orchestrator's naming (for `compress_kinds`).
pub fn kind_of(name: &OsStr) -> Option<crate::workspace::LogKind> {
    use crate::workspace::LogKind;
    let name = name.to_str()?;
    if name.ends_with("_stream.jsonl") {
        Some(LogKind::Stream)
    } else if name.ends_with("_progress.jsonl") {
        Some(LogKind::Progress)
    } else if name.ends_with("_findings.jsonl") {
        Some(LogKind::Findings)
    } else if name.starts_with("deploy_") && name.ends_with(".json") {
        Some(LogKind::Deploy)
    } else {
        None
    }
}

/// `<name>.zst`.
pub fn zst_name(name: &OsStr) -> OsString {
    let mut s = name.to_os_string();
    s.push(ZST_SUFFIX);
    s
}

fn partial_name(name: &OsStr) -> OsString {
    let mut s = zst_name(name);
    s.push(".partial");
    s
}

/// Compresses the archived file `dir/name` into `dir/<name>.zst` at `level` and removes
/// the original once the compressed file decodes back to exactly its bytes (journaled:
/// a crash at any step is finished or undone by [`recover_compress`]).
pub fn compress_archived(
    dir: &Dir,
    name: &OsStr,
    level: i32,
    journal: &mut Journal,
) -> Result<Compressed, CompressError> {
    let zst = zst_name(name);
    let partial = partial_name(name);
    let src = dir.open_file(name, Purpose::ReadToMove)?;
    let start = src.id;
    if dir.exists(&zst)? {
        return Err(CompressError::Taken {
            path: dir.display(&zst),
        });
    }
    if let Some(seq) = busy(journal, &[dir.display(name), dir.display(&zst)]) {
        return Err(CompressError::Pending {
            archive: dir.display(name),
            seq,
        });
    }
    let step = Step::Compress {
        archive: dir.display(name),
        zst: dir.display(&zst),
        partial: dir.display(&partial),
        archive_id: start,
    };
    let seq = journal.begin(&[step])?[0];
    failpoint::hit(FP_BEGUN);

    let undo = |journal: &mut Journal, drop_partial: bool, drop_zst: bool| {
        if drop_partial {
            remove_quietly(dir, &partial);
        }
        if drop_zst {
            remove_quietly(dir, &zst);
        }
        let _ = dir.sync();
        journal.undo(&[seq])
    };
    // A `.partial` left by a crash is never a finished archive (the original stays until
    // the rename), so it is safe to drop.
    remove_quietly(dir, &partial);
    let part = match dir.create_new(&partial, 0o644) {
        Ok(p) => p,
        Err(e) => {
            undo(journal, false, false)?;
            return Err(e.into());
        }
    };
    let written = encode_into(&src.file, start.size, &part.file, level)
        .and_then(|n| part.file.sync_all().map(|()| n))
        .map_err(|e| io_err(&part.path, e));
    let bytes_out = match written {
        Ok(n) => n,
        Err(e) => {
            undo(journal, true, false)?;
            return Err(e);
        }
    };
    if failpoint::armed(FP_TORN) {
        let _ = part.file.set_len(bytes_out / 2);
        let _ = part.file.sync_all();
        failpoint::hit(FP_TORN);
    }
    failpoint::hit(FP_WRITTEN);

    let same = decodes_to(&part.file, 0, &src.file, start.size).map_err(|e| io_err(&part.path, e));
    let unchanged = src.current()? == start;
    match same {
        Ok(true) if unchanged => {}
        Ok(_) if !unchanged => {
            undo(journal, true, false)?;
            return Ok(Compressed::Changed);
        }
        Ok(_) => {
            undo(journal, true, false)?;
            return Err(CompressError::VerifyFailed { path: part.path });
        }
        Err(e) => {
            undo(journal, true, false)?;
            return Err(e);
        }
    }
    // The `.zst` keeps the log's age: retention orders archives by mtime.
    if let Err(e) = part.set_mtime(start.mtime) {
        tracing::debug!(error = %e, "could not carry the log's mtime to its .zst");
    }
    match cfs::rename_noreplace(dir, &partial, dir, &zst) {
        Ok(()) => {}
        Err(FsError::Exists { path }) => {
            undo(journal, true, false)?;
            return Err(CompressError::Taken { path });
        }
        Err(e) => {
            undo(journal, true, false)?;
            return Err(e.into());
        }
    }
    // The original goes only once the `.zst`'s name is durable.
    if let Err(e) = dir.sync() {
        undo(journal, false, true)?;
        return Err(e.into());
    }
    failpoint::hit(FP_RENAMED);
    match cfs::unlink_if_same(dir, name, &start, Compare::Unchanged) {
        Ok(UnlinkOutcome::Unlinked | UnlinkOutcome::Gone) => {}
        // Written to after the check: the `.zst` is stale; keep the original whole.
        Err(FsError::Changed { .. }) => {
            undo(journal, false, true)?;
            return Ok(Compressed::Changed);
        }
        Err(e) => {
            undo(journal, false, true)?;
            return Err(e.into());
        }
    }
    dir.sync()?;
    failpoint::hit(FP_UNLINKED);
    journal.finish(&[seq])?;
    Ok(Compressed::Done {
        zst: dir.display(&zst),
        bytes_in: start.size,
        bytes_out,
    })
}

/// Settles one pending [`Step::Compress`] after a crash (see the module doc): finished
/// when a `.zst` that decodes to the original is in place, undone otherwise.
pub fn recover_compress(journal: &mut Journal, p: &Pending) -> Result<Action, CompressError> {
    let Step::Compress {
        archive,
        zst: _,
        partial: _,
        archive_id,
    } = &p.step
    else {
        unreachable!("recover_compress called with {:?}", p.step);
    };
    let (dir, name) = match journal.locate(archive) {
        Ok(found) => found,
        Err(e) if e.is_not_found() => {
            let reason = format!("folder of {} gone", archive.display());
            journal.undo(&[p.seq])?;
            return Ok(Action::LeftAlone { reason });
        }
        Err(e) => return Err(e.into()),
    };
    let (zst, partial) = (zst_name(&name), partial_name(&name));
    let original = match dir.open_file(&name, Purpose::ReadToMove) {
        Ok(f) => Some(f),
        Err(e) if e.is_not_found() => None,
        Err(e) => return Err(e.into()),
    };
    let compressed = match dir.open_file(&zst, Purpose::Read) {
        Ok(f) => Some(f),
        Err(e) if e.is_not_found() => None,
        Err(e) => return Err(e.into()),
    };
    remove_quietly(&dir, &partial);
    let (action, done) = match (original, compressed) {
        // Renamed, and the original gone (or the unlink done): only the record was missing.
        (None, Some(_)) => (Action::AlreadyDone, true),
        // Never renamed: the original is whole.
        (Some(_), None) => (Action::Undone, false),
        (Some(orig), Some(z)) => {
            let ours = orig.id == *archive_id;
            let same =
                decodes_to(&z.file, 0, &orig.file, orig.id.size).map_err(|e| io_err(&z.path, e))?;
            if ours && same {
                match cfs::unlink_if_same(&dir, &name, &orig.id, Compare::Unchanged) {
                    Ok(_) => (Action::Completed, true),
                    Err(FsError::Changed { .. }) => (
                        Action::LeftAlone {
                            reason: format!(
                                "{} changed during recovery; both kept",
                                orig.path.display()
                            ),
                        },
                        false,
                    ),
                    Err(e) => return Err(e.into()),
                }
            } else {
                let reason = format!(
                    "{} does not decode to {}; both kept",
                    z.path.display(),
                    orig.path.display()
                );
                (Action::LeftAlone { reason }, false)
            }
        }
        (None, None) => (
            Action::LeftAlone {
                reason: format!("neither {} nor its .zst found", archive.display()),
            },
            false,
        ),
    };
    dir.sync()?;
    if done {
        journal.finish(&[p.seq])?;
    } else {
        journal.undo(&[p.seq])?;
    }
    Ok(action)
}

/// A pending step on any of `paths` (an append, a frame, a compression): a new step
/// there would record lengths that include stray bytes.
pub(crate) fn busy(journal: &Journal, paths: &[PathBuf]) -> Option<u64> {
    journal
        .pending()
        .find(|p| match &p.step {
            Step::Append(a) | Step::AppendFrame(a) => paths.contains(&a.archive),
            Step::Compress { archive, zst, .. } => paths.contains(archive) || paths.contains(zst),
            _ => false,
        })
        .map(|p| p.seq)
}

/// Encodes `src[..len]` as one zstd frame (with its checksum) written to `out` at its
/// current position (its end, for a file opened `O_APPEND`). Returns the bytes written.
pub(crate) fn encode_into(src: &File, len: u64, out: &File, level: i32) -> io::Result<u64> {
    encode_range(src, 0, len, out, level)
}

/// Encodes `src[from..from+len]` as one frame; see [`encode_into`].
pub(crate) fn encode_range(
    src: &File,
    from: u64,
    len: u64,
    out: &File,
    level: i32,
) -> io::Result<u64> {
    let mut counted = Counted { out, n: 0 };
    let mut enc = zstd::stream::write::Encoder::new(&mut counted, level)?;
    enc.include_checksum(true)?;
    enc.set_pledged_src_size(Some(len))?;
    let mut reader = ReadAt::new(src, from).take(len);
    let copied = io::copy(&mut reader, &mut enc)?;
    if copied != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("source shrank: {copied} of {len} bytes read"),
        ));
    }
    enc.finish()?;
    Ok(counted.n)
}

/// Whether the zstd frames in `zst` from `from` to its end decode to exactly
/// `original[..len]`. Corrupt or truncated frames are a plain `false`.
pub(crate) fn decodes_to(zst: &File, from: u64, original: &File, len: u64) -> io::Result<bool> {
    let mut sink = CompareSink {
        file: original,
        off: 0,
        len,
        same: true,
        buf: Vec::new(),
        failed: None,
    };
    let decoded = match zstd::stream::read::Decoder::new(ReadAt::new(zst, from)) {
        Ok(mut dec) => io::copy(&mut dec, &mut sink),
        Err(e) => Err(e),
    };
    // A read error of the original is an error; a decoding error is bad frames.
    if let Some(e) = sink.failed {
        return Err(e);
    }
    Ok(decoded.is_ok() && sink.same && sink.off == len)
}

/// Decodes every frame of `zst` from offset 0 (tests, the bench).
pub fn decode_all(zst: &File) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    zstd::stream::read::Decoder::new(ReadAt::new(zst, 0))?.read_to_end(&mut out)?;
    Ok(out)
}

/// Reads a file from `off` on with `pread`, leaving the descriptor's offset alone.
struct ReadAt<'a> {
    file: &'a File,
    off: u64,
}

impl<'a> ReadAt<'a> {
    fn new(file: &'a File, off: u64) -> Self {
        ReadAt { file, off }
    }
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.off)?;
        self.off += n as u64;
        Ok(n)
    }
}

/// Counts what the encoder writes.
struct Counted<'a> {
    out: &'a File,
    n: u64,
}

impl Write for Counted<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Compares decoded bytes with the original as they arrive (no copy of either in memory).
struct CompareSink<'a> {
    file: &'a File,
    off: u64,
    len: u64,
    same: bool,
    buf: Vec<u8>,
    /// Reading the original failed (not a mismatch): reported as an error.
    failed: Option<io::Error>,
}

impl Write for CompareSink<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if !self.same {
            return Ok(data.len());
        }
        if self.off + data.len() as u64 > self.len {
            self.same = false;
            return Ok(data.len());
        }
        self.buf.resize(data.len(), 0);
        match self.file.read_exact_at(&mut self.buf, self.off) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                self.same = false;
                return Ok(data.len());
            }
            Err(e) => {
                self.same = false;
                self.failed = Some(e);
                return Ok(data.len());
            }
        }
        if self.buf[..] != *data {
            self.same = false;
        }
        self.off += data.len() as u64;
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Removes a file of ours (a `.partial`, a stale `.zst`); a failure leaves a stray file, logged.
fn remove_quietly(dir: &Dir, name: &OsStr) {
    match dir.unlink(name) {
        Ok(()) => {}
        Err(e) if e.is_not_found() => {}
        Err(e) => tracing::warn!(error = %e, "could not remove a compression leftover"),
    }
}

fn io_err(path: &Path, source: io::Error) -> CompressError {
    CompressError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests;
