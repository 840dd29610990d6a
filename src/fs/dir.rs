//! Directory handles, and resolving relative names beneath them without following a symlink.

use super::error::FsError;
use super::id::FileId;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

/// How names beneath a handle are resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolve {
    /// One `openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|RESOLVE_NO_MAGICLINKS)` per open.
    Openat2,
    /// Kernels without `openat2`: one `openat(O_NOFOLLOW|O_DIRECTORY)` per component.
    Walk,
}

impl Resolve {
    /// `Openat2` where the kernel has it (probed once per process), else `Walk`.
    pub fn detect() -> Resolve {
        static PROBED: OnceLock<Resolve> = OnceLock::new();
        *PROBED.get_or_init(|| {
            let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
            // A relative name: with RESOLVE_BENEATH an absolute one is refused (EXDEV) even
            // where the kernel has openat2, which would hide it.
            match rfs::openat2(rfs::CWD, ".", flags, Mode::empty(), ResolveFlags::BENEATH) {
                Ok(_) => Resolve::Openat2,
                // ENOSYS: kernel < 5.6; EPERM: a seccomp filter that predates openat2.
                Err(e) => {
                    tracing::info!(error = %e, "openat2 unavailable; resolving paths one component at a time");
                    Resolve::Walk
                }
            }
        })
    }
}

/// What a directory entry is (from `fstat`, or from `readdir` where it says).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
    /// `readdir` on some filesystems does not say; `fstat` to know.
    Unknown,
}

impl EntryKind {
    pub(crate) fn of(t: FileType) -> EntryKind {
        match t {
            FileType::RegularFile => EntryKind::File,
            FileType::Directory => EntryKind::Dir,
            FileType::Symlink => EntryKind::Symlink,
            FileType::Fifo => EntryKind::Fifo,
            FileType::Socket => EntryKind::Socket,
            FileType::CharacterDevice => EntryKind::CharDevice,
            FileType::BlockDevice => EntryKind::BlockDevice,
            FileType::Unknown => EntryKind::Unknown,
        }
    }

    pub(crate) fn of_stat(st: &rfs::Stat) -> EntryKind {
        EntryKind::of(FileType::from_raw_mode(st.st_mode as _))
    }

    /// For messages: "FIFO", "symlink", ...
    pub fn describe(self) -> &'static str {
        match self {
            EntryKind::File => "regular file",
            EntryKind::Dir => "folder",
            EntryKind::Symlink => "symlink",
            EntryKind::Fifo => "FIFO",
            EntryKind::Socket => "socket",
            EntryKind::CharDevice => "character device",
            EntryKind::BlockDevice => "block device",
            EntryKind::Unknown => "file of unknown type",
        }
    }
}

/// What [`Dir::metadata`] found at a name (the name itself, never a symlink's target).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub kind: EntryKind,
    pub id: FileId,
    pub nlink: u64,
}

/// One name listed by [`Dir::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: OsString,
    pub kind: EntryKind,
}

/// An open directory: every name below it is resolved relative to this handle.
/// `path` is only for messages; it is never opened again.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
    resolve: Resolve,
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

impl Dir {
    /// Opens a configured, trusted folder (a workspace base, `archive_dir`): the only open
    /// by absolute path. Symlinks in it are followed (the admin chose it); nothing below is.
    pub fn open_base(path: &Path) -> Result<Dir, FsError> {
        Dir::open_base_with(path, Resolve::detect())
    }

    /// [`Dir::open_base`], creating the folder and its parents (mode 0755) when missing:
    /// for a configured folder of the daemon's own (`archive_dir`).
    pub fn open_or_create_base(path: &Path) -> Result<Dir, FsError> {
        match Dir::open_base(path) {
            Err(e) if e.is_not_found() => {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(path)
                    .map_err(|e| FsError::io(path, e))?;
                Dir::open_base(path)
            }
            other => other,
        }
    }

