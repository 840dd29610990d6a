//! One JSON registry file: flock on the file itself, tolerant reads, in-place writes with a crash sidecar.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    TooLarge { path: PathBuf, size: u64, limit: u64 },
    #[error("{path}: lock not granted within {waited:?} (another writer holds it); skipped this round")]
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
    let _ = (path, opts);
    todo!("registry helper")
}

/// Locks the file, reads it under the lock, lets `edit` change it, and writes it back in
/// place (sidecar, fsync, seek/write/truncate, fsync, remove sidecar) only if the value changed.
pub fn update_registry<T>(
    path: &Path,
    opts: &UpdateOptions,
    edit: impl FnOnce(&mut Value) -> T,
) -> Result<(UpdateOutcome, T), RegistryError> {
    let _ = (path, opts, edit);
    todo!("registry helper")
}

/// Finishes or discards what a crash left in `<registry>.reaper`.
pub fn recover_sidecar(path: &Path, opts: &UpdateOptions) -> Result<SidecarRecovery, RegistryError> {
    let _ = (path, opts);
    todo!("registry helper")
}

/// `<registry>.reaper`: the full new content, written and fsynced before the in-place write.
pub fn sidecar_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".reaper");
    PathBuf::from(name)
}
