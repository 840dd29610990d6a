//! One JSON registry file: flock on the file itself, tolerant reads, in-place writes with a crash sidecar.

use super::cas::{CAS_ROUNDS, Rewrite, UpdateOutcome, WholeValue, edit_in_place};
use super::error::RegistryError;
use super::seen;
use super::torn::find_torn_tail;
use locked::{Locked, cut_to, end_of_bytes, keep_ours_after_cut, reserve, write_padded};
use rustix::fs::{FlockOperation, OFlags, fcntl_getfl, fcntl_setfl, flock};
use rustix::io::Errno;
use serde_json::Value;
use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};

mod locked;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// Reads of an empty or half-written file before giving up (unlocked writers).
    pub attempts: u32,
    pub retry_delay: Duration,
    /// `max_registry_size`: larger registries are reported and skipped.
    pub max_bytes: u64,
    /// Reads may repair a provably torn registry under its lock, waiting this long for it;
    /// `None` (plan) never writes.
    pub repair_torn: Option<Duration>,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            attempts: 5,
            retry_delay: Duration::from_millis(50),
            max_bytes: 64 * 1024 * 1024,
            repair_torn: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct UpdateOptions {
    pub read: ReadOptions,
    /// Bounded wait for `flock(LOCK_EX)`, polled with `LOCK_NB` every 100 ms.
    pub lock_timeout: Duration,
}

