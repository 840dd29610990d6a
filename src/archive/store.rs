//! Moving a settled log into the archive: never replacing, never losing a byte, across filesystems too.
//!
//! Everything goes through directory handles (`crate::fs`): the source's folder and the
//! archive folder are opened without following a symlink, and the source is checked to be a
//! regular file with one link (`fstatat(AT_SYMLINK_NOFOLLOW)` of its plain name) before
//! anything moves. Same filesystem: one `renameat2(RENAME_NOREPLACE)` between the two
//! handles (or `link`+`unlink` where the filesystem rejects the flag), then the moved name
//! is checked to be that very file (put back otherwise). Other filesystem: copy to `<name>.partial` created
//! `O_EXCL` under the archive handle, fsync, verify, rename into place without replacing,
//! fsync the folder, and unlink the source only if it did not change meanwhile.
//!
//! One log, one archive: when the archive already holds a file of that name,
//! [`ArchiveError::Taken`] says so and nothing moves; the caller appends the new bytes to
//! it (`crate::archive::late`), never a numbered sibling the orchestrator could not find.

use crate::fs::{self, Compare, Dir, FileId, FsError, Purpose, RegularFile, UnlinkOutcome};
use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a regular file (a symlink, folder or device); refused, nothing moved")]
    NotRegular { path: PathBuf },
    #[error(transparent)]
    Fs(FsError),
    #[error(
        "{path}: already archived under this name; new bytes go to its end, never a second file"
    )]
    Taken { path: PathBuf },
    #[error("{path}: already in the archive folder; left alone")]
    InArchive { path: PathBuf },
    #[error("{src}: changed while being copied to {dest}; original kept, copy removed")]
    ChangedDuringCopy { src: PathBuf, dest: PathBuf },
    #[error("{src}: copy {dest} does not match the original; original kept")]
    VerifyFailed { src: PathBuf, dest: PathBuf },
}

