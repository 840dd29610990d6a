//! The state directory (where it is, its lock, its journal) and the lock per workspace base that makes one reaper per base.

use crate::config::Config;
use anyhow::{Context, Result, bail};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `state_dir` from the config, else `$STATE_DIRECTORY` (systemd `StateDirectory=`), else
/// `$XDG_STATE_HOME/agent-reaper`, else `~/.local/state/agent-reaper`.
pub fn state_dir(config: &Config) -> Result<PathBuf> {
    match crate::config::layer::state_dir(config) {
        Some(dir) => Ok(dir),
        None => bail!("no state directory: set state_dir, --state-dir, STATE_DIRECTORY or HOME"),
    }
}

/// How long a held state-directory lock is retried before it counts as another instance.
const INSTANCE_LOCK_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

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
        // A lock that frees itself within a moment is not another reaper: a predecessor
        // just killed releases it as it exits (a child it forked shares the lock until its
        // exec), which a restart by systemd or a script can meet.
        let started = std::time::Instant::now();
        let locked = loop {
            match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                Err(_) if started.elapsed() < INSTANCE_LOCK_GRACE => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other,
            }
        };
        if let Err(e) = locked {
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
    for recovered in crate::archive::recover::recover(&mut journal, pending) {
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

/// Loads the remembered pane map from `state_dir` (see `procs::panemap`); a bad file is
/// reported and replaced by an empty map.
pub fn load_pane_map(state_dir: &Path) -> crate::procs::panemap::PaneMap {
    let (map, problem) = crate::procs::panemap::PaneMap::load(state_dir);
    if let Some(e) = problem {
        tracing::warn!("{e}");
    }
    map
}

/// The lock file of a workspace base, under `<base>/registry/`.
pub const BASE_LOCK: &str = ".agent-reaper.lock";

#[derive(Debug, thiserror::Error)]
pub enum BaseLockError {
    /// The base folder cannot be opened.
    #[error("base lock: {0}")]
    Fs(#[from] crate::fs::FsError),
    #[error("{path}: cannot lock: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "workspace base {base} is being reaped by another agent-reaper (pid {holder}, lock {path}); \
         gave up after {waited:?} (lock_timeout); run again once it is done (a daemon holds \
         the lock while it runs: stop it, or use `plan`, which takes no lock)"
    )]
    Held {
        base: PathBuf,
        path: PathBuf,
        holder: String,
        waited: Duration,
    },
}

/// An exclusive `flock` on the workspace base folder itself, held until dropped (the kernel
/// drops it when the process dies). Any reaper that changes a base holds it, whatever its
/// state directory: the system service and an admin's `once` would otherwise race on the
/// same files. The lock is the folder's own handle, not a file in it, so no name an agent can
/// plant (a symlink, a FIFO, a hard link at `registry/.agent-reaper.lock`, or `registry/`
/// symlinked out) can take it away or turn it against another file. The holder's pid is
/// written to `registry/.agent-reaper.lock` for the other's message only: best effort,
/// through `fs/` (fresh name, rename), never read as more than a number.
#[derive(Debug)]
pub struct BaseLock {
    base: PathBuf,
    _dir: crate::fs::Dir,
}

impl BaseLock {
    #[cfg(test)]
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// Takes the lock of `base`, retrying every 100 ms: up to `wait`, or for ever when `None`.
    /// `on_wait(holder pid)` is called once, when the lock is first found held.
    pub fn acquire(
        base: &Path,
        wait: Option<Duration>,
        mut on_wait: impl FnMut(&str),
    ) -> Result<BaseLock, BaseLockError> {
        let dir = crate::fs::Dir::open_base(base)?;
        let started = Instant::now();
        let mut told = false;
        loop {
            match rustix::fs::flock(&dir, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    let holder = read_holder(&dir);
                    if !told {
                        on_wait(&holder);
                        told = true;
                    }
                    if wait.is_some_and(|w| started.elapsed() >= w) {
                        return Err(BaseLockError::Held {
                            base: base.to_path_buf(),
                            path: base.to_path_buf(),
                            holder,
                            waited: started.elapsed(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => {
                    return Err(BaseLockError::Lock {
                        path: base.to_path_buf(),
                        source: e.into(),
                    });
                }
            }
        }
        // Ours now: say who holds it. A failure (read-only base, `registry/` not a folder of
        // ours) costs only the other side's message, which then says "unknown".
        let pid = format!("{}\n", std::process::id());
        let noted = dir
            .create_dir_all_beneath("registry", 0o755)
            .and_then(|registry| {
                crate::fs::write_new_atomically(&registry, BASE_LOCK, pid.as_bytes(), 0o644)
            });
        if let Err(e) = noted {
            tracing::debug!("{}: holder pid not noted: {e}", base.display());
        }
        Ok(BaseLock {
            base: base.to_path_buf(),
            _dir: dir,
        })
    }
}

/// The base locks one reaper holds, taken in a fixed order (sorted canonical paths) so two
/// reapers with overlapping bases cannot each hold one the other waits for.
#[derive(Debug, Default)]
pub struct BaseLocks {
    held: Vec<BaseLock>,
    /// Bases left out of passes because another reaper holds them (told once each).
    waiting: std::collections::HashSet<PathBuf>,
}

impl BaseLocks {
    /// Takes the lock of every existing base in `bases` (a missing base has nothing to reap).
    /// `on_wait(base, holder pid)` is called once per base found held.
    pub fn acquire(
        bases: &[PathBuf],
        wait: Option<Duration>,
        mut on_wait: impl FnMut(&Path, &str),
    ) -> Result<BaseLocks, BaseLockError> {
        let mut locks = BaseLocks::default();
        locks.sync(bases, wait, &mut on_wait)?;
        Ok(locks)
    }

    /// Holds exactly the locks of `bases`: takes the missing ones (all or none: on an error
    /// the ones taken by this call are let go), drops the others.
    pub fn sync(
        &mut self,
        bases: &[PathBuf],
        wait: Option<Duration>,
        mut on_wait: impl FnMut(&Path, &str),
    ) -> Result<(), BaseLockError> {
        let key = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let mut wanted: Vec<(PathBuf, &PathBuf)> = bases
            .iter()
            .filter(|b| b.is_dir())
            .map(|b| (key(b), b))
            .collect();
        wanted.sort();
        wanted.dedup_by(|a, b| a.0 == b.0);
        let mut taken = Vec::new();
        for (canonical, base) in &wanted {
            if self.held.iter().any(|l| key(&l.base) == *canonical) {
                continue;
            }
            match BaseLock::acquire(base, wait, |holder| on_wait(base, holder)) {
                Ok(lock) => taken.push(lock),
                Err(e) => return Err(e),
            }
        }
        self.held
            .retain(|l| wanted.iter().any(|(c, _)| *c == key(&l.base)));
        self.held.extend(taken);
        Ok(())
    }

    #[cfg(test)]
    pub fn bases(&self) -> impl Iterator<Item = &Path> {
        self.held.iter().map(BaseLock::base)
    }

    /// Lets go of the locks of bases no longer in `bases` (a reload removed them); new ones
    /// are taken by [`BaseLocks::servable`] at the next pass.
    pub fn keep_only(&mut self, bases: &[PathBuf]) {
        let key = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let wanted: Vec<PathBuf> = bases.iter().map(|b| key(b)).collect();
        self.held.retain(|l| wanted.contains(&key(&l.base)));
        self.waiting.retain(|b| bases.contains(b));
    }

    /// The bases a daemon pass may work on now, never waiting: those it holds, those whose
    /// lock it can take at once (a base created since the start), and missing ones (nothing
    /// to race on). A base another reaper holds is left out until it is free;
    /// that is logged once, and again when it is taken.
    pub fn servable(&mut self, bases: &[PathBuf]) -> Vec<PathBuf> {
        let key = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let mut out = Vec::with_capacity(bases.len());
        for base in bases {
            let canonical = key(base);
            if !base.is_dir() || self.held.iter().any(|l| key(&l.base) == canonical) {
                out.push(base.clone());
                continue;
            }
            match BaseLock::acquire(base, Some(Duration::ZERO), |_| {}) {
                Ok(lock) => {
                    if self.waiting.remove(base) {
                        tracing::info!("{}: lock taken, reaping it now", base.display());
                    }
                    self.held.push(lock);
                    out.push(base.clone());
                }
                Err(e) => {
                    if self.waiting.insert(base.clone()) {
                        match &e {
                            BaseLockError::Held { holder, .. } => tracing::warn!(
                                "waiting for {}: another agent-reaper (pid {holder}) is reaping \
                                 it; left out until it is free",
                                base.display()
                            ),
                            e => tracing::warn!("{e}; {} left out", base.display()),
                        }
                    }
                }
            }
        }
        out
    }
}

/// Opens (creating) `<base>/registry/.agent-reaper.lock` through the confinement module:
/// no symlink at `registry` or at the file is followed, and only a regular file with one link
/// is used (an agent can write the workspace, and must not make us create or lock a file
/// elsewhere). The base itself is configured by the operator and trusted. `registry/` is
/// created if missing, as the orchestrator itself creates it. Returns the folder too, to
/// read the holder's pid from.
/// The pid the holder wrote (bounded read; "unknown" if it wrote nothing readable yet).
fn read_holder(base: &crate::fs::Dir) -> String {
    let mut buf = [0u8; 32];
    let n = base
        .open_file(
            Path::new("registry").join(BASE_LOCK),
            crate::fs::Purpose::Read,
        )
        .ok()
        .and_then(|f| rustix::io::pread(&f.file, &mut buf, 0).ok())
        .unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]).trim().to_string();
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) {
        text
    } else {
        "unknown".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lock let go is free again once no process shares its descriptor: a child another
    /// test forks meanwhile holds a copy until it execs, so "free" is awaited, not assumed.
    const RELEASED: Duration = Duration::from_secs(10);

    #[test]
    fn a_second_holder_waits_then_names_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let first = BaseLock::acquire(dir.path(), Some(Duration::ZERO), |_| panic!()).unwrap();
        let lock = dir.path().join("registry").join(BASE_LOCK);
        assert_eq!(
            std::fs::read_to_string(&lock).unwrap(),
            format!("{}\n", std::process::id())
        );
        let mut seen = Vec::new();
        let err = BaseLock::acquire(dir.path(), Some(Duration::from_millis(250)), |h| {
            seen.push(h.to_string())
        })
        .unwrap_err();
        assert_eq!(seen, [std::process::id().to_string()], "told once");
        let text = err.to_string();
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        assert!(
            matches!(err, BaseLockError::Held { waited, .. } if waited >= Duration::from_millis(250))
        );
        drop(first);
        BaseLock::acquire(dir.path(), Some(RELEASED), |_| {}).unwrap();
    }

    #[test]
    fn names_planted_at_the_lock_or_registry_neither_deny_the_base_nor_reach_outside() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("victim");
        std::fs::write(&target, "keep").unwrap();
        let lock_at = |base: &Path| base.join("registry").join(BASE_LOCK);
        // A symlink where the pid note goes: the lock is taken, the link replaced, not followed.
        let a = dir.path().join("a");
        std::fs::create_dir_all(a.join("registry")).unwrap();
        std::os::unix::fs::symlink(&target, lock_at(&a)).unwrap();
        let held_a = BaseLock::acquire(&a, Some(Duration::ZERO), |_| panic!()).unwrap();
        assert!(std::fs::symlink_metadata(lock_at(&a)).unwrap().is_file());
        // A hard link to an outside file: replaced by a new file, the outside one unchanged.
        let b = dir.path().join("b");
        std::fs::create_dir_all(b.join("registry")).unwrap();
        std::fs::hard_link(&target, lock_at(&b)).unwrap();
        let _held_b = BaseLock::acquire(&b, Some(Duration::ZERO), |_| panic!()).unwrap();
        // `registry` itself a symlink to elsewhere: locked all the same, nothing written there.
        let c = dir.path().join("c");
        std::fs::create_dir_all(&c).unwrap();
        std::os::unix::fs::symlink(outside.path(), c.join("registry")).unwrap();
        let _held_c = BaseLock::acquire(&c, Some(Duration::ZERO), |_| panic!()).unwrap();
        assert!(!outside.path().join(BASE_LOCK).exists());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);
        // And the lock still excludes a second reaper on a base whose names were planted.
        let err = BaseLock::acquire(&a, Some(Duration::ZERO), |_| {}).unwrap_err();
        assert!(matches!(err, BaseLockError::Held { .. }), "{err}");
        drop(held_a);
    }

    #[test]
    fn sync_takes_new_bases_and_lets_go_of_removed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let missing = dir.path().join("missing");
        let mut locks = BaseLocks::acquire(
            &[b.clone(), missing.clone()],
            Some(Duration::ZERO),
            |_, _| {},
        )
        .unwrap();
        assert_eq!(locks.bases().collect::<Vec<_>>(), [b.as_path()]);
        assert!(!missing.exists(), "a missing base is not created");
        locks
            .sync(
                std::slice::from_ref(&a),
                Some(Duration::ZERO),
                |_, _| panic!(),
            )
            .unwrap();
        assert_eq!(locks.bases().collect::<Vec<_>>(), [a.as_path()]);
        // b is free again; a is held.
        BaseLock::acquire(&b, Some(RELEASED), |_| {}).unwrap();
        assert!(BaseLock::acquire(&a, Some(Duration::ZERO), |_| {}).is_err());
    }

    #[test]
    fn a_pass_serves_free_bases_and_leaves_out_one_held_elsewhere_until_it_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        let missing = dir.path().join("missing");
        let mut ours = BaseLocks::default();
        let other = BaseLock::acquire(&a, Some(Duration::ZERO), |_| {}).unwrap();
        // b does not exist yet: kept (the pass reports it), nothing created.
        let all = [a.clone(), b.clone(), missing.clone()];
        assert_eq!(ours.servable(&all), [b.clone(), missing.clone()]);
        assert!(!b.exists());
        // b appears: its lock is taken at once.
        std::fs::create_dir_all(&b).unwrap();
        assert_eq!(ours.servable(&all), [b.clone(), missing.clone()]);
        assert_eq!(ours.bases().collect::<Vec<_>>(), [b.as_path()]);
        // a is let go by the other reaper: served from then on.
        drop(other);
        assert!(wait_for(|| ours.servable(&all).len() == 3));
        assert!(BaseLock::acquire(&a, Some(Duration::ZERO), |_| {}).is_err());
        // A reload drops a: its lock is let go.
        ours.keep_only(std::slice::from_ref(&b));
        assert_eq!(ours.bases().collect::<Vec<_>>(), [b.as_path()]);
        BaseLock::acquire(&a, Some(RELEASED), |_| {}).unwrap();
    }

    fn wait_for(mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + RELEASED;
        while Instant::now() < deadline {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}