impl Default for UpdateOptions {
    fn default() -> Self {
        UpdateOptions {
            read: ReadOptions::default(),
            lock_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SidecarRecovery {
    NoSidecar,
    /// The registry parses: our last write finished; the stale sidecar was removed.
    StaleSidecarRemoved,
    /// The registry did not parse and the sidecar did: the registry was restored from it.
    Restored,
    /// Neither parses: both left as they are.
    LeftAlone,
}

/// Reads and parses without the lock, retrying empty/half-written content.
/// Refuses symlinks (`O_NOFOLLOW`), FIFOs and devices, and files over `max_bytes`.
/// A provably torn registry (see `torn`) is repaired under the lock when
/// `opts.repair_torn` allows it, and reported as `Torn` otherwise.
pub fn read_registry(path: &Path, opts: &ReadOptions) -> Result<Value, RegistryError> {
    let file = open_regular(path, false)?;
    let unparsable = match read_parsed(&file, path, opts, true) {
        Ok((bytes, value)) => {
            seen::global().note(path, &bytes);
            return Ok(value.expect("asked for the value"));
        }
        Err(e @ RegistryError::Unparsable { .. }) => e,
        Err(e) => return Err(e),
    };
    let bytes = read_all(&file, path, opts.max_bytes)?;
    let versions = seen::global().versions_with_persisted(path);
    let Some(torn) = find_torn_tail(&bytes, &versions) else {
        return Err(unparsable);
    };
    let Some(lock_timeout) = opts.repair_torn else {
        return Err(RegistryError::Torn {
            path: path.to_owned(),
            extra: torn.extra,
        });
    };
    drop(file);
    let update = UpdateOptions {
        read: opts.clone(),
        lock_timeout,
    };
    let file = lock_registry(path, &update)?;
    read_locked(&file, path, opts, true).map(|(_, value)| value.expect("asked for the value"))
}

/// Locks the file, reads it under the lock, lets `edit` change it, and writes it back in
/// place (sidecar, fsync, compare, write/truncate, fsync, remove sidecar) only if the value
/// changed. The compare is the CAS of DESIGN.md §3: when an unlocked writer changed the file
/// since it was read, `edit` runs again on the new content (so it may run more than once).
/// The whole document is one `Value` here: for small registries; [`rewrite_registry`]
/// edits a large one item by item.
pub fn update_registry<T>(
    path: &Path,
    opts: &UpdateOptions,
    edit: impl FnMut(&mut Value) -> T,
) -> Result<(UpdateOutcome, T), RegistryError> {
    rewrite_registry(path, opts, &mut WholeValue::new(edit))
}

/// [`update_registry`] with any [`Rewrite`]: the new text is streamed into the sidecar and
/// copied from there into the registry a chunk at a time, so only the bytes read (and what
/// the rewrite itself keeps) are in memory.
pub fn rewrite_registry<R: Rewrite>(
    path: &Path,
    opts: &UpdateOptions,
    rewrite: &mut R,
) -> Result<(UpdateOutcome, R::Out), RegistryError> {
    let file = lock_registry(path, opts)?;
    let (bytes, _) = read_locked(&file, path, &opts.read, false)?;
    let mode = file
        .metadata()
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0o644);
    let mut locked = Locked {
        file: &file,
        path,
        read: &opts.read,
        sidecar: sidecar_path(path),
        mode,
        staged: None,
    };
    edit_in_place(&mut locked, path, bytes, CAS_ROUNDS, rewrite)
}

/// Reads under the lock; a provably torn registry is cut back to its document first.
/// The document as a `Value` only when `want_value` (else the bytes are only checked).
pub(super) fn read_locked(
    file: &File,
    path: &Path,
    opts: &ReadOptions,
    want_value: bool,
) -> Result<(Vec<u8>, Option<Value>), RegistryError> {
    match read_parsed(file, path, opts, want_value) {
        Ok((bytes, value)) => {
            seen::global().note(path, &bytes);
            Ok((bytes, value))
        }
        Err(e @ RegistryError::Unparsable { .. }) => match repair_torn(file, path, opts)? {
            Some((bytes, value)) => Ok((bytes, want_value.then_some(value))),
            None => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// Truncates a provably torn registry to its document (we hold the lock), fsyncs and says
/// so. The bytes are compared once more right before the cut: an unlocked writer may have
/// rewritten the file since the proof.
fn repair_torn(
    file: &File,
    path: &Path,
    opts: &ReadOptions,
) -> Result<Option<(Vec<u8>, Value)>, RegistryError> {
    let versions = seen::global().versions_with_persisted(path);
    for _ in 0..CAS_ROUNDS {
        let bytes = read_all(file, path, opts.max_bytes)?;
        let Some(torn) = find_torn_tail(&bytes, &versions) else {
            return Ok(None);
        };
        if read_all(file, path, opts.max_bytes)? != bytes {
            continue;
        }
        // Never lengthened (an `open('w')` since the compare: NULs up to `keep`), and the
        // document kept again when the cut landed after another writer's whole dump.
        let kept = &bytes[..torn.keep];
        let keep = torn.keep as u64;
        let write_kept = |old_len: u64| write_padded(file, kept, old_len);
        cut_to(file, keep)
            .and_then(|()| keep_ours_after_cut(file, path, end_of_bytes(kept), keep, write_kept))
            .and_then(|()| file.sync_all())
            .map_err(|source| RegistryError::Write {
                path: path.to_owned(),
                source,
            })?;
        tracing::warn!(
            path = %path.display(),
            extra = torn.extra,
            "repaired torn registry {}: cut {} byte(s) left after its document (of a longer version, or NULs) by a shorter unlocked write",
            path.display(),
            torn.extra
        );
        let kept = kept.to_vec();
        seen::global().note(path, &kept);
        return Ok(Some((kept, torn.document)));
    }
    Ok(None)
}

/// Finishes or discards what a crash left in `<registry>.reaper`.
pub fn recover_sidecar(
    path: &Path,
    opts: &UpdateOptions,
) -> Result<SidecarRecovery, RegistryError> {
    let sidecar = sidecar_path(path);
    match entry_kind(&sidecar) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(SidecarRecovery::NoSidecar),
        Err(source) => {
            return Err(RegistryError::Open {
                path: sidecar,
                source,
            });
        }
        Ok(kind) if kind != crate::fs::EntryKind::File => {
            warn_left_alone(
                &sidecar,
                "sidecar is not a regular file (symlink, FIFO or device); not followed",
            );
            return Ok(SidecarRecovery::LeftAlone);
        }
        Ok(_) => {}
    }

    let file = lock_registry(path, opts)?;
    // What we were writing is a version we saw: a shorter unlocked write over it is provably
    // torn, and cut back rather than overwritten with our older content.
    if let Ok(sidecar_file) = open_regular(&sidecar, false)
        && let Ok(bytes) = read_all(&sidecar_file, &sidecar, opts.read.max_bytes)
    {
        seen::global().note(path, &bytes);
    }
    match read_locked(&file, path, &opts.read, false) {
        Ok(_) => {
            discard_sidecar(&sidecar);
            return Ok(SidecarRecovery::StaleSidecarRemoved);
        }
        Err(RegistryError::Unparsable { .. }) => {}
        Err(RegistryError::NotObject { .. }) => {
            // Valid JSON we never wrote: neither side is clearly right, so a human decides.
            warn_left_alone(&sidecar, "registry parses but is not an object");
            return Ok(SidecarRecovery::LeftAlone);
        }
        Err(e) => return Err(e),
    }

    // O_NOFOLLOW again: the sidecar may have been swapped for a symlink since the lstat.
    let sidecar_file = match open_regular(&sidecar, false) {
        Ok(f) => f,
        Err(RegistryError::NotRegular { .. }) => {
            warn_left_alone(
                &sidecar,
                "sidecar is not a regular file (symlink, FIFO or device); not followed",
            );
            return Ok(SidecarRecovery::LeftAlone);
        }
        Err(RegistryError::Open { source, .. }) if source.kind() == ErrorKind::NotFound => {
            return Ok(SidecarRecovery::LeftAlone);
        }
        Err(e) => return Err(e),
    };
    let bytes = read_all(&sidecar_file, &sidecar, opts.read.max_bytes)?;
    if !matches!(
        serde_json::from_slice::<Value>(&bytes),
        Ok(Value::Object(_))
    ) {
        warn_left_alone(&sidecar, "neither the registry nor the sidecar parses");
        return Ok(SidecarRecovery::LeftAlone);
    }
    // Compare-and-swap here too: an unlocked writer that rewrote the registry since it was
    // found broken has the newer content; then the sidecar is what is stale.
    let broken = read_all(&file, path, opts.read.max_bytes)?;
    if serde_json::from_slice::<Value>(&broken).is_ok() {
        discard_sidecar(&sidecar);
        return Ok(SidecarRecovery::StaleSidecarRemoved);
    }
    write_in_place(&file, path, &bytes).map_err(|source| RegistryError::Write {
        path: path.to_owned(),
        source,
    })?;
    discard_sidecar(&sidecar);
    Ok(SidecarRecovery::Restored)
}

/// `<registry>.reaper`: the full new content, written and fsynced before the in-place write.
pub fn sidecar_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".reaper");
    PathBuf::from(name)
}

const LOCK_POLL: Duration = Duration::from_millis(100);

fn open_error(path: &Path, source: std::io::Error) -> RegistryError {
    RegistryError::Open {
        path: path.to_owned(),
        source,
    }
}

/// How far above a registry file its trusted workspace base lies:
/// `<base>/TASK-x/AGENT_REGISTRY.json`, `<base>/registry/GLOBAL_REGISTRY.json` (and their
/// sidecars). The folder between is opened beneath the base, never through a symlink.
const LEVELS_BELOW_BASE: usize = 2;

/// The registry's folder (opened confined beneath its base) and its name.
pub(super) fn locate(path: &Path) -> std::io::Result<(crate::fs::Dir, std::ffi::OsString)> {
    crate::fs::open_parent_below(path, LEVELS_BELOW_BASE).map_err(std::io::Error::from)
}

/// What is at `path` (not following anything), reached as [`locate`] does.
fn entry_kind(path: &Path) -> std::io::Result<crate::fs::EntryKind> {
    let (dir, name) = locate(path)?;
    match dir.metadata(&name).map_err(std::io::Error::from)? {
        Some(entry) => Ok(entry.kind),
        None => Err(ErrorKind::NotFound.into()),
    }
}

/// Opens through `crate::fs` (beneath the base, no symlink anywhere, `O_NONBLOCK` so a
/// FIFO never blocks, `O_NOCTTY`), then insists on a regular file; for writing, also on
/// one hard link (a link to an outside file would be rewritten with it).
fn open_regular(path: &Path, write: bool) -> Result<File, RegistryError> {
    open_located(path, write).map(|(file, _, _)| file)
}

fn open_located(
    path: &Path,
    write: bool,
) -> Result<(File, crate::fs::Dir, std::ffi::OsString), RegistryError> {
    use crate::fs::{FsError, Purpose};
    let (dir, name) = locate(path).map_err(|e| open_error(path, e))?;
    let purpose = if write {
        Purpose::ReadWrite
    } else {
        Purpose::Read
    };
    let file = match dir.open_file(&name, purpose) {
        Ok(f) => f.file,
        Err(FsError::Symlink { .. } | FsError::NotRegular { .. } | FsError::NotDir { .. }) => {
            return Err(RegistryError::NotRegular {
                path: path.to_owned(),
            });
        }
        Err(e) => return Err(open_error(path, e.into())),
    };
    // O_NONBLOCK was only for the open itself; regular-file I/O should behave normally.
    let flags = fcntl_getfl(&file).map_err(|e| open_error(path, e.into()))?;
    fcntl_setfl(&file, flags - OFlags::NONBLOCK).map_err(|e| open_error(path, e.into()))?;
    Ok((file, dir, name))
}

/// Opens read-write and takes `flock(LOCK_EX)` on the registry itself, polling `LOCK_NB` like
/// the orchestrator's Python writers so a stuck holder costs us one round, not a thread.
fn lock_registry(path: &Path, opts: &UpdateOptions) -> Result<File, RegistryError> {
    let start = Instant::now();
    let timed_out = |start: Instant| {
        let waited = start.elapsed();
        (waited >= opts.lock_timeout).then(|| RegistryError::LockTimeout {
            path: path.to_owned(),
            waited,
        })
    };
    loop {
        let (file, dir, name) = open_located(path, true)?;
        loop {
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(e) if e == Errno::WOULDBLOCK || e == Errno::INTR => {
                    if let Some(err) = timed_out(start) {
                        return Err(err);
                    }
                    let remaining = opts.lock_timeout.saturating_sub(start.elapsed());
                    std::thread::sleep(LOCK_POLL.min(remaining));
                }
                Err(e) => return Err(open_error(path, e.into())),
            }
        }
        // A writer that renamed a new file over the path while we waited left our lock on
        // an inode nobody reads any more: writing there would lose the update.
        let ours = file.metadata().map_err(|e| open_error(path, e))?;
        match dir.metadata(&name) {
            Ok(Some(now)) if now.id.dev == ours.dev() && now.id.ino == ours.ino() => {
                return Ok(file);
            }
            Ok(_) => {}
            Err(e) => return Err(open_error(path, e.into())),
        }
        if let Some(err) = timed_out(start) {
            return Err(err);
        }
    }
}

/// Reads from offset 0 with pread, so re-reads after a retry need no seek.
pub(super) fn read_all(file: &File, path: &Path, max_bytes: u64) -> Result<Vec<u8>, RegistryError> {
    let too_large = |size: u64| RegistryError::TooLarge {
        path: path.to_owned(),
        size,
        limit: max_bytes,
    };
    let size = file.metadata().map_err(|e| open_error(path, e))?.len();
    if size > max_bytes {
        return Err(too_large(size));
    }
    let mut buf = vec![0u8; size as usize + 1];
    let mut len = 0usize;
    loop {
        if len == buf.len() {
            // Grew since fstat (an unlocked writer); keep reading, within the limit.
            if len as u64 > max_bytes {
                return Err(too_large(len as u64));
            }
            buf.resize(buf.len() * 2, 0);
        }
        match file.read_at(&mut buf[len..], len as u64) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(open_error(path, e)),
        }
    }
    if len as u64 > max_bytes {
        return Err(too_large(len as u64));
    }
    buf.truncate(len);
    Ok(buf)
}

