//! One JSON registry file: flock on the file itself, tolerant reads, in-place writes with a crash sidecar.

use super::pyjson::to_python_json;
use rustix::fs::{FlockOperation, OFlags, fcntl_getfl, fcntl_setfl, flock};
use rustix::io::Errno;
use serde_json::Value;
use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{path}: cannot open: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a regular file (symlink, FIFO or device); skipped")]
    NotRegular { path: PathBuf },
    #[error("{path}: {size} bytes is over the {limit}-byte limit; skipped")]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error(
        "{path}: lock not granted within {waited:?} (another writer holds it); skipped this round"
    )]
    LockTimeout { path: PathBuf, waited: Duration },
    #[error("{path}: unparsable after {attempts} reads ({reason}); left untouched")]
    Unparsable {
        path: PathBuf,
        attempts: u32,
        reason: String,
    },
    #[error("{path}: top level is not a JSON object; left untouched")]
    NotObject { path: PathBuf },
    #[error("{path}: write failed: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// Reads of an empty or half-written file before giving up (unlocked writers).
    pub attempts: u32,
    pub retry_delay: Duration,
    pub max_bytes: u64,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            attempts: 5,
            retry_delay: Duration::from_millis(50),
            max_bytes: 64 * 1024 * 1024,
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
pub enum UpdateOutcome {
    /// The edit left the value equal to what was read: nothing written.
    Unchanged,
    Written,
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
pub fn read_registry(path: &Path, opts: &ReadOptions) -> Result<Value, RegistryError> {
    let file = open_regular(path, false)?;
    read_parsed(&file, path, opts).map(|(_, value)| value)
}

/// Locks the file, reads it under the lock, lets `edit` change it, and writes it back in
/// place (sidecar, fsync, seek/write/truncate, fsync, remove sidecar) only if the value changed.
pub fn update_registry<T>(
    path: &Path,
    opts: &UpdateOptions,
    edit: impl FnOnce(&mut Value) -> T,
) -> Result<(UpdateOutcome, T), RegistryError> {
    let file = lock_registry(path, opts)?;
    let (original, mut value) = read_parsed(&file, path, &opts.read)?;
    let before = value.clone();
    let result = edit(&mut value);
    if value == before {
        return Ok((UpdateOutcome::Unchanged, result));
    }
    let mut text = to_python_json(&value);
    if original.ends_with(b"\n") {
        text.push('\n');
    }
    // Values can differ only in number spelling (`1E5` vs `100000.0`) and print the same.
    if text.as_bytes() == original.as_slice() {
        return Ok((UpdateOutcome::Unchanged, result));
    }

    let sidecar = sidecar_path(path);
    let mode = file
        .metadata()
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0o644);
    if let Err(source) = write_sidecar(&sidecar, text.as_bytes(), mode) {
        // The registry is untouched, so a partial sidecar is only litter.
        discard_sidecar(&sidecar);
        return Err(RegistryError::Write {
            path: sidecar,
            source,
        });
    }
    // On failure the sidecar stays: it is what recover_sidecar restores from.
    write_in_place(&file, text.as_bytes()).map_err(|source| RegistryError::Write {
        path: path.to_owned(),
        source,
    })?;
    discard_sidecar(&sidecar);
    drop(file);
    Ok((UpdateOutcome::Written, result))
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
    match read_parsed(&file, path, &opts.read) {
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
    write_in_place(&file, &bytes).map_err(|source| RegistryError::Write {
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
fn locate(path: &Path) -> std::io::Result<(crate::fs::Dir, std::ffi::OsString)> {
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
fn read_all(file: &File, path: &Path, max_bytes: u64) -> Result<Vec<u8>, RegistryError> {
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
) -> Result<(Vec<u8>, Value), RegistryError> {
    let attempts = opts.attempts.max(1);
    let mut reason = String::new();
    for attempt in 1..=attempts {
        let bytes = read_all(file, path, opts.max_bytes)?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            reason = "empty file".to_owned();
        } else {
            match serde_json::from_slice::<Value>(&bytes) {
                Ok(value @ Value::Object(_)) => return Ok((bytes, value)),
                Ok(_) => {
                    return Err(RegistryError::NotObject {
                        path: path.to_owned(),
                    });
                }
                Err(e) => reason = e.to_string(),
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

/// Same sequence as the Python writers (write from 0, truncate), plus the fsync they skip.
fn write_in_place(file: &File, bytes: &[u8]) -> std::io::Result<()> {
    reserve(file, bytes.len() as u64)?;
    file.write_all_at(bytes, 0)?;
    file.set_len(bytes.len() as u64)?;
    file.sync_all()
}

/// Allocates the blocks a longer registry needs before its first byte is overwritten, so
/// a full disk fails the write up front (registry intact) instead of after the old content
/// is half replaced (registry torn). `KEEP_SIZE`: readers never see the reserved tail.
/// Filesystems without `fallocate` keep the old behaviour (the sidecar still covers it).
fn reserve(file: &File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    if file.metadata()?.len() >= len {
        return Ok(());
    }
    // SAFETY: fallocate on an fd we own; no memory is passed.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_KEEP_SIZE,
            0,
            len as libc::off_t,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => Ok(()),
        _ => Err(err),
    }
}

/// Durable before the registry is touched: written under a fresh `O_EXCL|O_NOFOLLOW` name,
/// fsynced, renamed over `<registry>.reaper` (a symlink planted there is replaced, never
/// written through), folder fsynced; or a power cut mid-write could leave a torn registry
/// and no sidecar.
fn write_sidecar(sidecar: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let (dir, name) = locate(sidecar)?;
    crate::fs::write_new_atomically(&dir, &name, bytes, mode).map_err(std::io::Error::from)
}

/// Called once the registry is consistent, so failures only leave a stale sidecar, which
/// the next recover_sidecar removes: worth a warning, not an error.
fn discard_sidecar(sidecar: &Path) {
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
mod tests {
    use super::*;
    use std::time::SystemTime;

    const SAMPLE: &str = "{\n  \"task_id\": \"TASK-1\",\n  \"agents\": [\n    {\n      \"id\": \"a-1\",\n      \"status\": \"working\",\n      \"progress\": 32.690331,\n      \"note\": \"\\u26a0 caf\\u00e9\"\n    }\n  ],\n  \"active_count\": 1,\n  \"zeta\": {}\n}";

    fn fast() -> UpdateOptions {
        UpdateOptions {
            read: ReadOptions {
                attempts: 3,
                retry_delay: Duration::from_millis(5),
                max_bytes: 1 << 20,
            },
            lock_timeout: Duration::from_millis(300),
        }
    }

    fn registry(dir: &tempfile::TempDir, content: &str) -> PathBuf {
        let path = dir.path().join("AGENT_REGISTRY.json");
        std::fs::write(&path, content).unwrap();
        path
    }

    fn mtime(path: &Path) -> SystemTime {
        std::fs::metadata(path).unwrap().modified().unwrap()
    }

    #[test]
    fn empty_and_half_written_are_unparsable_and_untouched() {
        let dir = tempfile::tempdir().unwrap();
        for content in ["", "  \n", &SAMPLE[..SAMPLE.len() / 2]] {
            let path = registry(&dir, content);
            let err = read_registry(&path, &fast().read).unwrap_err();
            assert!(
                matches!(err, RegistryError::Unparsable { attempts: 3, .. }),
                "{err}"
            );
            let err = update_registry(&path, &fast(), |v| v["x"] = 1.into()).unwrap_err();
            assert!(matches!(err, RegistryError::Unparsable { .. }), "{err}");
            assert_eq!(std::fs::read_to_string(&path).unwrap(), content);
            assert!(!sidecar_path(&path).exists());
        }
    }

    #[test]
    fn read_outcomes() {
        let dir = tempfile::tempdir().unwrap();
        let path = registry(&dir, SAMPLE);
        let value = read_registry(&path, &fast().read).unwrap();
        assert_eq!(value["agents"][0]["status"], "working");
        assert_eq!(
            recover_sidecar(&path, &fast()).unwrap(),
            SidecarRecovery::NoSidecar
        );

        let path = registry(&dir, "[1, 2]");
        let err = read_registry(&path, &fast().read).unwrap_err();
        assert!(matches!(err, RegistryError::NotObject { .. }), "{err}");

        let path = registry(&dir, SAMPLE);
        let opts = ReadOptions {
            max_bytes: 10,
            ..fast().read
        };
        let err = read_registry(&path, &opts).unwrap_err();
        assert!(
            matches!(err, RegistryError::TooLarge { limit: 10, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("AGENT_REGISTRY.json"));
    }

    #[test]
    fn symlink_and_fifo_are_not_regular() {
        let dir = tempfile::tempdir().unwrap();
        let target = registry(&dir, SAMPLE);
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let fifo = dir.path().join("fifo.json");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let dev_null = Path::new("/dev/null");

        for path in [
            &link,
            &fifo,
            &dir.path().to_path_buf(),
            &dev_null.to_path_buf(),
        ] {
            let err = read_registry(path, &fast().read).unwrap_err();
            assert!(matches!(err, RegistryError::NotRegular { .. }), "{err}");
        }
        for path in [&link, &fifo] {
            let err = update_registry(path, &fast(), |v| v["x"] = 1.into()).unwrap_err();
            assert!(matches!(err, RegistryError::NotRegular { .. }), "{err}");
        }
        assert_eq!(std::fs::read_to_string(&target).unwrap(), SAMPLE);
    }

    #[test]
    fn update_changes_one_field_and_keeps_the_rest_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = registry(&dir, SAMPLE);
        let (outcome, ret) = update_registry(&path, &fast(), |v| {
            v["agents"][0]["status"] = "completed".into();
            v["active_count"] = 0.into();
            7
        })
        .unwrap();
        assert_eq!((outcome, ret), (UpdateOutcome::Written, 7));
        let expected = SAMPLE
            .replace("\"working\"", "\"completed\"")
            .replace("\"active_count\": 1", "\"active_count\": 0");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), expected);
        assert!(!sidecar_path(&path).exists());
    }

    #[test]
    fn update_keeps_a_trailing_newline_only_if_there_was_one() {
        let dir = tempfile::tempdir().unwrap();
        for ending in ["", "\n"] {
            let path = registry(&dir, &format!("{SAMPLE}{ending}"));
            update_registry(&path, &fast(), |v| v["new"] = true.into()).unwrap();
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                text.ends_with(&format!("\"new\": true\n}}{ending}")),
                "{text:?}"
            );
        }
    }

    #[test]
    fn unchanged_edit_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // Compact, non-Python formatting: a rewrite would show.
        let content = r#"{"b":1,"a":[1.50,"x"]}"#;
        let path = registry(&dir, content);
        let before = mtime(&path);
        std::thread::sleep(Duration::from_millis(20));
        let (outcome, ()) = update_registry(&path, &fast(), |v| {
            v["a"][1] = "x".into();
        })
        .unwrap();
        assert_eq!(outcome, UpdateOutcome::Unchanged);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), content);
        assert_eq!(mtime(&path), before);
        assert!(!sidecar_path(&path).exists());
    }

    #[test]
    fn lock_held_elsewhere_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = registry(&dir, SAMPLE);
        // flock belongs to the open file description, so a second open conflicts even here.
        let holder = File::open(&path).unwrap();
        flock(&holder, FlockOperation::LockExclusive).unwrap();
        let err = update_registry(&path, &fast(), |v| v["x"] = 1.into()).unwrap_err();
        match &err {
            RegistryError::LockTimeout { waited, .. } => {
                assert!(*waited >= fast().lock_timeout)
            }
            other => panic!("expected LockTimeout, got {other}"),
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), SAMPLE);
        drop(holder);
        let (outcome, ()) = update_registry(&path, &fast(), |v| v["x"] = 1.into()).unwrap();
        assert_eq!(outcome, UpdateOutcome::Written);
    }

    #[test]
    fn recover_restores_an_unparsable_registry() {
        let dir = tempfile::tempdir().unwrap();
        let path = registry(&dir, &SAMPLE[..40]);
        let restored = SAMPLE.replace("working", "completed");
        std::fs::write(sidecar_path(&path), &restored).unwrap();
        assert_eq!(
            recover_sidecar(&path, &fast()).unwrap(),
            SidecarRecovery::Restored
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), restored);
        assert!(!sidecar_path(&path).exists());
    }

