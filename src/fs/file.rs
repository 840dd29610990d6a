//! Opening agent-writable files: regular files only, hard links refused where it matters.

use super::dir::{Dir, EntryKind};
use super::error::FsError;
use super::id::FileId;
use rustix::fs::{self as rfs, Mode, OFlags};
use std::fs::File;
use std::path::{Path, PathBuf};

/// Why a file is opened; decides the access mode and whether hard links are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Read only (registries, a stream log's tail): hard links allowed, nothing changes.
    Read,
    /// Read a file that will then be moved, copied-then-deleted or deleted: `st_nlink == 1`.
    ReadToMove,
    /// Append to an existing file, reading it back to verify (a late write into its
    /// archive): `st_nlink == 1`.
    Append,
    /// Append (and read), creating the file (mode 0644) when missing (the terminal
    /// progress line): `st_nlink == 1`.
    AppendOrCreate,
    /// Read and write in place (a registry): `st_nlink == 1`.
    ReadWrite,
}

impl Purpose {
    fn flags(self) -> OFlags {
        match self {
            Purpose::Read | Purpose::ReadToMove => OFlags::RDONLY,
            Purpose::Append => OFlags::RDWR | OFlags::APPEND,
            Purpose::AppendOrCreate => OFlags::RDWR | OFlags::APPEND | OFlags::CREATE,
            Purpose::ReadWrite => OFlags::RDWR,
        }
    }

    fn single_link(self) -> bool {
        !matches!(self, Purpose::Read)
    }
}

/// An open regular file below a workspace base, with what it was when opened.
#[derive(Debug)]
pub struct RegularFile {
    pub file: File,
    /// At open time; call [`RegularFile::current`] for a fresh one.
    pub id: FileId,
    /// Hard links at open time.
    pub links: u64,
    /// For messages only.
    pub path: PathBuf,
}

impl RegularFile {
    /// A fresh `fstat` of the open file.
    pub fn current(&self) -> Result<FileId, FsError> {
        let st = rfs::fstat(&self.file).map_err(|e| FsError::io(&self.path, e))?;
        Ok(FileId::of_stat(&st))
    }

    pub fn sync(&self) -> Result<(), FsError> {
        self.file.sync_all().map_err(|e| FsError::io(&self.path, e))
    }

    /// Sets the access and modification times of the open file to `mtime` (seconds,
    /// nanoseconds): a compressed copy keeps its log's age.
    pub fn set_mtime(&self, (sec, nsec): (i64, i64)) -> Result<(), FsError> {
        let at = rfs::Timespec {
            tv_sec: sec,
            tv_nsec: nsec as _,
        };
        let times = rfs::Timestamps {
            last_access: at,
            last_modification: at,
        };
        rfs::futimens(&self.file, &times).map_err(|e| FsError::io(&self.path, e))
    }
}

/// Every open of an agent-writable file: never follows, never blocks, never adopts a tty.
const OPEN_FLAGS: OFlags = OFlags::NOFOLLOW
    .union(OFlags::NONBLOCK)
    .union(OFlags::NOCTTY)
    .union(OFlags::CLOEXEC);

impl Dir {
    /// Opens the regular file `rel` beneath this folder for `purpose`. Refused: symlinks
    /// (final or on the way), FIFOs, sockets, devices, folders; for every purpose but
    /// `Read`, a file with more than one hard link.
    pub fn open_file(
        &self,
        rel: impl AsRef<Path>,
        purpose: Purpose,
    ) -> Result<RegularFile, FsError> {
        let rel = rel.as_ref();
        let fd = self.open_beneath(
            rel,
            purpose.flags() | OPEN_FLAGS,
            Mode::from_raw_mode(0o644),
        )?;
        checked(File::from(fd), self.display(rel), purpose)
    }

    /// What a move of `name` (one plain name) would check when opening it for
    /// [`Purpose::ReadToMove`], without opening it: one `fstatat(AT_SYMLINK_NOFOLLOW)`.
    /// Refused the same way: missing (not found), a symlink, anything but a regular file,
    /// more than one hard link. A rename needs no descriptor; callers check after the move
    /// that the name they moved is this file.
    pub fn stat_to_move(&self, name: impl AsRef<Path>) -> Result<FileId, FsError> {
        let name = self.single_name(name.as_ref())?;
        let path = || self.display(name);
        let entry = self
            .metadata(name)?
            .ok_or_else(|| FsError::io(path(), std::io::ErrorKind::NotFound))?;
        match entry.kind {
            EntryKind::File => {}
            EntryKind::Symlink => return Err(FsError::Symlink { path: path() }),
            kind => {
                return Err(FsError::NotRegular {
                    path: path(),
                    kind: kind.describe(),
                });
            }
        }
        if entry.nlink != 1 {
            return Err(FsError::HardLinked {
                path: path(),
                links: entry.nlink,
            });
        }
        Ok(entry.id)
    }

    /// Creates `name` (one plain name) with `O_CREAT|O_EXCL|O_NOFOLLOW`, open read-write:
    /// fails with [`FsError::Exists`] if anything, even a dangling symlink, has the name.
    pub fn create_new(&self, name: impl AsRef<Path>, mode: u32) -> Result<RegularFile, FsError> {
        let name = self.single_name(name.as_ref())?;
        let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OPEN_FLAGS;
        let fd = self.open_beneath(Path::new(name), flags, Mode::from_raw_mode(mode as _))?;
        checked(File::from(fd), self.display(name), Purpose::ReadWrite)
    }
}

fn checked(file: File, path: PathBuf, purpose: Purpose) -> Result<RegularFile, FsError> {
    let st = rfs::fstat(&file).map_err(|e| FsError::io(&path, e))?;
    let kind = EntryKind::of_stat(&st);
    if kind != EntryKind::File {
        return Err(FsError::NotRegular {
            path,
            kind: kind.describe(),
        });
    }
    if purpose.single_link() && st.st_nlink != 1 {
        return Err(FsError::HardLinked {
            path,
            links: st.st_nlink as u64,
        });
    }
    Ok(RegularFile {
        file,
        id: FileId::of_stat(&st),
        links: st.st_nlink as u64,
        path,
    })
}
