//! The locked registry as the CAS loop writes it: the new text streamed into the sidecar,
//! compared and copied a chunk at a time, so no copy of a whole registry is held for it.

use super::{ReadOptions, RegistryError, discard_sidecar, locate, read_locked};
use crate::registry::cas::{CasFile, Render};
use crate::registry::seen::{self, TAIL_KEEP};
use crate::registry::torn::VersionTail;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes compared or copied per step.
const CHUNK: usize = 1 << 20;

/// The locked registry for the CAS loop.
pub(super) struct Locked<'a> {
    pub(super) file: &'a File,
    pub(super) path: &'a Path,
    pub(super) read: &'a ReadOptions,
    pub(super) sidecar: PathBuf,
    pub(super) mode: u32,
    /// The sidecar as written (our own handle: whatever is planted at its name later, the
    /// copy reads what we wrote).
    pub(super) staged: Option<File>,
}

impl Locked<'_> {
    fn write_error(&self, path: &Path, source: std::io::Error) -> RegistryError {
        RegistryError::Write {
            path: path.to_owned(),
            source,
        }
    }
}

impl CasFile for Locked<'_> {
    fn stage(
        &mut self,
        base: &[u8],
        render: &mut Render<'_>,
    ) -> Result<Option<u64>, RegistryError> {
        self.staged = None;
        let mut outcome = (0u64, false);
        let written = locate(&self.sidecar).and_then(|(dir, name)| {
            crate::fs::replace_file_with(&dir, &name, self.mode, true, &mut |file| {
                let mut tee = Tee {
                    out: BufWriter::with_capacity(CHUNK, file),
                    base,
                    len: 0,
                    same: true,
                };
                render(&mut tee)?;
                tee.out.flush()?;
                let same = tee.same && tee.len == base.len() as u64;
                outcome = (tee.len, same);
                // The same text as the registry's: nothing to stage.
                Ok(!same)
            })
            .map_err(std::io::Error::from)
        });
        let sidecar = match written {
            Ok(Some(file)) => file,
            Ok(None) => return Ok(None),
            Err(source) => {
                // The registry is untouched, so a partial sidecar is only litter.
                discard_sidecar(&self.sidecar);
                return Err(self.write_error(&self.sidecar, source));
            }
        };
        let len = outcome.0;
        // Blocks for a longer registry are allocated now, before the comparison, so a full
        // disk fails here (registry intact) and the write after the comparison is quick.
        // Known before any byte of it can reach the registry: a torn tail of it is provable,
        // after a restart too.
        let noted = reserve(self.file, len)
            .map_err(|e| self.write_error(self.path, e))
            .and_then(|()| tail_of(&sidecar, len).map_err(|e| self.write_error(&self.sidecar, e)));
        match noted {
            Ok(tail) => {
                seen::global().note_version(self.path, tail);
                seen::global().persist(self.path);
            }
            Err(e) => {
                discard_sidecar(&self.sidecar);
                return Err(e);
            }
        }
        self.staged = Some(sidecar);
        Ok(Some(len))
    }

    fn unstage(&mut self) {
        self.staged = None;
        discard_sidecar(&self.sidecar);
    }

    fn unchanged_since(&mut self, base: &[u8]) -> Result<bool, RegistryError> {
        same_content(self.file, base).map_err(|source| RegistryError::Open {
            path: self.path.to_owned(),
            source,
        })
    }

    fn reread_parsed(&mut self) -> Result<Vec<u8>, RegistryError> {
        read_locked(self.file, self.path, self.read, false).map(|(bytes, _)| bytes)
    }

    fn write(&mut self, len: u64, current_len: usize) -> Result<(), RegistryError> {
        let sidecar = self.staged.take().expect("write follows stage");
        // A shorter document is padded with spaces to the old length and cut after: until
        // the cut, an unlocked reader sees our document and trailing whitespace (valid JSON),
        // not our document followed by the old one's tail ("Extra data").
        let file = self.file;
        let write_ours = |old_len: u64| {
            copy_at(&sidecar, file, len)
                .and_then(|()| pad(file, len, old_len))
                .and_then(|()| cut_to(file, len))
        };
        let written = write_ours(current_len as u64)
            .and_then(|()| end_of(&sidecar, len))
            .and_then(|end| keep_ours_after_cut(file, self.path, &end, len, write_ours))
            .and_then(|()| file.sync_all());
        // On failure the sidecar stays: it is what recover_sidecar restores from.
        written.map_err(|e| self.write_error(self.path, e))?;
        discard_sidecar(&self.sidecar);
        Ok(())
    }
}