    #[test]
    fn recover_removes_a_stale_sidecar() {
        let dir = tempfile::tempdir().unwrap();
        let path = registry(&dir, SAMPLE);
        std::fs::write(sidecar_path(&path), "{\"other\": 1}").unwrap();
        let before = mtime(&path);
        assert_eq!(
            recover_sidecar(&path, &fast()).unwrap(),
            SidecarRecovery::StaleSidecarRemoved
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), SAMPLE);
        assert_eq!(mtime(&path), before);
        assert!(!sidecar_path(&path).exists());
    }

    #[test]
    fn recover_leaves_alone_when_nothing_parses_or_sidecar_is_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let path = registry(&dir, "{\"half");
        std::fs::write(sidecar_path(&path), "{\"also half").unwrap();
        assert_eq!(
            recover_sidecar(&path, &fast()).unwrap(),
            SidecarRecovery::LeftAlone
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"half");
        assert!(sidecar_path(&path).exists());

        std::fs::remove_file(sidecar_path(&path)).unwrap();
        let elsewhere = dir.path().join("elsewhere.json");
        std::fs::write(&elsewhere, SAMPLE).unwrap();
        std::os::unix::fs::symlink(&elsewhere, sidecar_path(&path)).unwrap();
        assert_eq!(
            recover_sidecar(&path, &fast()).unwrap(),
            SidecarRecovery::LeftAlone
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"half");
    }

    #[test]
    fn update_refuses_a_symlinked_sidecar() {
        let dir = tempfile::tempdir().unwrap();
        let path = registry(&dir, SAMPLE);
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(&victim, sidecar_path(&path)).unwrap();
        // The sidecar is written under a fresh O_EXCL name and renamed over the planted
        // link: the link is replaced, never written through, and the update goes on.
        update_registry(&path, &fast(), |v| v["x"] = 1.into()).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert_ne!(std::fs::read_to_string(&path).unwrap(), SAMPLE);
        assert!(std::fs::symlink_metadata(sidecar_path(&path)).is_err());

        // A stale regular sidecar is replaced the same way.
        std::fs::write(sidecar_path(&path), "junk").unwrap();
        update_registry(&path, &fast(), |v| v["x"] = 2.into()).unwrap();
        assert!(!sidecar_path(&path).exists());
        // Nothing but the registry and the victim is left (no temporary names).
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["AGENT_REGISTRY.json", "victim"]);
    }

    #[test]
    fn fixture_registries_survive_an_update_round_trip() {
        let Some(base) = crate::test_shared::fixture_workspace() else {
            return;
        };
        let src = base.join("TASK-20251017-215604-df6a3cbd/AGENT_REGISTRY.json");
        let original = std::fs::read_to_string(src).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = registry(&dir, &original);
        update_registry(&path, &fast(), |v| v["active_count"] = 12345.into()).unwrap();
        update_registry(&path, &fast(), |v| {
            v["active_count"] =
                serde_json::from_str::<Value>(&original).unwrap()["active_count"].clone()
        })
        .unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), original);
    }
}
