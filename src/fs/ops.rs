//! Renames, unlinks and creations between directory handles: never replacing what is not
//! ours, never deleting a file swapped in after the check.

use super::dir::{Dir, EntryKind};
use super::error::FsError;
use super::id::FileId;
use rustix::fs::{self as rfs, AtFlags, RenameFlags};
use rustix::io::Errno;
use std::ffi::OsString;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Moves `from/from_name` to `to/to_name` without replacing anything there
/// (`renameat2(RENAME_NOREPLACE)`; where the filesystem rejects the flag, `link` then
/// `unlink`, which refuses to replace too). Names are single components.
/// Errors: [`FsError::Exists`] when the target is taken; `is_cross_device()` when the two
/// folders are on different filesystems (the caller copies instead).
pub fn rename_noreplace(
    from: &Dir,
    from_name: impl AsRef<Path>,
    to: &Dir,
    to_name: impl AsRef<Path>,
) -> Result<(), FsError> {
    let src = from.single_name(from_name.as_ref())?;
    let dst = to.single_name(to_name.as_ref())?;
    let res = match rfs::renameat_with(from, src, to, dst, RenameFlags::NOREPLACE) {
        Err(Errno::INVAL | Errno::NOSYS) => link_then_unlink(from, src, to, dst),
        other => other,
    };
    res.map_err(|e| match e {
        Errno::EXIST => FsError::Exists {
            path: to.display(dst),
        },
        e => FsError::io(from.display(src), e),
    })
}

/// `link` then `unlink` (never replacing), for filesystems without `RENAME_NOREPLACE`.
/// Not atomic, but a writer that opens the source in between opens the same inode.
pub fn link_then_unlink(
    from: &Dir,
    src: &std::ffi::OsStr,
    to: &Dir,
    dst: &std::ffi::OsStr,
) -> rustix::io::Result<()> {
    rfs::linkat(from, src, to, dst, AtFlags::empty())?;
    rfs::unlinkat(from, src, AtFlags::empty()).inspect_err(|_| {
        // Two names for one file would be handled twice later; undo the link.
        let _ = rfs::unlinkat(to, dst, AtFlags::empty());
    })
}

/// How [`unlink_if_same`] judges that the file at the name is still the one checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    /// Same inode (a prompt file: its content does not matter).
    Inode,
    /// Same inode, size and mtime (the source of a verified copy).
    Unchanged,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnlinkOutcome {
    Unlinked,
    /// Nothing had the name any more.
    Gone,
}

/// Unlinks `dir/name` only if it is still the file `expected` describes. A file swapped in
/// after the caller's check is never deleted: the name is first renamed to a fresh private
/// name (atomic), that file is checked, and either unlinked or renamed back.
/// Not ours: [`FsError::Changed`], the file left at its name.
pub fn unlink_if_same(
    dir: &Dir,
    name: impl AsRef<Path>,
    expected: &FileId,
    compare: Compare,
) -> Result<UnlinkOutcome, FsError> {
    let name = dir.single_name(name.as_ref())?;
    let Some(private) = take_aside(dir, name)? else {
        return Ok(UnlinkOutcome::Gone);
    };
    let now = rfs::statat(dir, &private, AtFlags::SYMLINK_NOFOLLOW);
    let ours = match &now {
        Ok(st) => {
            let id = FileId::of_stat(st);
            EntryKind::of_stat(st) == EntryKind::File
                && match compare {
                    Compare::Inode => id.same_file(expected),
                    Compare::Unchanged => id == *expected,
                }
        }
        Err(_) => false,
    };
    if ours {
        rfs::unlinkat(dir, &private, AtFlags::empty())
            .map_err(|e| FsError::io(dir.display(&private), e))?;
        return Ok(UnlinkOutcome::Unlinked);
    }
    Err(FsError::Changed {
        path: dir.display(name),
        what: put_back(dir, &private, name, "another file has the name now"),
    })
}