/// Times our document is written again after a cut that tore another writer's.
const REWRITES: usize = 3;
/// Bytes of the end compared to tell our document from another after the cut.
const END_COMPARED: u64 = 4096;

/// After our cut to `len`: while that cut tore an unlocked writer's document (see
/// [`cut_tore_theirs`]), ours is written again (`write_ours`, given the file's length now),
/// up to [`REWRITES`] times. The cut can land just after that writer's whole `open('w')` +
/// `json.dump` and leave the head of its document, which nothing can repair (seen: 3 of 75
/// runs of the python race test under load stayed torn). That writer's update is lost, as
/// when it writes just before us. `ours_end`: the last bytes of ours ([`end_of`]).
pub(super) fn keep_ours_after_cut(
    file: &File,
    path: &std::path::Path,
    ours_end: &[u8],
    len: u64,
    write_ours: impl Fn(u64) -> std::io::Result<()>,
) -> std::io::Result<()> {
    for _ in 0..REWRITES {
        if !cut_tore_theirs(file, ours_end, len)? {
            break;
        }
        tracing::warn!(
            path = %path.display(),
            "an unlocked writer's document landed between our write and our cut, \
             which left it torn; our document written again"
        );
        write_ours(file.metadata()?.len())?;
    }
    Ok(())
}

/// Writes `bytes` over the start of `file`, spaces after them up to `old_len`, then cuts
/// to their length (ours from memory; [`Locked`]'s write copies from its sidecar).
pub(super) fn write_padded(file: &File, bytes: &[u8], old_len: u64) -> std::io::Result<()> {
    let len = bytes.len() as u64;
    file.write_all_at(bytes, 0)
        .and_then(|()| pad(file, len, old_len))
        .and_then(|()| cut_to(file, len))
}

/// The last bytes of the `len` bytes of ours in `file` that [`cut_tore_theirs`] compares.
pub(super) fn end_of(file: &File, len: u64) -> std::io::Result<Vec<u8>> {
    let n = len.min(END_COMPARED);
    let mut end = vec![0u8; n as usize];
    file.read_exact_at(&mut end, len - n)?;
    Ok(end)
}

/// The same, of ours held in memory.
pub(super) fn end_of_bytes(ours: &[u8]) -> &[u8] {
    &ours[ours.len().saturating_sub(END_COMPARED as usize)..]
}

