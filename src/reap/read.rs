//! Reading a task registry for a pass: its identity for the steady-state cache, and its
//! lean form (the full tolerant read only when the fast one cannot parse it).

use super::lean::{self, LeanRegistry};
use crate::fs::{EntryKind, FileId, Purpose, open_parent_below};
use crate::registry::{ReadOptions, read_registry};
use std::io::Read;
use std::path::Path;

/// How far above a registry its trusted workspace base lies (`<base>/TASK-x/AGENT_REGISTRY.json`):
/// the folders below it are reached without following a symlink.
const LEVELS_BELOW_BASE: usize = 2;

/// What identifies one version of a registry file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileKey {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: (i64, i64),
}

fn key_of(id: &FileId) -> FileKey {
    FileKey {
        dev: id.dev,
        ino: id.ino,
        size: id.size,
        mtime: id.mtime,
    }
}

/// The key of the registry at `path`, looked at through `crate::fs` (no symlink followed,
/// at the name or on the way; anything but a regular file has no key, so it is always read
/// and reported the usual way).
pub fn registry_key(path: &Path) -> Option<FileKey> {
    let (dir, name) = open_parent_below(path, LEVELS_BELOW_BASE).ok()?;
    let entry = dir.metadata(&name).ok()??;
    (entry.kind == EntryKind::File).then(|| key_of(&entry.id))
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

/// The file's bytes when it is a regular file within `max_bytes`, opened through
/// `crate::fs` (no symlink followed at the name or on the way, a FIFO never blocks).
pub(super) fn read_fast(path: &Path, max_bytes: u64) -> Option<(Vec<u8>, FileKey)> {
    let (dir, name) = open_parent_below(path, LEVELS_BELOW_BASE).ok()?;
    let registry = dir.open_file(&name, Purpose::Read).ok()?;
    if registry.id.size > max_bytes {
        return None;
    }
    let mut file = registry.file;
    let mut bytes = Vec::with_capacity(registry.id.size as usize + 1);
    file.by_ref()
        .take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    if bytes.len() as u64 > max_bytes || bytes.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    Some((bytes, key_of(&registry.id)))
}
