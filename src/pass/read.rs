//! Reading a task registry for a pass: its identity for the steady-state cache, and its
//! lean form (the full tolerant read only when the fast one cannot parse it).

use super::lean::{self, LeanRegistry};
use crate::registry::{ReadOptions, read_registry};
use rustix::fs::{Mode, OFlags, open};
use std::io::Read;
use std::path::Path;

/// What identifies one version of a registry file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileKey {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: (i64, i64),
}

fn key_of(st: &rustix::fs::Stat) -> FileKey {
    FileKey {
        dev: st.st_dev,
        ino: st.st_ino,
        size: st.st_size as u64,
        mtime: (st.st_mtime, st.st_mtime_nsec as i64),
    }
}

/// The key of the registry at `path` (a symlink is not followed; anything but a regular
/// file has no key, so it is always read and reported the usual way).
pub fn registry_key(path: &Path) -> Option<FileKey> {
    let st = rustix::fs::lstat(path).ok()?;
    rustix::fs::FileType::from_raw_mode(st.st_mode)
        .is_file()
        .then(|| key_of(&st))
}

/// Reads the registry at `path` into its lean form, and the key of what was read.
/// Anything unusual (not a regular file, too large, empty, half written, torn, not an
/// object) goes through `read_registry`, which retries, repairs or names the problem.
pub fn read_lean(
    path: &Path,
    opts: &ReadOptions,
) -> Result<(LeanRegistry, Option<FileKey>), String> {
    if let Some((bytes, key)) = read_fast(path, opts.max_bytes)
        && let Ok(lean) = lean::parse(&bytes)
    {
        // A version read is one a torn write may later be proved against.
        crate::registry::seen::global().note(path, &bytes);
        return Ok((lean, Some(key)));
    }
    let key = registry_key(path);
    let value = read_registry(path, opts).map_err(|e| e.to_string())?;
    Ok((lean::from_value(&value), key))
}

/// The file's bytes when it is a regular file within `max_bytes`, opened without following
/// a symlink or blocking on a FIFO.
fn read_fast(path: &Path, max_bytes: u64) -> Option<(Vec<u8>, FileKey)> {
    let fd = open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let st = rustix::fs::fstat(&fd).ok()?;
    if !rustix::fs::FileType::from_raw_mode(st.st_mode).is_file() || st.st_size as u64 > max_bytes {
        return None;
    }
    let mut file = std::fs::File::from(fd);
    let mut bytes = Vec::with_capacity(st.st_size as usize + 1);
    file.by_ref()
        .take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    if bytes.len() as u64 > max_bytes || bytes.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    Some((bytes, key_of(&st)))
}

/// The registry as `observe::task_view` reads it, holding only the fields it looks at
/// (so a pass keeps a small tree per task, not the whole file's), and the key of what
/// was read.
pub fn read_small(
    path: &Path,
    opts: &ReadOptions,
) -> (Result<serde_json::Value, String>, Option<FileKey>) {
    match read_lean(path, opts) {
        Ok((lean, key)) => (Ok(lean.into_root()), key),
        Err(e) => (Err(e), None),
    }
}