/// Whether the cut to `len` left another writer's document torn: the file is `len` bytes,
/// does not end as ours does (`ours_end`, its last bytes), and does not parse. Another
/// length is a writer's `open('w')` since the cut (its document, whole or being written:
/// left alone); a document that parses is left alone too.
pub(super) fn cut_tore_theirs(file: &File, ours_end: &[u8], len: u64) -> std::io::Result<bool> {
    if file.metadata()?.len() != len {
        return Ok(false);
    }
    let n = (ours_end.len() as u64).min(len);
    let mut theirs = vec![0u8; n as usize];
    match file.read_exact_at(&mut theirs, len - n) {
        Ok(()) if theirs == ours_end[ours_end.len() - n as usize..] => return Ok(false),
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e),
    }
    let mut text = vec![0u8; len as usize];
    match file.read_exact_at(&mut text, 0) {
        Ok(()) => Ok(serde_json::from_slice::<serde::de::IgnoredAny>(&text).is_err()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Writes through to the sidecar while comparing with the registry's bytes.
struct Tee<'f, 'b> {
    out: BufWriter<&'f mut File>,
    base: &'b [u8],
    len: u64,
    same: bool,
}

impl Write for Tee<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.same {
            let from = self.len as usize;
            self.same = self.base.get(from..from + buf.len()) == Some(buf);
        }
        self.out.write_all(buf)?;
        self.len += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// What `seen` keeps of the `len` bytes staged in `file`: their last `TAIL_KEEP`.
fn tail_of(file: &File, len: u64) -> std::io::Result<VersionTail> {
    let keep = len.min(TAIL_KEEP as u64);
    let mut suffix = vec![0u8; keep as usize];
    file.read_exact_at(&mut suffix, len - keep)?;
    Ok(VersionTail { len, suffix })
}

/// Whether `file` holds exactly `base`, read a chunk at a time.
fn same_content(file: &File, base: &[u8]) -> std::io::Result<bool> {
    if file.metadata()?.len() != base.len() as u64 {
        return Ok(false);
    }
    let mut buf = vec![0u8; CHUNK.min(base.len()).max(1)];
    let mut at = 0usize;
    while at < base.len() {
        let want = buf.len().min(base.len() - at);
        let n = match file.read_at(&mut buf[..want], at as u64) {
            Ok(0) => return Ok(false),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf[..n] != base[at..at + n] {
            return Ok(false);
        }
        at += n;
    }
    // Nothing after it either (a writer may have grown it since the fstat).
    Ok(file.read_at(&mut buf[..1], at as u64)? == 0)
}

/// Copies the first `len` bytes of `from` over the start of `to`.
fn copy_at(from: &File, to: &File, len: u64) -> std::io::Result<()> {
    let mut buf = vec![0u8; CHUNK.min(len as usize).max(1)];
    let mut at = 0u64;
    while at < len {
        let n = buf.len().min((len - at) as usize);
        from.read_exact_at(&mut buf[..n], at)?;
        to.write_all_at(&buf[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Spaces from `from` up to `to` (nothing when `to <= from`).
fn pad(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    if to <= from {
        return Ok(());
    }
    let spaces = vec![b' '; CHUNK.min((to - from) as usize)];
    let mut at = from;
    while at < to {
        let n = spaces.len().min((to - at) as usize);
        file.write_all_at(&spaces[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Cuts the file to `len` after our write, and never lengthens it. Shorter than what we
/// just wrote means an unlocked `open('w')` truncated it since: `ftruncate` would fill it
/// with NUL bytes up to our length, and the writer's document would land in front of them
/// (a registry nobody's reader can parse, and no version to prove a tear with). Left
/// alone, it ends as that writer's document, or as its document over the rest of ours,
/// which is provable (ours was noted before the write).
pub(super) fn cut_to(file: &File, len: u64) -> std::io::Result<()> {
    if file.metadata()?.len() > len {
        file.set_len(len)?;
    }
    Ok(())
}

/// Allocates the blocks a longer registry needs before its first byte is overwritten, so
/// a full disk fails the write up front (registry intact) instead of after the old content
/// is half replaced (registry torn). `KEEP_SIZE`: readers never see the reserved tail.
/// Filesystems without `fallocate` keep the old behaviour (the sidecar still covers it).
pub(super) fn reserve(file: &File, len: u64) -> std::io::Result<()> {
    use rustix::fs::{FallocateFlags, fallocate};
    use rustix::io::Errno;
    if file.metadata()?.len() >= len {
        return Ok(());
    }
    match fallocate(file, FallocateFlags::KEEP_SIZE, 0, len) {
        Ok(()) | Err(Errno::OPNOTSUPP | Errno::NOSYS) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
