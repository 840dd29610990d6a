//! Moving a settled log into the archive: never replacing, never losing a byte, across filesystems too.
//!
//! Same filesystem: one `renameat2(RENAME_NOREPLACE)` (or `link`+`unlink` where the
//! filesystem rejects the flag). Other filesystem: copy to `<target>.partial`, fsync,
//! verify, rename into place without replacing, fsync the folder, and unlink the source
//! only if it did not change meanwhile. All work inside the archive folder goes through
//! one directory fd opened with `O_NOFOLLOW`, so swapping the folder for a symlink
//! half-way cannot redirect a write.

use std::ffi::{OsStr, OsString};
use std::fs::{DirBuilder, File, Metadata, OpenOptions};
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

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
    #[error("{src}: changed while being copied to {dest}; original kept, copy removed")]
    ChangedDuringCopy { src: PathBuf, dest: PathBuf },
    #[error("{src}: copy {dest} does not match the original; original kept")]
    VerifyFailed { src: PathBuf, dest: PathBuf },
    #[error("{dir}: no free archive name for {name} after {tries} tries")]
    NoFreeName {
        dir: PathBuf,
        name: String,
        tries: u32,
    },
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

/// How many names (the plain one, then `.1` … `.9999`) are tried before giving up.
pub const MAX_NAME_TRIES: u32 = 10_000;

/// Moves `src` into `archive_dir` under its own name, or `<stem>.<n><.ext>` when that
/// name is taken. Creates `archive_dir` (mode 0755) when missing. Never overwrites.
///
/// On `ChangedDuringCopy` the original is untouched and no archive file is left: the
/// caller should wait for the file to settle again and retry.
pub fn archive_file(src: &Path, archive_dir: &Path) -> Result<Archived, ArchiveError> {
    archive_file_with(src, archive_dir, Strategy::Rename, MAX_NAME_TRIES, |_| {})
}

/// Archives many files into one folder: the folder is opened and checked once, and a
/// same-filesystem rename does not fsync the two folders each time. The caller archives a
/// batch and then calls [`sync_dirs`] once for all of them, so a backlog of thousands does
/// not pay two fsyncs per file. A rename is atomic either way; the fsync only makes the new
/// name durable before the registry records it.
pub struct Archiver {
    path: PathBuf,
    dir: Option<ArchiveDir>,
    /// Source folders already known not to be the archive folder.
    checked_parents: std::collections::HashSet<PathBuf>,
}