    /// [`Dir::open_base`] with a chosen resolver (tests force [`Resolve::Walk`]).
    pub fn open_base_with(path: &Path, resolve: Resolve) -> Result<Dir, FsError> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd =
            rfs::openat(rfs::CWD, path, flags, Mode::empty()).map_err(|e| FsError::io(path, e))?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
            resolve,
        })
    }

    /// The display path (for messages and reports only).
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn resolver(&self) -> Resolve {
        self.resolve
    }

    /// The display path of `rel` below this folder.
    pub fn display(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }

    pub fn try_clone(&self) -> Result<Dir, FsError> {
        Ok(Dir {
            fd: self
                .fd
                .try_clone()
                .map_err(|e| FsError::io(&self.path, e))?,
            path: self.path.clone(),
            resolve: self.resolve,
        })
    }

    /// (dev, ino) of this folder.
    pub fn identity(&self) -> Result<(u64, u64), FsError> {
        let st = rfs::fstat(&self.fd).map_err(|e| FsError::io(&self.path, e))?;
        Ok((st.st_dev as u64, st.st_ino as u64))
    }

    /// Opens the folder `rel` beneath this one (no symlink anywhere on the way).
    pub fn open_dir(&self, rel: impl AsRef<Path>) -> Result<Dir, FsError> {
        let rel = rel.as_ref();
        let fd = self.open_beneath(rel, DIR_FLAGS, Mode::empty())?;
        Ok(Dir {
            fd,
            path: self.path.join(rel),
            resolve: self.resolve,
        })
    }

    /// Creates the folders of `rel` that are missing (mode `mode`, umask applies) and
    /// opens the last one, one component at a time with `O_NOFOLLOW`: a symlink planted
    /// on the way is refused, never followed.
    pub fn create_dir_all_beneath(&self, rel: impl AsRef<Path>, mode: u32) -> Result<Dir, FsError> {
        let rel = rel.as_ref();
        let parts = self.components(rel)?;
        let mut cur: Option<Dir> = None;
        for part in parts {
            let here = cur.as_ref().unwrap_or(self);
            match rfs::mkdirat(&here.fd, part, Mode::from_raw_mode(mode as _)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(FsError::io(here.path.join(part), e)),
            }
            let next = here.open_dir(part)?;
            cur = Some(next);
        }
        Ok(cur.expect("components() refuses an empty path"))
    }

    /// What is at `rel` (not following a final symlink); `None` when nothing is there.
    /// Never opens the file for reading: a FIFO or device is only looked at.
    pub fn metadata(&self, rel: impl AsRef<Path>) -> Result<Option<Entry>, FsError> {
        let rel = rel.as_ref();
        // One plain name: nothing is traversed, so one `fstatat(AT_SYMLINK_NOFOLLOW)` says
        // what `openat2(O_PATH|O_NOFOLLOW)` + `fstat` would, in one syscall instead of three
        // (a pass over a backlog asks this for every log it archives).
        if let Ok(name) = self.single_name(rel) {
            return match rfs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => Ok(Some(Entry {
                    kind: EntryKind::of_stat(&st),
                    id: FileId::of_stat(&st),
                    nlink: st.st_nlink,
                })),
                Err(Errno::NOENT) => Ok(None),
                Err(e) => Err(self.map_errno(rel, e, OFlags::PATH | OFlags::NOFOLLOW)),
            };
        }
        let fd = match self.open_beneath(rel, OFlags::PATH | OFlags::CLOEXEC, Mode::empty()) {
            Ok(fd) => fd,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let st = rfs::fstat(&fd).map_err(|e| FsError::io(self.path.join(rel), e))?;
        Ok(Some(Entry {
            kind: EntryKind::of_stat(&st),
            id: FileId::of_stat(&st),
            nlink: st.st_nlink as u64,
        }))
    }

    /// Whether anything (even a dangling symlink) has the name `rel`.
    pub fn exists(&self, rel: impl AsRef<Path>) -> Result<bool, FsError> {
        Ok(self.metadata(rel)?.is_some())
    }

    /// Whether anything has the name `rel`, in one `fstatat(AT_SYMLINK_NOFOLLOW)`. The
    /// folders on the way are not checked for symlinks: use it only where the answer leads
    /// to nothing but a later confined open (discovery's "has a registry" test).
    pub fn probe_exists(&self, rel: impl AsRef<Path>) -> bool {
        let rel = rel.as_ref();
        self.components(rel).is_ok()
            && rfs::statat(&self.fd, rel, AtFlags::SYMLINK_NOFOLLOW).is_ok()
    }

    /// What is at `rel` by one `fstatat(AT_SYMLINK_NOFOLLOW)`, `None` when nothing (or an
    /// error). Like [`Dir::probe_exists`], the folders on the way are not checked for
    /// symlinks: use it only where the answer leads to nothing but a skip or a later
    /// confined open (the steady-state cache: "the registry read then is still there").
    pub fn probe_metadata(&self, rel: impl AsRef<Path>) -> Option<Entry> {
        let rel = rel.as_ref();
        self.components(rel).ok()?;
        let st = rfs::statat(&self.fd, rel, AtFlags::SYMLINK_NOFOLLOW).ok()?;
        Some(Entry {
            kind: EntryKind::of_stat(&st),
            id: FileId::of_stat(&st),
            nlink: st.st_nlink,
        })
    }

    /// The names in this folder (without `.` and `..`), with the type `readdir` gives.
    pub fn list(&self) -> Result<Vec<Listed>, FsError> {
        let mut out = Vec::new();
        self.for_each_name(|name, kind| {
            out.push(Listed {
                name: name.to_os_string(),
                kind,
            })
        })?;
        Ok(out)
    }

    /// Calls `f` with each name in this folder (without `.` and `..`) and the type
    /// `readdir` gives, without collecting them (a folder of 100,000 archives).
    pub fn for_each_name(&self, mut f: impl FnMut(&OsStr, EntryKind)) -> Result<(), FsError> {
        let mut reader = rfs::Dir::read_from(&self.fd).map_err(|e| FsError::io(&self.path, e))?;
        while let Some(entry) = reader.read() {
            let entry = entry.map_err(|e| FsError::io(&self.path, e))?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            f(OsStr::from_bytes(name), EntryKind::of(entry.file_type()));
        }
        Ok(())
    }

    /// Removes the file `name` in this folder (for names the daemon created itself;
    /// agent files go through [`super::unlink_if_same`]).
    pub fn unlink(&self, name: impl AsRef<Path>) -> Result<(), FsError> {
        let name = self.single_name(name.as_ref())?;
        rfs::unlinkat(&self.fd, name, AtFlags::empty())
            .map_err(|e| FsError::io(self.path.join(name), e))
    }

    /// fsync of the folder (makes renames and creations in it durable).
    pub fn sync(&self) -> Result<(), FsError> {
        rfs::fsync(&self.fd).map_err(|e| FsError::io(&self.path, e))
    }

    /// Opens `rel` beneath this folder with `flags` (plus `O_NOFOLLOW|O_CLOEXEC`),
    /// refusing symlinks at every component.
    pub(crate) fn open_beneath(
        &self,
        rel: &Path,
        flags: OFlags,
        mode: Mode,
    ) -> Result<OwnedFd, FsError> {
        let parts = self.components(rel)?;
        let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        // openat2 rejects a mode without O_CREAT.
        let mode = if flags.contains(OFlags::CREATE) {
            mode
        } else {
            Mode::empty()
        };
        let res = match self.resolve {
            Resolve::Openat2 => self.openat2(&parts, flags, mode),
            Resolve::Walk => self.walk(&parts, flags, mode),
        };
        res.map_err(|e| self.map_errno(rel, e, flags))
    }

    fn openat2(&self, parts: &[&OsStr], flags: OFlags, mode: Mode) -> Result<OwnedFd, Errno> {
        let mut joined = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                joined.push(b'/');
            }
            joined.extend_from_slice(p.as_bytes());
        }
        let joined = OsStr::from_bytes(&joined);
        let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        // EAGAIN: a rename elsewhere raced the lookup; the kernel asks for a retry.
        let mut tries = 0;
        loop {
            match rfs::openat2(&self.fd, joined, flags, mode, how) {
                Err(Errno::AGAIN) if tries < 64 => tries += 1,
                Err(Errno::NOSYS) => return self.walk(parts, flags, mode),
                other => return other,
            }
        }
    }

    fn walk(&self, parts: &[&OsStr], flags: OFlags, mode: Mode) -> Result<OwnedFd, Errno> {
        let (last, dirs) = parts
            .split_last()
            .expect("components() refuses an empty path");
        let mut held: Option<OwnedFd> = None;
        for part in dirs {
            let at: BorrowedFd<'_> = held.as_ref().map_or(self.fd.as_fd(), |fd| fd.as_fd());
            let next = rfs::openat(at, *part, DIR_FLAGS, Mode::empty()).map_err(|e| {
                // O_DIRECTORY|O_NOFOLLOW on a symlink says ENOTDIR; report it as the
                // symlink it is, as openat2 does (ELOOP).
                let is_link = rfs::statat(at, *part, AtFlags::SYMLINK_NOFOLLOW)
                    .is_ok_and(|st| EntryKind::of_stat(&st) == EntryKind::Symlink);
                if e == Errno::NOTDIR && is_link {
                    Errno::LOOP
                } else {
                    e
                }
            })?;
            held = Some(next);
        }
        let at: BorrowedFd<'_> = held.as_ref().map_or(self.fd.as_fd(), |fd| fd.as_fd());
        rfs::openat(at, *last, flags, mode)
    }

    fn map_errno(&self, rel: &Path, e: Errno, flags: OFlags) -> FsError {
        let path = self.path.join(rel);
        match e {
            // ELOOP: a symlink on the way (RESOLVE_NO_SYMLINKS) or at the end (O_NOFOLLOW);
            // EXDEV: the lookup tried to leave the handle's folder (RESOLVE_BENEATH).
            Errno::LOOP | Errno::XDEV => FsError::Symlink { path },
            Errno::EXIST if flags.contains(OFlags::EXCL) => FsError::Exists { path },
            // O_DIRECTORY|O_NOFOLLOW on a final symlink says ENOTDIR: look at what it is.
            Errno::NOTDIR if flags.contains(OFlags::DIRECTORY) => {
                let kind = match self.metadata(rel) {
                    Ok(Some(entry)) => entry.kind,
                    _ => EntryKind::Unknown,
                };
                match kind {
                    EntryKind::Symlink => FsError::Symlink { path },
                    EntryKind::Unknown => FsError::NotDir {
                        path,
                        kind: "file (or one of its parents is)",
                    },
                    kind => FsError::NotDir {
                        path,
                        kind: kind.describe(),
                    },
                }
            }
            Errno::NXIO => FsError::NotRegular {
                path,
                kind: "FIFO or socket",
            },
            e => FsError::io(path, e),
        }
    }

    /// The components of `rel`: plain names only (no root, no `..`), at least one.
    fn components<'a>(&self, rel: &'a Path) -> Result<Vec<&'a OsStr>, FsError> {
        let bad = || FsError::BadName {
            dir: self.path.clone(),
            name: rel.to_string_lossy().into_owned(),
        };
        if rel.as_os_str().as_bytes().contains(&0) {
            return Err(bad());
        }
        let mut parts = Vec::new();
        for c in rel.components() {
            match c {
                Component::Normal(p) => parts.push(p),
                Component::CurDir if parts.is_empty() => return Err(bad()),
                _ => return Err(bad()),
            }
        }
        if parts.is_empty() {
            return Err(bad());
        }
        Ok(parts)
    }

    /// `name` as one plain component (what rename and unlink take).
    pub(crate) fn single_name<'a>(&self, name: &'a Path) -> Result<&'a OsStr, FsError> {
        match self.components(name)?.as_slice() {
            [one] if !name.as_os_str().as_bytes().contains(&b'/') => Ok(one),
            _ => Err(FsError::BadName {
                dir: self.path.clone(),
                name: name.to_string_lossy().into_owned(),
            }),
        }
    }
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