/// Unlinks `dir/name` only if it is a regular file with one link (no symlink, folder,
/// FIFO or device; no hard link to a file elsewhere), judged on the very file unlinked:
/// the name is first renamed to a fresh private name (atomic), what was moved is checked
/// by one `fstatat`, and either unlinked or renamed back. One check instead of a check
/// before and a comparison after ([`unlink_if_same`]): what is unlinked is what was
/// checked, because nothing else can be at the private name.
/// Refused: the error [`Dir::stat_to_move`] would give (`Symlink`, `NotRegular`,
/// `HardLinked`), the file left at its name.
pub fn unlink_regular(dir: &Dir, name: impl AsRef<Path>) -> Result<UnlinkOutcome, FsError> {
    let name = dir.single_name(name.as_ref())?;
    let Some(private) = take_aside(dir, name)? else {
        return Ok(UnlinkOutcome::Gone);
    };
    let st = match rfs::statat(dir, &private, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(e) => {
            let what = put_back(dir, &private, name, "could not be checked");
            return Err(FsError::io(
                dir.display(name),
                std::io::Error::other(format!("{}; {what}", std::io::Error::from(e))),
            ));
        }
    };
    let path = || dir.display(name);
    let refused = match EntryKind::of_stat(&st) {
        EntryKind::File if st.st_nlink == 1 => None,
        EntryKind::File => Some(FsError::HardLinked {
            path: path(),
            links: st.st_nlink as u64,
        }),
        EntryKind::Symlink => Some(FsError::Symlink { path: path() }),
        kind => Some(FsError::NotRegular {
            path: path(),
            kind: kind.describe(),
        }),
    };
    if let Some(refused) = refused {
        let back = rfs::renameat_with(dir, &private, dir, name, RenameFlags::NOREPLACE);
        return match back {
            Ok(()) => Err(refused),
            Err(e) => Err(FsError::Changed {
                path: path(),
                what: format!(
                    "{refused}; and it could not be put back ({}): it is at {}",
                    std::io::Error::from(e),
                    dir.display(&private).display()
                ),
            }),
        };
    }
    rfs::unlinkat(dir, &private, AtFlags::empty())
        .map_err(|e| FsError::io(dir.display(&private), e))?;
    Ok(UnlinkOutcome::Unlinked)
}

/// Renames `dir/name` to a fresh private name (never replacing); `None` when nothing had
/// the name.
fn take_aside(dir: &Dir, name: &std::ffi::OsStr) -> Result<Option<OsString>, FsError> {
    loop {
        let candidate = fresh_name(name, "del");
        match rfs::renameat_with(dir, name, dir, &candidate, RenameFlags::NOREPLACE) {
            Ok(()) => return Ok(Some(candidate)),
            Err(Errno::NOENT) => return Ok(None),
            // Someone planted our fresh name: take another.
            Err(Errno::EXIST) => continue,
            // No RENAME_NOREPLACE here: fresh names are unique, a plain rename is safe.
            Err(Errno::INVAL | Errno::NOSYS) => match rfs::renameat(dir, name, dir, &candidate) {
                Ok(()) => return Ok(Some(candidate)),
                Err(Errno::NOENT) => return Ok(None),
                Err(e) => return Err(FsError::io(dir.display(name), e)),
            },
            Err(e) => return Err(FsError::io(dir.display(name), e)),
        }
    }
}

/// Renames the private name back to `name` (never replacing); says what happened after `why`.
fn put_back(dir: &Dir, private: &std::ffi::OsStr, name: &std::ffi::OsStr, why: &str) -> String {
    match rfs::renameat_with(dir, private, dir, name, RenameFlags::NOREPLACE) {
        Ok(()) => why.to_string(),
        Err(e) => format!(
            "{why}, and it could not be put back ({}): it is at {}",
            std::io::Error::from(e),
            dir.display(private).display()
        ),
    }
}