impl From<FsError> for ArchiveError {
    fn from(e: FsError) -> Self {
        crate::archive::late::refused_path(e)
            .map_or_else(ArchiveError::Fs, |path| ArchiveError::NotRegular { path })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Archived {
    /// Same filesystem: one atomic `renameat2(RENAME_NOREPLACE)`.
    Renamed(PathBuf),
    /// Other filesystem: copied, fsynced, verified, renamed into place, source unlinked.
    Copied(PathBuf),
}

impl Archived {
    pub fn path(&self) -> &Path {
        match self {
            Archived::Renamed(p) | Archived::Copied(p) => p,
        }
    }
}

/// Moves `src` into `archive_dir` under its own name; creates `archive_dir` (mode 0755)
/// when missing; never overwrites ([`ArchiveError::Taken`]). Both parents are trusted as
/// given (opened by path); the pass uses [`Archiver`] with handles instead.
///
/// On `ChangedDuringCopy` the original is untouched and no archive file is left: the
/// caller should wait for the file to settle again and retry.
#[cfg(test)]
pub(crate) fn archive_file(src: &Path, archive_dir: &Path) -> Result<Archived, ArchiveError> {
    archive_file_with(src, archive_dir, Strategy::Rename, |_| {})
}

/// The archive folder of one task, created and opened on first use below a handle:
/// the task folder's (`archive/`) or the configured `archive_dir`'s (`<task id>/`).
/// Same-filesystem moves do not fsync each time: the caller archives a batch and calls
/// [`sync_dirs`] once, so a backlog of thousands does not pay two fsyncs per file.
pub struct Archiver {
    parent: Arc<Dir>,
    rel: PathBuf,
    dir: Option<Dir>,
    identity: (u64, u64),
    /// Source folders already known not to be the archive folder.
    checked_parents: HashSet<(u64, u64)>,
}

impl Archiver {
    /// The archive folder `parent/rel` (created when first needed, no symlink on the way).
    pub fn new(parent: Arc<Dir>, rel: impl Into<PathBuf>) -> Self {
        Archiver {
            parent,
            rel: rel.into(),
            dir: None,
            identity: (0, 0),
            checked_parents: HashSet::new(),
        }
    }

    /// The archive folder's handle, created (0755) and opened on first use.
    pub fn open(&mut self) -> Result<&Dir, ArchiveError> {
        if self.dir.is_none() {
            let dir = self.parent.create_dir_all_beneath(&self.rel, 0o755)?;
            self.identity = dir.identity()?;
            self.dir = Some(dir);
        }
        Ok(self.dir.as_ref().expect("opened above"))
    }

    /// Whether a file named `name` is already archived (without creating the folder).
    pub fn existing(&mut self, name: &OsStr) -> Result<Option<PathBuf>, ArchiveError> {
        if self.dir.is_none() && self.parent.metadata(&self.rel)?.is_none() {
            return Ok(None);
        }
        let dir = self.open()?;
        Ok(dir.exists(name)?.then(|| dir.display(name)))
    }

    /// Hashes ([`name_hash`]) of the names in the archive folder now (none when it does not
    /// exist yet): a name whose hash is absent was surely not archived when listed. One
    /// `readdir` instead of a lookup per name when many are asked about (a backlog's records).
    pub fn name_hashes(&mut self) -> Result<HashSet<u64>, ArchiveError> {
        if self.dir.is_none() && self.parent.metadata(&self.rel)?.is_none() {
            return Ok(HashSet::new());
        }
        let dir = self.open()?;
        let mut hashes = HashSet::new();
        dir.for_each_name(|name, _| {
            hashes.insert(name_hash(name));
        })?;
        Ok(hashes)
    }

    /// Whether a source folder of identity `src` (see [`Dir::identity`]) is on another
    /// filesystem than the archive folder (then archiving is a copy, worth journaling).
    pub fn crosses_filesystems(&mut self, src: (u64, u64)) -> bool {
        self.open().is_ok() && self.identity.0 != src.0
    }

    /// Moves `src_dir/name` into the archive under the same name. `src_identity` is
    /// `src_dir`'s [`Dir::identity`] (asked once per folder by the caller, not per file).
    pub fn archive(
        &mut self,
        src_dir: &Dir,
        src_identity: (u64, u64),
        name: &OsStr,
    ) -> Result<Archived, ArchiveError> {
        self.archive_with(src_dir, src_identity, name, Strategy::Rename, true, |_| {})
    }

    fn archive_with(
        &mut self,
        src_dir: &Dir,
        src_parent: (u64, u64),
        name: &OsStr,
        strategy: Strategy,
        batched: bool,
        hook: impl FnMut(Stage),
    ) -> Result<Archived, ArchiveError> {
        // Checked as an open for a move would check it (a regular file, one link, no
        // symlink), by one `fstatat` of the plain name: a rename needs no descriptor, and
        // the copy path opens it (and checks it is still this file) when it gets there.
        let checked = src_dir.stat_to_move(name)?;
        self.open()?;
        // Archiving a file that already sits in the archive would only move it onto
        // itself each round; refuse instead of churning.
        if !self.checked_parents.contains(&src_parent) {
            if src_parent == self.identity {
                return Err(ArchiveError::InArchive {
                    path: src_dir.display(name),
                });
            }
            self.checked_parents.insert(src_parent);
        }
        let dir = self.dir.as_ref().expect("opened above");
        move_into(src_dir, name, checked, dir, strategy, batched, hook)
    }
}

/// A name's hash for [`Archiver::name_hashes`].
pub fn name_hash(name: &OsStr) -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new();
    name.hash(&mut h);
    h.finish()
}

/// fsyncs each folder once; failures are logged (the moves themselves already happened).
pub fn sync_dirs<'a>(dirs: impl IntoIterator<Item = &'a Dir>) {
    let mut seen = HashSet::new();
    for dir in dirs {
        if seen.insert(dir.identity().unwrap_or_default()) {
            sync_best_effort(dir);
        }
    }
}

/// Points in the cross-filesystem path where tests inject writers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The copy is verified, renamed into place and its folder fsynced; the source is
    /// about to be checked for changes and unlinked.
    BeforeUnlink,
    /// The source name has just been unlinked; a writer that opened it earlier may still write.
    AfterUnlink,
}

/// Which move to try first (tests force the copy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strategy {
    Rename,
    Copy,
}

#[cfg(test)]
fn archive_file_with(
    src: &Path,
    archive_dir: &Path,
    strategy: Strategy,
    hook: impl FnMut(Stage),
) -> Result<Archived, ArchiveError> {
    let (src_dir, name) = crate::fs::open_parent_within(src, &[])?;
    let (adir_parent, adir_name) = crate::fs::open_parent_within(archive_dir, &[])?;
    let mut archiver = Archiver::new(Arc::new(adir_parent), adir_name);
    let src_identity = src_dir.identity()?;
    archiver.archive_with(&src_dir, src_identity, &name, strategy, false, hook)
}