impl Archiver {
    pub fn new(archive_dir: &Path) -> Self {
        Archiver {
            path: archive_dir.to_path_buf(),
            dir: None,
            checked_parents: std::collections::HashSet::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// Whether `src` lives on another filesystem than the archive folder (then archiving
    /// it is a copy, worth journaling).
    pub fn crosses_filesystems(&self, src: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        // The archive folder may not exist yet: its nearest existing ancestor tells.
        let archive = self
            .path
            .ancestors()
            .find_map(|p| std::fs::metadata(p).ok());
        let (Some(a), Ok(s)) = (archive, std::fs::metadata(parent_of(src))) else {
            return false;
        };
        a.dev() != s.dev()
    }

    /// The name `src` would get in the archive now: its own, or the first free numbered one.
    pub fn next_name(&self, src: &Path) -> Option<PathBuf> {
        let names = Names::new(src.file_name()?, MAX_NAME_TRIES);
        (0..names.max)
            .map(|n| self.path.join(names.get(n)))
            .find(|p| std::fs::symlink_metadata(p).is_err())
    }

    pub fn archive(&mut self, src: &Path) -> Result<Archived, ArchiveError> {
        if self.dir.is_none() {
            self.dir = Some(ArchiveDir::open(&self.path)?);
        }
        let dir = self.dir.as_ref().expect("opened above");
        let parent = parent_of(src);
        let parent_checked = self.checked_parents.contains(parent);
        let result = move_into(
            src,
            dir,
            Strategy::Rename,
            MAX_NAME_TRIES,
            |_| {},
            true,
            parent_checked,
        );
        if !parent_checked && !matches!(result, Err(ArchiveError::Io { .. })) {
            self.checked_parents.insert(parent.to_path_buf());
        }
        result
    }
}

/// The newest archive of a file named `name` in `dir`: the highest numbered sibling that
/// exists (`<stem>.<n><ext>`), else `<name>` itself; `None` when it was never archived there.
pub fn latest_archive_of(dir: &Path, name: &OsStr) -> Option<PathBuf> {
    let names = Names::new(name, MAX_NAME_TRIES);
    let mut latest = None;
    for n in 0..names.max {
        let candidate = dir.join(names.get(n));
        match std::fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_file() => latest = Some(candidate),
            Ok(_) => return None,
            Err(_) => break,
        }
    }
    latest
}

/// fsyncs each folder once; failures are logged (the moves themselves already happened).
pub fn sync_dirs<'a>(dirs: impl IntoIterator<Item = &'a Path>) {
    let mut seen = std::collections::HashSet::new();
    for dir in dirs {
        if seen.insert(dir.to_path_buf()) {
            sync_dir_best_effort(dir);
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

/// Which same-filesystem move to try first (tests force the fallbacks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strategy {
    Rename,
    Link,
    Copy,
}

fn io_err(path: &Path, source: impl Into<io::Error>) -> ArchiveError {
    ArchiveError::Io {
        path: path.to_path_buf(),
        source: source.into(),
    }
}

fn archive_file_with(
    src: &Path,
    archive_dir: &Path,
    strategy: Strategy,
    max_tries: u32,
    hook: impl FnMut(Stage),
) -> Result<Archived, ArchiveError> {
    let dir = ArchiveDir::open(archive_dir)?;
    move_into(src, &dir, strategy, max_tries, hook, false, false)
}

/// `batched`: the caller fsyncs the folders. `parent_checked`: the source's folder is
/// already known not to be the archive folder.
fn move_into(
    src: &Path,
    dir: &ArchiveDir,
    strategy: Strategy,
    max_tries: u32,
    hook: impl FnMut(Stage),
    batched: bool,
    parent_checked: bool,
) -> Result<Archived, ArchiveError> {
    // lstat: a symlink is refused, never followed (it could point anywhere).
    let meta = std::fs::symlink_metadata(src).map_err(|e| io_err(src, e))?;
    if !meta.file_type().is_file() {
        return Err(ArchiveError::NotRegular {
            path: src.to_path_buf(),
        });
    }
    let name = src.file_name().ok_or_else(|| {
        io_err(
            src,
            io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"),
        )
    })?;
    let names = Names::new(name, max_tries);

    // Archiving a file that already sits in the archive would only give it a new
    // number each round; refuse instead of churning.
    let src_parent = parent_of(src);
    if !parent_checked
        && let Ok(pm) = std::fs::metadata(src_parent)
        && (pm.dev(), pm.ino()) == (dir.dev, dir.ino)
    {
        return Err(io_err(
            src,
            io::Error::new(io::ErrorKind::InvalidInput, "already in the archive folder"),
        ));
    }

    let mut strategy = strategy;
    let mut n = 0;
    while n < names.max {
        let cand = names.get(n);
        let res = match strategy {
            Strategy::Rename => {
                rustix::fs::renameat_with(CWD, src, &dir.fd, &cand, RenameFlags::NOREPLACE)
            }
            Strategy::Link => link_then_unlink(src, dir, &cand),
            Strategy::Copy => return copy_into(src, &meta, dir, &names, n, hook),
        };
        match res {
            Ok(()) => {
                // Both folders changed; fsync them so the new name survives a crash.
                // The move already happened, so a failed fsync is reported but does not
                // turn into an error the caller would retry on a source that is gone.
                if !batched {
                    dir.sync_best_effort();
                    sync_dir_best_effort(src_parent);
                }
                return Ok(Archived::Renamed(dir.path.join(&cand)));
            }
            Err(Errno::EXIST) => n += 1,
            Err(Errno::XDEV) => strategy = Strategy::Copy,
            // Some filesystems reject RENAME_NOREPLACE; link(2) refuses to replace too.
            Err(Errno::INVAL | Errno::NOSYS) if strategy == Strategy::Rename => {
                strategy = Strategy::Link
            }
            // Filesystems without hard links (vfat, some FUSE) or odd mounts: copy.
            Err(Errno::PERM | Errno::OPNOTSUPP | Errno::MLINK) if strategy == Strategy::Link => {
                strategy = Strategy::Copy
            }
            Err(e) => return Err(io_err(src, e)),
        }
    }
    Err(no_free_name(dir, &names))
}

/// `link` then `unlink`: not atomic, but a writer that opens the source in between
/// opens the same inode, so nothing is lost.
fn link_then_unlink(src: &Path, dir: &ArchiveDir, cand: &OsStr) -> rustix::io::Result<()> {
    rustix::fs::linkat(CWD, src, &dir.fd, cand, AtFlags::empty())?;
    rustix::fs::unlinkat(CWD, src, AtFlags::empty()).inspect_err(|_| {
        // Two names for one log would be archived twice later; undo the link.
        dir.remove_best_effort(cand);
    })
}

fn no_free_name(dir: &ArchiveDir, names: &Names) -> ArchiveError {
    ArchiveError::NoFreeName {
        dir: dir.path.clone(),
        name: names.name.to_string_lossy().into_owned(),
        tries: names.max,
    }
}

pub(crate) fn parent_of(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

fn sync_dir_best_effort(dir: &Path) {
    let res = File::open(dir).and_then(|f| f.sync_all());
    if let Err(e) = res {
        tracing::warn!(path = %dir.display(), error = %e, "fsync of folder failed");
    }
}

/// Candidate names: `name`, then `<stem>.1<ext>`, `<stem>.2<ext>` …, `ext` being the
/// last extension (`a_progress.jsonl` → `a_progress.1.jsonl`, `name` → `name.1`).
struct Names {
    name: OsString,
    stem: OsString,
    ext: Option<OsString>,
    /// How many candidates to try (the plain name counts as one).
    max: u32,
}

impl Names {
    fn new(name: &OsStr, max: u32) -> Self {
        let p = Path::new(name);
        // file_stem keeps dotfiles whole (".bashrc" has no extension), as wanted.
        let stem = p.file_stem().unwrap_or(name).to_os_string();
        Names {
            name: name.to_os_string(),
            stem,
            ext: p.extension().map(OsStr::to_os_string),
            max,
        }
    }

    fn get(&self, n: u32) -> OsString {
        if n == 0 {
            return self.name.clone();
        }
        let mut s = self.stem.clone();
        s.push(format!(".{n}"));
        if let Some(ext) = &self.ext {
            s.push(".");
            s.push(ext);
        }
        s
    }
}

/// The archive folder, held open so every step acts on the folder that was checked.
struct ArchiveDir {
    fd: OwnedFd,
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl ArchiveDir {
    fn open(path: &Path) -> Result<Self, ArchiveError> {
        let not_regular = || ArchiveError::NotRegular {
            path: path.to_path_buf(),
        };
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => return Err(not_regular()),
            Ok(m) if !m.is_dir() => return Err(io_err(path, Errno::NOTDIR)),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(path)
                .map_err(|e| io_err(path, e))?,
            Err(e) => return Err(io_err(path, e)),
        }
        // O_NOFOLLOW closes the gap between the check above and this open.
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(CWD, path, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::LOOP) => return Err(not_regular()),
            Err(e) => return Err(io_err(path, e)),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| io_err(path, e))?;
        Ok(ArchiveDir {
            fd,
            path: path.to_path_buf(),
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }

    fn sync(&self) -> Result<(), ArchiveError> {
        rustix::fs::fsync(&self.fd).map_err(|e| io_err(&self.path, e))
    }

    fn sync_best_effort(&self) {
        if let Err(e) = self.sync() {
            tracing::warn!(error = %e, "fsync of archive folder failed");
        }
    }

    fn unlink(&self, name: &OsStr) -> rustix::io::Result<()> {
        rustix::fs::unlinkat(&self.fd, name, AtFlags::empty())
    }

    /// Removes a file we created; a failure leaves a stray file, which is logged.
    fn remove_best_effort(&self, name: &OsStr) {
        match self.unlink(name) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => tracing::warn!(
                path = %self.path.join(name).display(),
                error = %io::Error::from(e),
                "could not remove archive copy"
            ),
        }
    }

    fn exists(&self, name: &OsStr) -> Result<bool, ArchiveError> {
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(_) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(io_err(&self.path.join(name), e)),
        }
    }
}

/// What must not change between the start of a copy (or a late append) and the unlink
/// of the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileState {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) size: u64,
    mtime: (i64, i64),
}

impl FileState {
    pub(crate) fn of(m: &Metadata) -> Self {
        FileState {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
        }
    }

    pub(crate) fn id(&self) -> (u64, u64) {
        (self.dev, self.ino)
    }
}

/// The cross-filesystem path, starting the name search at candidate `first`.
/// `hook` lets tests write to the source at the delicate moments.
fn copy_into(
    src: &Path,
    lstat: &Metadata,
    dir: &ArchiveDir,
    names: &Names,
    first: u32,
    mut hook: impl FnMut(Stage),
) -> Result<Archived, ArchiveError> {
    let src_file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(src)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => ArchiveError::NotRegular {
                path: src.to_path_buf(),
            },
            _ => io_err(src, e),
        })?;
    let start_meta = src_file.metadata().map_err(|e| io_err(src, e))?;
    let start = FileState::of(&start_meta);
    // The name could have been swapped for another file since the lstat.
    if !start_meta.is_file() || (start.dev, start.ino) != (lstat.dev(), lstat.ino()) {
        return Err(ArchiveError::NotRegular {
            path: src.to_path_buf(),
        });
    }

    let mut n = first;
    let mut cand = loop {
        if n >= names.max {
            return Err(no_free_name(dir, names));
        }
        let c = names.get(n);
        if !dir.exists(&c)? {
            break c;
        }
        n += 1;
    };
    let mut partial = cand.clone();
    partial.push(".partial");
    let partial_path = dir.path.join(&partial);

    // A `.partial` here is left from a crash mid-copy: never a finished archive, so
    // it is safe to drop (its source was not unlinked).
    match dir.unlink(&partial) {
        Ok(()) | Err(Errno::NOENT) => {}
        Err(e) => return Err(io_err(&partial_path, e)),
    }
    let part_fd = rustix::fs::openat(
        &dir.fd,
        &partial,
        OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(start_meta.mode() & 0o777),
    )
    .map_err(|e| io_err(&partial_path, e))?;
    let part = File::from(part_fd);

    let copied = match copy_and_verify(&src_file, &part, start.size) {
        Ok(copied) => copied,
        Err(failure) => {
            drop(part);
            dir.remove_best_effort(&partial);
            let dest = dir.path.join(&cand);
            let changed = src_file.metadata().map(|m| FileState::of(&m) != start);
            return Err(match failure {
                CopyFailure::Io(e) => io_err(&partial_path, e),
                _ if !matches!(changed, Ok(false)) => ArchiveError::ChangedDuringCopy {
                    src: src.to_path_buf(),
                    dest,
                },
                CopyFailure::Mismatch => ArchiveError::VerifyFailed {
                    src: src.to_path_buf(),
                    dest,
                },
            });
        }
    };
    drop(part);

    // Into place without replacing; a name taken since the search gets the next number.
    loop {
        let res =
            rustix::fs::renameat_with(&dir.fd, &partial, &dir.fd, &cand, RenameFlags::NOREPLACE)
                .or_else(|e| match e {
                    Errno::INVAL | Errno::NOSYS => {
                        // Once linked, the copy is in place; a `.partial` name left
                        // behind is only clutter, removed when next chosen.
                        rustix::fs::linkat(&dir.fd, &partial, &dir.fd, &cand, AtFlags::empty())
                            .map(|()| dir.remove_best_effort(&partial))
                    }
                    e => Err(e),
                });
        match res {
            Ok(()) => break,
            Err(Errno::EXIST) if n + 1 < names.max => {
                n += 1;
                cand = names.get(n);
            }
            Err(e) => {
                dir.remove_best_effort(&partial);
                return Err(match e {
                    Errno::EXIST => no_free_name(dir, names),
                    e => io_err(&partial_path, e),
                });
            }
        }
    }
    let dest = dir.path.join(&cand);
    // The source goes only once the copy's name is durable.
    if let Err(e) = dir.sync() {
        dir.remove_best_effort(&cand);
        return Err(e);
    }

    hook(Stage::BeforeUnlink);

    // From here on, every way out that keeps the source removes the copy, so a
    // retry cannot archive the same bytes twice.
    let now = match src_file.metadata() {
        Ok(m) => m,
        Err(e) => {
            dir.remove_best_effort(&cand);
            return Err(io_err(src, e));
        }
    };
    if FileState::of(&now) != start {
        // A writer appended (or rewrote) meanwhile: the copy is stale. Keep the
        // original whole and let the caller retry once it settles again.
        dir.remove_best_effort(&cand);
        dir.sync_best_effort();
        return Err(ArchiveError::ChangedDuringCopy {
            src: src.to_path_buf(),
            dest,
        });
    }
    match std::fs::symlink_metadata(src) {
        Ok(m) if (m.dev(), m.ino()) == (start.dev, start.ino) => {}
        // Someone else moved, deleted or replaced the source name while we copied. Our
        // copy holds every byte of the inode we read, so keep it; the name is not ours
        // to unlink any more.
        Ok(_) | Err(_) => {
            tracing::warn!(
                path = %src.display(),
                "source name moved or replaced during copy; copy kept, name left alone"
            );
            return Ok(Archived::Copied(dest));
        }
    }
    match rustix::fs::unlinkat(CWD, src, AtFlags::empty()) {
        // Gone since the check: same case as above, the copy is all that is left.
        Ok(()) | Err(Errno::NOENT) => {}
        Err(e) => {
            dir.remove_best_effort(&cand);
            dir.sync_best_effort();
            return Err(io_err(src, e));
        }
    }
    sync_dir_best_effort(parent_of(src));

    hook(Stage::AfterUnlink);

    // A per-line `open('a')` writer that opened just before the unlink writes into
    // the now-nameless inode; we still hold it, so carry those bytes over. The source
    // name is gone already, so a failure here is logged, not returned: the archive
    // still holds every byte that was verified.
    if let Err(e) = rescue_tail(&src_file, copied, dir, &cand) {
        tracing::error!(error = %e, "could not carry over bytes written during unlink");
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
    let copied = io::copy(&mut &*src, &mut &*part).map_err(CopyFailure::Io)?;
    part.sync_all().map_err(CopyFailure::Io)?;
    let part_len = part.metadata().map_err(CopyFailure::Io)?.len();
    let src_len = src.metadata().map_err(CopyFailure::Io)?.len();
    if copied != expected || part_len != copied || src_len != copied {
        return Err(CopyFailure::Mismatch);
    }
    // Re-read both rather than trust the copy loop: catches short writes and a
    // source rewritten in place under us.
    let mut a = vec![0u8; 64 * 1024];
    let mut b = vec![0u8; 64 * 1024];
    let mut off = 0u64;
    while off < copied {
        let want = a.len().min((copied - off) as usize);
        src.read_exact_at(&mut a[..want], off)
            .map_err(CopyFailure::Io)?;
        part.read_exact_at(&mut b[..want], off)
            .map_err(CopyFailure::Io)?;
        if a[..want] != b[..want] {
            return Err(CopyFailure::Mismatch);
        }
        off += want as u64;
    }
    Ok(copied)
}

/// Appends what the unlinked source gained past `copied` to the archive copy.
fn rescue_tail(
    src: &File,
    copied: u64,
    dir: &ArchiveDir,
    cand: &OsStr,
) -> Result<(), ArchiveError> {
    let dest = dir.path.join(cand);
    let len = src.metadata().map_err(|e| io_err(&dest, e))?.len();
    if len <= copied {
        return Ok(());
    }
    let fd = rustix::fs::openat(
        &dir.fd,
        cand,
        OFlags::WRONLY | OFlags::APPEND | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err(&dest, e))?;
    let mut out = File::from(fd);
    let mut buf = vec![0u8; 64 * 1024];
    let mut off = copied;
    while off < len {
        let want = buf.len().min((len - off) as usize);
        let got = src
            .read_at(&mut buf[..want], off)
            .map_err(|e| io_err(&dest, e))?;
        if got == 0 {
            break;
        }
        out.write_all(&buf[..got]).map_err(|e| io_err(&dest, e))?;
        off += got as u64;
    }
    out.sync_all().map_err(|e| io_err(&dest, e))?;
    tracing::warn!(path = %dest.display(), bytes = off - copied, "appended bytes written during unlink");
    Ok(())
}

#[cfg(test)]
mod tests;
