//! The state directory: where it is, the lock that makes one reaper per directory, and its journal.

use crate::config::Config;
use anyhow::{Context, Result, bail};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// `state_dir` from the config, else `$STATE_DIRECTORY` (systemd `StateDirectory=`), else
/// `$XDG_STATE_HOME/agent-reaper`, else `~/.local/state/agent-reaper`.
pub fn state_dir(config: &Config) -> Result<PathBuf> {
    if let Some(dir) = &config.state_dir {
        return Ok(dir.clone());
    }
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(dirs) = env("STATE_DIRECTORY") {
        // systemd passes a colon-separated list when several are configured.
        let first = dirs
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or("")
            .to_string();
        return Ok(PathBuf::from(first));
    }
    if let Some(xdg) = env("XDG_STATE_HOME") {
        return Ok(PathBuf::from(xdg).join("agent-reaper"));
    }
    match env("HOME") {
        Some(home) => Ok(PathBuf::from(home).join(".local/state/agent-reaper")),
        None => bail!("no state directory: set state_dir, --state-dir, STATE_DIRECTORY or HOME"),
    }
}

/// Held for the daemon's lifetime; the kernel drops the flock when the process dies.
pub struct InstanceLock {
    _file: File,
}

impl InstanceLock {
    pub fn acquire(state_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating state directory {}", state_dir.display()))?;
        let path = state_dir.join("agent-reaper.lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .mode(0o644)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        if let Err(e) =
            rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            bail!(
                "another agent-reaper is already running with state directory {} (pid {}; {e}); \
                 stop it first, or give this one another --state-dir",
                state_dir.display(),
                holder.trim()
            );
        }
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())?;
        Ok(InstanceLock { _file: file })
    }
}

/// Opens the journal in `state_dir` and finishes or undoes what a crash left in it. The
/// recorded paths are reopened beneath `roots` (the configured workspace bases and
/// archive folder: [`crate::config::Config::trusted_roots`]), never through a symlink.
pub fn open_journal(
    state_dir: &Path,
    roots: Vec<std::path::PathBuf>,
) -> Result<std::sync::Mutex<crate::journal::Journal>> {
    let (mut journal, pending) = crate::journal::Journal::open(state_dir)
        .with_context(|| format!("opening the journal in {}", state_dir.display()))?;
    journal.set_roots(roots);
    for recovered in crate::journal::recover(&mut journal, pending) {
        match &recovered.outcome {
            Ok(action) => tracing::info!(
                "journal step {} recovered: {action:?} ({:?})",
                recovered.seq,
                recovered.step
            ),
            Err(e) => tracing::warn!(
                "journal step {} not recovered: {e} ({:?})",
                recovered.seq,
                recovered.step
            ),
        }
    }
    Ok(std::sync::Mutex::new(journal))
}