/// Opens `src_dir/name` for the copy path, refusing a file other than the one `checked`.
fn open_checked(
    src_dir: &Dir,
    name: &OsStr,
    checked: &FileId,
) -> Result<RegularFile, ArchiveError> {
    let src = src_dir.open_file(name, Purpose::ReadToMove)?;
    if !src.id.same_file(checked) {
        return Err(ArchiveError::Fs(FsError::Changed {
            path: src.path,
            what: "replaced by another file just before the copy".into(),
        }));
    }
    Ok(src)
}

fn move_into(
    src_dir: &Dir,
    name: &OsStr,
    checked: FileId,
    dir: &Dir,
    strategy: Strategy,
    batched: bool,
    hook: impl FnMut(Stage),
) -> Result<Archived, ArchiveError> {
    if strategy == Strategy::Copy {
        return copy_into(
            src_dir,
            name,
            open_checked(src_dir, name, &checked)?,
            dir,
            hook,
        );
    }
    match fs::rename_noreplace(src_dir, name, dir, name) {
        Ok(()) => {}
        Err(FsError::Exists { path }) => return Err(ArchiveError::Taken { path }),
        Err(e) if e.is_cross_device() => {
            return copy_into(
                src_dir,
                name,
                open_checked(src_dir, name, &checked)?,
                dir,
                hook,
            );
        }
        Err(e) => return Err(e.into()),
    }
    // The name was checked, then renamed: if another file was swapped in between, put
    // it back and let the next pass look again.
    let moved = dir.metadata(name)?;
    if !moved.is_some_and(|m| m.id.same_file(&checked) && m.kind == fs::EntryKind::File) {
        let back = fs::rename_noreplace(dir, name, src_dir, name);
        return Err(ArchiveError::Fs(FsError::Changed {
            path: src_dir.display(name),
            what: format!(
                "replaced by another file just before the move ({})",
                match back {
                    Ok(()) => "put back".to_string(),
                    Err(e) => format!("left at {}: {e}", dir.display(name).display()),
                }
            ),
        }));
    }
    // Both folders changed; fsync them so the new name survives a crash. The move already
    // happened, so a failed fsync is reported but is not an error the caller would retry.
    if !batched {
        sync_best_effort(dir);
        sync_best_effort(src_dir);
    }
    Ok(Archived::Renamed(dir.display(name)))
}

fn sync_best_effort(dir: &Dir) {
    if let Err(e) = dir.sync() {
        tracing::warn!(error = %e, "fsync of folder failed");
    }
}

/// Removes a file we created; a failure leaves a stray file, which is logged.
fn remove_best_effort(dir: &Dir, name: &OsStr) {
    match dir.unlink(name) {
        Ok(()) => {}
        Err(e) if e.is_not_found() => {}
        Err(e) => tracing::warn!(error = %e, "could not remove archive copy"),
    }
}

