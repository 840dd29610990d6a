//! Hook runs not yet succeeded, kept in `<state dir>/hooks-pending.json` (temp + fsync + rename) until they do.

use crate::config::hooks::Values;
use serde::{Deserialize, Serialize};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const FILE_NAME: &str = "hooks-pending.json";

/// A file larger than this is not ours to parse (the store holds small records).
const MAX_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PendingError {
    #[error("{path}: cannot read the pending hook runs: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: not a pending-hooks file ({reason}); moved aside to {aside}, its runs are not retried"
    )]
    Corrupt {
        path: PathBuf,
        aside: PathBuf,
        reason: String,
    },
    #[error("{path}: cannot save the pending hook runs: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One hook run owed for one transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRun {
    pub hook: String,
    #[serde(flatten)]
    pub values: Values,
    /// Attempts made so far (0: not tried yet).
    pub attempts: u32,
    /// Epoch seconds before which it is not tried again.
    pub not_before: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl PendingRun {
    pub fn new(hook: &str, values: Values) -> Self {
        PendingRun {
            hook: hook.to_string(),
            values,
            attempts: 0,
            not_before: 0,
            last_error: None,
        }
    }

    /// Runs of the same hook for the same transition are one run.
    pub fn key(&self) -> RunKey {
        RunKey {
            hook: self.hook.clone(),
            task_id: self.values.task_id.clone(),
            agent_id: self.values.agent_id.clone(),
            status: self.values.status.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunKey {
    pub hook: String,
    pub task_id: String,
    pub agent_id: String,
    pub status: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct FileFormat {
    version: u32,
    runs: Vec<PendingRun>,
}

/// The pending runs and where they are kept.
#[derive(Debug)]
pub struct PendingStore {
    path: PathBuf,
    pub runs: Vec<PendingRun>,
}

impl PendingStore {
    pub fn path_in(state_dir: &Path) -> PathBuf {
        state_dir.join(FILE_NAME)
    }

    /// Loads the store (empty when there is no file). An unparsable file is moved aside,
    /// never overwritten, and reported; the store then starts empty.
    pub fn load(state_dir: &Path) -> Result<(PendingStore, Option<PendingError>), PendingError> {
        let path = Self::path_in(state_dir);
        let runs = match read(&path)? {
            None => Vec::new(),
            Some(Ok(runs)) => runs,
            Some(Err(reason)) => {
                let aside = path.with_extension(format!(
                    "json.corrupt-{}",
                    crate::model::epoch_secs(std::time::SystemTime::now())
                ));
                std::fs::rename(&path, &aside).map_err(|source| PendingError::Write {
                    path: path.clone(),
                    source,
                })?;
                let e = PendingError::Corrupt {
                    path: path.clone(),
                    aside,
                    reason,
                };
                return Ok((PendingStore { path, runs: vec![] }, Some(e)));
            }
        };
        Ok((PendingStore { path, runs }, None))
    }

    /// Reads the runs without taking ownership of the file (for `plan`).
    pub fn peek(state_dir: &Path) -> Result<Vec<PendingRun>, String> {
        let path = Self::path_in(state_dir);
        match read(&path).map_err(|e| e.to_string())? {
            None => Ok(Vec::new()),
            Some(Ok(runs)) => Ok(runs),
            Some(Err(reason)) => Err(format!("{}: {reason}", path.display())),
        }
    }

    /// Adds `run` unless the same run is already owed; true when added.
    pub fn add(&mut self, run: PendingRun) -> bool {
        let key = run.key();
        if self.runs.iter().any(|r| r.key() == key) {
            return false;
        }
        self.runs.push(run);
        true
    }

    pub fn get_mut(&mut self, key: &RunKey) -> Option<&mut PendingRun> {
        self.runs.iter_mut().find(|r| &r.key() == key)
    }

    pub fn remove(&mut self, key: &RunKey) -> Option<PendingRun> {
        let i = self.runs.iter().position(|r| &r.key() == key)?;
        Some(self.runs.remove(i))
    }

    /// Makes the runs durable: a fresh temp file, fsync, rename over the old, fsync the
    /// folder. A crash leaves the old file or the new one, never a torn one.
    pub fn save(&self) -> Result<(), PendingError> {
        let err = |source| PendingError::Write {
            path: self.path.clone(),
            source,
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(err)?;
        if self.runs.is_empty() {
            match std::fs::remove_file(&self.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(err(e)),
            }
            return sync_dir(dir).map_err(err);
        }
        let body = serde_json::to_vec_pretty(&FileFormat {
            version: 1,
            runs: self.runs.clone(),
        })
        .map_err(|e| err(std::io::Error::other(e)))?;
        let tmp = dir.join(format!(
            ".{FILE_NAME}.tmp-{}-{}",
            std::process::id(),
            TMP_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            sync_dir(dir)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            err(e)
        })
    }
}

static TMP_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// `None`: no file; `Some(Err)`: a file that is not ours to trust.
#[allow(clippy::type_complexity)]
fn read(path: &Path) -> Result<Option<Result<Vec<PendingRun>, String>>, PendingError> {
    let err = |source| PendingError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Ok(Some(Err("a symlink".into())));
        }
        Err(e) => return Err(err(e)),
    };
    let meta = file.metadata().map_err(err)?;
    if !meta.is_file() {
        return Ok(Some(Err("not a regular file".into())));
    }
    if meta.len() > MAX_BYTES {
        return Ok(Some(Err(format!(
            "{} bytes, above {MAX_BYTES}",
            meta.len()
        ))));
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_BYTES), &mut bytes)
        .map_err(err)?;
    Ok(Some(
        serde_json::from_slice::<FileFormat>(&bytes)
            .map(|f| f.runs)
            .map_err(|e| e.to_string()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(agent: &str) -> PendingRun {
        PendingRun::new(
            "orchestrator",
            Values {
                task_id: "TASK-20260427-120000-a1b2c3d4".into(),
                agent_id: agent.into(),
                status: "failed".into(),
                reason: "session_not_found".into(),
                workspace_base: "/ws".into(),
            },
        )
    }

    #[test]
    fn runs_survive_a_restart_until_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, warn) = PendingStore::load(dir.path()).unwrap();
        assert!(warn.is_none() && store.runs.is_empty());
        assert!(store.add(run("a-1-aaaaaa")));
        assert!(!store.add(run("a-1-aaaaaa")), "same run owed once");
        assert!(store.add(run("b-1-bbbbbb")));
        let key = run("a-1-aaaaaa").key();
        let r = store.get_mut(&key).unwrap();
        r.attempts = 2;
        r.last_error = Some("exit status 1".into());
        store.save().unwrap();

        let (mut again, _) = PendingStore::load(dir.path()).unwrap();
        assert_eq!(again.runs, store.runs);
        assert_eq!(PendingStore::peek(dir.path()).unwrap(), store.runs);
        again.remove(&key).unwrap();
        again.remove(&run("b-1-bbbbbb").key()).unwrap();
        again.save().unwrap();
        assert!(
            !PendingStore::path_in(dir.path()).exists(),
            "empty store: no file"
        );
        // No temp files are left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_corrupt_file_is_moved_aside_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = PendingStore::path_in(dir.path());
        std::fs::write(&path, "{ half").unwrap();
        assert!(PendingStore::peek(dir.path()).is_err());
        let (store, warn) = PendingStore::load(dir.path()).unwrap();
        assert!(store.runs.is_empty());
        let warn = warn.unwrap().to_string();
        assert!(warn.contains("moved aside"), "{warn}");
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(aside.iter().any(|n| n.contains(".corrupt-")), "{aside:?}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join(&aside[0])).unwrap(),
            "{ half"
        );
    }

    #[test]
    fn a_symlinked_store_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside.json");
        std::fs::write(&outside, "{\"version\":1,\"runs\":[]}").unwrap();
        std::os::unix::fs::symlink(&outside, PendingStore::path_in(dir.path())).unwrap();
        assert!(
            PendingStore::peek(dir.path())
                .unwrap_err()
                .contains("symlink")
        );
    }
}