/// Reads and parses, retrying while the content is empty or half written: the orchestrator's
/// unlocked writers truncate first and write after. Returns the bytes it parsed too.
fn read_parsed(
    file: &File,
    path: &Path,
    opts: &ReadOptions,
    want_value: bool,
) -> Result<(Vec<u8>, Option<Value>), RegistryError> {
    use super::json_doc::{DocError, check_object};
    let attempts = opts.attempts.max(1);
    let mut reason = String::new();
    for attempt in 1..=attempts {
        let bytes = read_all(file, path, opts.max_bytes)?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            reason = "empty file".to_owned();
        } else {
            let checked = if want_value {
                match serde_json::from_slice::<Value>(&bytes) {
                    Ok(value @ Value::Object(_)) => Ok(Some(value)),
                    Ok(_) => Err(DocError::NotObject),
                    Err(e) => Err(DocError::Json(e)),
                }
            } else {
                check_object(&bytes).map(|()| None)
            };
            match checked {
                Ok(value) => return Ok((bytes, value)),
                Err(DocError::NotObject) => {
                    return Err(RegistryError::NotObject {
                        path: path.to_owned(),
                    });
                }
                Err(DocError::Json(e)) => reason = e.to_string(),
            }
        }
        if attempt < attempts {
            std::thread::sleep(opts.retry_delay);
        }
    }
    Err(RegistryError::Unparsable {
        path: path.to_owned(),
        attempts,
        reason,
    })
}

/// Same sequence as the Python writers (write from 0, truncate), plus the fsync they skip,
/// and ours written again when the cut tore an unlocked writer's document.
fn write_in_place(file: &File, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let len = bytes.len() as u64;
    let write = |old_len: u64| write_padded(file, bytes, old_len);
    reserve(file, len)?;
    write(0)?;
    keep_ours_after_cut(file, path, end_of_bytes(bytes), len, write)?;
    file.sync_all()
}

/// Called once the registry is consistent, so failures only leave a stale sidecar, which
/// the next recover_sidecar removes: worth a warning, not an error.
pub(super) fn discard_sidecar(sidecar: &Path) {
    let removed = locate(sidecar).and_then(|(dir, name)| match dir.unlink(&name) {
        Ok(()) => dir.sync().map_err(std::io::Error::from),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e.into()),
    });
    match removed {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %sidecar.display(), error = %e, "could not remove registry sidecar")
        }
    }
}

fn warn_left_alone(sidecar: &Path, why: &str) {
    tracing::warn!(path = %sidecar.display(), "{why}; registry and sidecar left alone");
}

#[cfg(test)]
mod tests;