/// The cross-filesystem path. `hook` lets tests write to the source at the delicate moments.
fn copy_into(
    src_dir: &Dir,
    name: &OsStr,
    src: RegularFile,
    dir: &Dir,
    mut hook: impl FnMut(Stage),
) -> Result<Archived, ArchiveError> {
    let start = src.id;
    if dir.exists(name)? {
        return Err(ArchiveError::Taken {
            path: dir.display(name),
        });
    }
    let mut partial = name.to_os_string();
    partial.push(".partial");
    let dest = dir.display(name);
    // A `.partial` here is left from a crash mid-copy: never a finished archive, so it is
    // safe to drop (its source was not unlinked).
    remove_best_effort(dir, &partial);
    let part = dir.create_new(&partial, 0o644)?;
    let mode = src.file.metadata().map(|m| m.permissions().mode() & 0o777);
    let _ = mode.map(|m| {
        part.file
            .set_permissions(std::fs::Permissions::from_mode(m))
    });

    let copied = match copy_and_verify(&src.file, &part.file, start.size) {
        Ok(copied) => copied,
        Err(failure) => {
            drop(part);
            remove_best_effort(dir, &partial);
            let changed = src.current().map(|now| now != start);
            return Err(match failure {
                CopyFailure::Io(e) => ArchiveError::Io {
                    path: dir.display(&partial),
                    source: e,
                },
                _ if !matches!(changed, Ok(false)) => ArchiveError::ChangedDuringCopy {
                    src: src.path,
                    dest,
                },
                CopyFailure::Mismatch => ArchiveError::VerifyFailed {
                    src: src.path,
                    dest,
                },
            });
        }
    };

    // Into place without replacing.
    match fs::rename_noreplace(dir, &partial, dir, name) {
        Ok(()) => {}
        Err(e) => {
            remove_best_effort(dir, &partial);
            return Err(match e {
                FsError::Exists { path } => ArchiveError::Taken { path },
                e => e.into(),
            });
        }
    }
    // The source goes only once the copy's name is durable.
    if let Err(e) = dir.sync() {
        remove_best_effort(dir, name);
        return Err(e.into());
    }

    hook(Stage::BeforeUnlink);

    // From here on, every way out that keeps the source removes the copy, so a retry
    // cannot archive the same bytes twice.
    let changed = |dir: &Dir| {
        remove_best_effort(dir, name);
        sync_best_effort(dir);
        ArchiveError::ChangedDuringCopy {
            src: src.path.clone(),
            dest: dest.clone(),
        }
    };
    match src.current() {
        Ok(now) if now == start => {}
        // A writer appended (or rewrote) meanwhile: the copy is stale. Keep the original
        // whole and let the caller retry once it settles again.
        Ok(_) => return Err(changed(dir)),
        Err(e) => {
            remove_best_effort(dir, name);
            return Err(e.into());
        }
    }
    // By inode: bytes a writer adds through an open descriptor from here on reach the
    // copy through `rescue_tail` below.
    match fs::unlink_if_same(src_dir, name, &start, Compare::Inode) {
        Ok(UnlinkOutcome::Unlinked) => {}
        // Someone else moved, deleted or replaced the name while we copied. Our copy
        // holds every byte of the inode we read, so keep it; the name is not ours.
        Ok(UnlinkOutcome::Gone) | Err(FsError::Changed { .. }) => {
            tracing::warn!(path = %src.path.display(), "source name moved or replaced during copy; copy kept, name left alone");
            return Ok(Archived::Copied(dest));
        }
        Err(e) => {
            remove_best_effort(dir, name);
            sync_best_effort(dir);
            return Err(e.into());
        }
    }
    sync_best_effort(src_dir);

    hook(Stage::AfterUnlink);

    // A per-line `open('a')` writer that opened just before the unlink writes into the
    // now-nameless inode; we still hold it, so carry those bytes over. The source name is
    // gone already, so a failure here is logged, not returned.
    if let Err(e) = rescue_tail(&src.file, copied, &part.file) {
        tracing::error!(path = %dest.display(), error = %e, "could not carry over bytes written during unlink");
    }
    Ok(Archived::Copied(dest))
}

enum CopyFailure {
    Io(io::Error),
    Mismatch,
}

/// Copies `src` into `part` from offset 0, fsyncs, and compares both byte by byte.
/// Returns the number of bytes copied.
fn copy_and_verify(src: &File, part: &File, expected: u64) -> Result<u64, CopyFailure> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut copied = 0u64;
    loop {
        let got = match src.read_at(&mut buf, copied) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyFailure::Io(e)),
        };
        part.write_all_at(&buf[..got], copied)
            .map_err(CopyFailure::Io)?;
        copied += got as u64;
    }
    part.sync_all().map_err(CopyFailure::Io)?;
    let part_len = part.metadata().map_err(CopyFailure::Io)?.len();
    let src_len = src.metadata().map_err(CopyFailure::Io)?.len();
    if copied != expected || part_len != copied || src_len != copied {
        return Err(CopyFailure::Mismatch);
    }
    // Re-read both rather than trust the copy loop: catches short writes and a source
    // rewritten in place under us.
    let same =
        crate::archive::late::same_bytes(src, 0, part, 0, copied).map_err(CopyFailure::Io)?;
    if !same {
        return Err(CopyFailure::Mismatch);
    }
    Ok(copied)
}

/// Appends what the unlinked source gained past `copied` to the copy (the same inode
/// we created, now at its final name).
fn rescue_tail(src: &File, copied: u64, out: &File) -> io::Result<()> {
    let len = src.metadata()?.len();
    if len <= copied {
        return Ok(());
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut off = copied;
    while off < len {
        let want = buf.len().min((len - off) as usize);
        let got = src.read_at(&mut buf[..want], off)?;
        if got == 0 {
            break;
        }
        out.write_all_at(&buf[..got], off)?;
        off += got as u64;
    }
    out.sync_all()?;
    tracing::warn!(bytes = off - copied, "appended bytes written during unlink");
    Ok(())
}

#[cfg(test)]
mod tests;