/// Writes `bytes` as `dir/name`, atomically and durably: a fresh name created
/// `O_CREAT|O_EXCL|O_NOFOLLOW` (a symlink planted anywhere is never written through),
/// written, fsynced, renamed over `name` (which replaces a symlink there, never its
/// target), then the folder fsynced. For every file the daemon creates in a workspace.
pub fn write_new_atomically(
    dir: &Dir,
    name: impl AsRef<Path>,
    bytes: &[u8],
    mode: u32,
) -> Result<(), FsError> {
    replace_file(dir, name, bytes, mode, true)
}

/// [`write_new_atomically`] with the two fsyncs optional (`durable: false` for files that
/// are only evidence, such as the registry's `.reaper-seen`): still never written through
/// a planted symlink, still all or nothing for readers.
pub fn replace_file(
    dir: &Dir,
    name: impl AsRef<Path>,
    bytes: &[u8],
    mode: u32,
    durable: bool,
) -> Result<(), FsError> {
    replace_file_with(dir, name, mode, durable, &mut |file| {
        file.write_all(bytes)?;
        Ok(true)
    })
    .map(drop)
}

/// [`replace_file`] with the content streamed into the fresh file by `fill` (a large file
/// need not be held in memory). `fill` returning `false` drops the fresh file (`name` is
/// untouched): `Ok(None)`. Otherwise the file, renamed over `name`, is returned still open
/// (reads through it see what was written, whatever is planted at `name` later).
pub fn replace_file_with(
    dir: &Dir,
    name: impl AsRef<Path>,
    mode: u32,
    durable: bool,
    fill: &mut dyn FnMut(&mut std::fs::File) -> std::io::Result<bool>,
) -> Result<Option<std::fs::File>, FsError> {
    let name = dir.single_name(name.as_ref())?;
    let (tmp, mut file) = loop {
        let candidate = fresh_name(name, "tmp");
        match dir.create_new(&candidate, mode) {
            Ok(f) => break (candidate, f),
            Err(FsError::Exists { .. }) => continue,
            Err(e) => return Err(e),
        }
    };
    // Exactly `mode`, whatever the umask took away (a sidecar keeps its registry's mode).
    let filled = rfs::fchmod(&file.file, rfs::Mode::from_raw_mode(mode as _))
        .map_err(std::io::Error::from)
        .and_then(|()| fill(&mut file.file))
        .and_then(|keep| {
            if keep && durable {
                file.file.sync_all()?;
            }
            Ok(keep)
        })
        .map_err(|e| FsError::io(dir.display(&tmp), e));
    let written = match filled {
        Ok(false) => {
            let _ = rfs::unlinkat(dir, &tmp, AtFlags::empty());
            return Ok(None);
        }
        Ok(true) => {
            rfs::renameat(dir, &tmp, dir, name).map_err(|e| FsError::io(dir.display(name), e))
        }
        Err(e) => Err(e),
    };
    if let Err(e) = written {
        let _ = rfs::unlinkat(dir, &tmp, AtFlags::empty());
        return Err(e);
    }
    if durable {
        dir.sync()?;
    }
    Ok(Some(file.file))
}

/// fsync of a folder handle.
pub fn sync_dir(dir: &Dir) -> Result<(), FsError> {
    dir.sync()
}

/// `.<name>.agent-reaper-<what>.<pid>.<n>`: unique within this process, and never a name
/// the orchestrator uses (hidden, and no `.json`/`.jsonl` ending).
fn fresh_name(name: &std::ffi::OsStr, what: &str) -> OsString {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut s = OsString::from(".");
    s.push(name);
    // The pid once per process, not a `getpid` per name (a backlog asks for 40,000).
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let pid = *PID.get_or_init(std::process::id);
    s.push(format!(".agent-reaper-{what}.{pid}.{n}.{nanos}"));
    s
}
