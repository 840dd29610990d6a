//! Reading a task registry for a pass: its identity for the steady-state cache, and its
//! lean form (the full tolerant read only when the fast one cannot parse it).

use super::lean::{self, LeanRegistry};
use crate::fs::{Dir, EntryKind, FileId, Purpose, open_parent_below};
use crate::registry::{ReadOptions, read_registry};
use std::io::Read;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

/// How far above a registry its trusted workspace base lies (`<base>/TASK-x/AGENT_REGISTRY.json`):
/// the folders below it are reached without following a symlink.
const LEVELS_BELOW_BASE: usize = 2;

/// Registries this large or larger are read and parsed one at a time, whichever of the
/// pass's reading threads meets them: their text and its parse are a pass's largest
/// passing memory (two 30 MB registries read together: 143 -> 190 MB peak RSS).
pub(super) const READ_ALONE_ABOVE: u64 = 4 * 1024 * 1024;
static READ_ALONE: Mutex<()> = Mutex::new(());

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
    // A large text keeps its turn until parsed and dropped (see `READ_ALONE_ABOVE`).
    if let Some((text, key)) = read_fast_gated(path, opts.max_bytes)
        && let Ok(lean) = lean::parse(&text.bytes)
    {
        // A version read is one a torn write may later be proved against.
        crate::registry::seen::global().note(path, &text.bytes);
        return Ok((lean, Some(key)));
    }
    let key = registry_key(path);
    let value = read_registry(path, opts).map_err(|e| e.to_string())?;
    Ok((lean::from_value(&value), key))
}

/// The file's bytes when it is a regular file within `max_bytes`, opened through
/// `crate::fs` (no symlink followed at the name or on the way, a FIFO never blocks).
pub(super) fn read_fast(path: &Path, max_bytes: u64) -> Option<(Vec<u8>, FileKey)> {
    read_fast_gated(path, max_bytes).map(|(text, key)| (text.bytes, key))
}

/// [`read_fast`], keeping a large registry's [`RegistryText`] (and so its turn) whole.
fn read_fast_gated(path: &Path, max_bytes: u64) -> Option<(RegistryText, FileKey)> {
    let (dir, name) = open_parent_below(path, LEVELS_BELOW_BASE).ok()?;
    let text = read_registry_text(&dir, &name, max_bytes)?;
    if text.bytes.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    let key = key_of(&text.id);
    Some((text, key))
}

/// A registry's bytes as read, and for a large one its turn among the pass's readers.
pub(super) struct RegistryText {
    pub bytes: Vec<u8>,
    pub id: FileId,
    /// Held while the text (and what is parsed from it) lives: see `READ_ALONE_ABOVE`.
    _alone: Option<MutexGuard<'static, ()>>,
}

/// A large registry's turn among the pass's readers, held until dropped.
pub(super) struct ReadTurn {
    _alone: Option<MutexGuard<'static, ()>>,
}

/// `dir/name` when it is a regular file of at most `max_bytes`, opened beneath `dir`
/// (`O_NOFOLLOW|O_NONBLOCK`: no symlink followed, a FIFO never blocks) and read in one
/// allocation of its size; one of `READ_ALONE_ABOVE` bytes or more waits its turn first.
pub(super) fn read_registry_text(
    dir: &Dir,
    name: impl AsRef<Path>,
    max_bytes: u64,
) -> Option<RegistryText> {
    let opened = open_registry(dir, name, max_bytes)?;
    let mut bytes = Vec::with_capacity(opened.id.size as usize + 1);
    opened
        .reader
        .take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    (bytes.len() as u64 <= max_bytes).then_some(RegistryText {
        bytes,
        id: opened.id,
        _alone: opened.turn._alone,
    })
}

/// A registry opened for reading as [`read_registry_text`] opens it (same checks, same
/// turn), to be read by the caller as it parses.
pub(super) struct OpenRegistry {
    pub reader: std::fs::File,
    /// At open time.
    pub id: FileId,
    pub turn: ReadTurn,
}

/// `dir/name` opened as [`read_registry_text`] opens it; `None` when it is not a regular
/// file of at most `max_bytes`.
pub(super) fn open_registry(
    dir: &Dir,
    name: impl AsRef<Path>,
    max_bytes: u64,
) -> Option<OpenRegistry> {
    let registry = dir.open_file(name, Purpose::Read).ok()?;
    if registry.id.size > max_bytes {
        return None;
    }
    let alone = (registry.id.size >= READ_ALONE_ABOVE).then(|| {
        READ_ALONE
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    });
    Some(OpenRegistry {
        reader: registry.file,
        id: registry.id,
        turn: ReadTurn { _alone: alone },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two registries of tiny entries, 30 MB each, read by two threads at once were 190 MB
    /// peak instead of 143: a large text holds its turn while it (or its parse) lives.
    #[test]
    fn a_large_registry_is_read_only_in_its_turn_and_a_small_one_any_time() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join("large.json"),
            vec![b' '; READ_ALONE_ABOVE as usize],
        )
        .unwrap();
        std::fs::write(tmp.path().join("small.json"), b"{}").unwrap();
        let dir = Dir::open_base(tmp.path()).unwrap();
        let max = 2 * READ_ALONE_ABOVE;

        let small = read_registry_text(&dir, "small.json", max).unwrap();
        assert!(READ_ALONE.try_lock().is_ok(), "a small read takes no turn");
        drop(small);

        let large = read_registry_text(&dir, "large.json", max).unwrap();
        assert_eq!(large.bytes.len() as u64, READ_ALONE_ABOVE);
        assert!(READ_ALONE.try_lock().is_err(), "the text holds the turn");
        drop(large);
        assert!(READ_ALONE.try_lock().is_ok(), "and ends with it");

        // Opened to be parsed as read: the turn is the caller's, kept past the bytes.
        let opened = open_registry(&dir, "large.json", max).unwrap();
        let turn = opened.turn;
        drop(opened.reader);
        assert!(READ_ALONE.try_lock().is_err(), "the turn outlives the file");
        drop(turn);
        assert!(READ_ALONE.try_lock().is_ok(), "and ends when dropped");
        assert!(
            open_registry(&dir, "small.json", max)
                .unwrap()
                .turn
                ._alone
                .is_none()
        );
    }
}
