//! Filesystem watching: inotify on the folders of each workspace base that can hold its
//! files (`inotify`), or notify's poller past the watch limit, turned into domain events
//! (base, task, kind, agent) for the daemon's loop.
//!
//! Only changes of content or names are forwarded (create, data modify, remove, rename):
//! the daemon reads registries and logs all the time, and its reads must not wake it.
//! Sidecar and archive paths are the daemon's own writes and are dropped here.
//! Lost events (queue overflow, backend errors) become [`WatchEvent::Rescan`]: the
//! daemon answers with a full reconcile.
//!
//! Bases can change at runtime ([`Watcher::set_bases`], for config reload) and a base
//! that is missing or was removed is kept as *unwatched* until [`Watcher::retry_unwatched`]
//! (called at reconcile) finds it again.

mod classify;
mod handler;
mod inotify;

pub use classify::{PathEvent, PathKind, classify};

use handler::{Fallback, Handler};
use notify::{PollWatcher, RecursiveMode, Watcher as _};
use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

/// How often the poll fallback rescans the bases.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("{path}: workspace base does not exist or cannot be read; not watched: {source}")]
    MissingBase {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: workspace base is not a directory; not watched")]
    NotADirectory { path: PathBuf },
    #[error("{path}: cannot watch workspace base: {source}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
    #[error("cannot start the polling file watcher: {source}")]
    StartPoll {
        #[source]
        source: notify::Error,
    },
}

/// What happened to a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Change {
    Created,
    /// Content changed (or, when polling, its mtime moved).
    Modified,
    Removed,
    /// One side of a rename: the path was moved away (`From`), moved here (`To`), or the
    /// backend did not say (`Unknown`). A rename inside the bases yields both sides.
    Renamed(RenameSide),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RenameSide {
    From,
    To,
    Unknown,
}

/// What the watcher tells the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Path {
        event: PathEvent,
        change: Change,
    },
    /// Events may have been lost (queue overflow, backend error, fallback to polling, a
    /// base removed): reconcile everything. The reason is for the log.
    Rescan(String),
}

/// Knobs for [`watch_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchOptions {
    /// Rescan interval of the poll fallback.
    pub poll_interval: Duration,
    /// Poll from the start (tests; filesystems without inotify such as some network mounts).
    pub force_poll: bool,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            poll_interval: DEFAULT_POLL_INTERVAL,
            force_poll: false,
        }
    }
}

/// What the event handler (on notify's thread) shares with the [`Watcher`].
#[derive(Debug, Default)]
struct State {
    /// The wanted bases (absolute), in the caller's order: `PathEvent::base` indexes this.
    bases: Vec<PathBuf>,
    /// Wanted but not watched right now (missing at add time, or removed/moved since).
    unwatched: HashSet<PathBuf>,
    /// Backend errors already reported as a rescan.
    reported_errors: HashSet<String>,
}

enum Backend {
    Inotify(inotify::Inotify),
    Poll(PollWatcher),
}

impl Backend {
    fn watch(&mut self, path: &Path) -> notify::Result<()> {
        match self {
            Backend::Inotify(w) => w.watch(path),
            Backend::Poll(w) => w.watch(path, RecursiveMode::Recursive),
        }
    }

    fn unwatch(&mut self, path: &Path) -> notify::Result<()> {
        match self {
            Backend::Inotify(w) => w.unwatch(path),
            Backend::Poll(w) => w.unwatch(path),
        }
    }
}

/// The watch on the workspace bases: alive while this value lives; dropping it stops it.
pub struct Watcher {
    state: Arc<Mutex<State>>,
    /// `None` only while being dropped. Lock order: `backend`, then `state`; the event
    /// handler takes only `state`, so it never waits on a thread that waits on it.
    backend: Arc<Mutex<Option<Backend>>>,
    tx: UnboundedSender<WatchEvent>,
    options: WatchOptions,
}

/// Watches `bases` recursively and sends their events to `tx`.
///
/// Fails when a base cannot be watched (naming it). To keep watching the other bases
/// when one is missing, start with `watch(&[], tx)` and use [`Watcher::set_bases`].
pub fn watch(bases: &[PathBuf], tx: UnboundedSender<WatchEvent>) -> Result<Watcher, WatchError> {
    watch_with(bases, tx, WatchOptions::default())
}

/// [`watch`] with options (poll interval, forced polling).
pub fn watch_with(
    bases: &[PathBuf],
    tx: UnboundedSender<WatchEvent>,
    options: WatchOptions,
) -> Result<Watcher, WatchError> {
    let state = Arc::new(Mutex::new(State::default()));
    let backend = Arc::new(Mutex::new(None));
    let first = if options.force_poll {
        Backend::Poll(new_poll(&state, &tx, options)?)
    } else {
        match new_inotify(&state, &tx, &backend, options) {
            Ok(w) => Backend::Inotify(w),
            Err(e) => {
                // inotify_init1 fails with EMFILE past fs.inotify.max_user_instances.
                tracing::warn!(
                    "cannot start inotify ({e}); polling every {:?} instead. Raise the limit \
                     with `sysctl fs.inotify.max_user_instances=1024`",
                    options.poll_interval
                );
                Backend::Poll(new_poll(&state, &tx, options)?)
            }
        }
    };
    *lock(&backend) = Some(first);
    let mut watcher = Watcher {
        state,
        backend,
        tx,
        options,
    };
    for base in bases {
        watcher.add_base(base)?;
    }
    Ok(watcher)
}

impl Watcher {
    /// True when watching by polling (inotify limit reached, or forced).
    pub fn is_polling(&self) -> bool {
        matches!(*lock(&self.backend), Some(Backend::Poll(_)))
    }

    /// How many folders inotify watches (`None` when polling): each base, its `registry/`,
    /// its task folders and their log folders, nothing else.
    pub fn watched_folders(&self) -> Option<usize> {
        match &*lock(&self.backend) {
            Some(Backend::Inotify(w)) => Some(w.len()),
            _ => None,
        }
    }

    /// The wanted bases (absolute) in order; `PathEvent::base` indexes this list.
    pub fn bases(&self) -> Vec<PathBuf> {
        lock(&self.state).bases.clone()
    }

    /// Wanted bases not watched right now (missing, or removed since).
    pub fn unwatched(&self) -> Vec<PathBuf> {
        let state = lock(&self.state);
        let mut out: Vec<_> = state
            .bases
            .iter()
            .filter(|b| state.unwatched.contains(*b))
            .cloned()
            .collect();
        out.dedup();
        out
    }

    /// Starts watching `base` (appended to the list). Watching an already watched base
    /// is a no-op; an unwatched one (missing before, removed since) is tried again. On
    /// error the base stays in the list as unwatched, for [`Watcher::retry_unwatched`].
    pub fn add_base(&mut self, base: &Path) -> Result<(), WatchError> {
        let base = absolute(base);
        let retry = {
            let mut state = lock(&self.state);
            if !state.bases.contains(&base) {
                state.bases.push(base.clone());
                false
            } else if state.unwatched.contains(&base) {
                true
            } else {
                return Ok(());
            }
        };
        let result = self.start_watch(&base, retry);
        let mut state = lock(&self.state);
        match result {
            Ok(()) => state.unwatched.remove(&base),
            Err(_) => state.unwatched.insert(base),
        };
        result
    }

    /// Stops watching `base` and drops it from the list (later indices shift down).
    pub fn remove_base(&mut self, base: &Path) {
        let base = absolute(base);
        {
            let mut state = lock(&self.state);
            if !state.bases.contains(&base) {
                return;
            }
            state.bases.retain(|b| b != &base);
            state.unwatched.remove(&base);
        }
        // Also when it was lost: a moved base keeps stale watches until unwatched.
        self.stop_watch(&base);
    }

    /// Makes the list exactly `bases`, in that order (config reload): new ones are watched,
    /// gone ones dropped, kept ones untouched. Returns the bases that could not be
    /// watched; they stay in the list as unwatched.
    pub fn set_bases(&mut self, bases: &[PathBuf]) -> Vec<WatchError> {
        let wanted: Vec<PathBuf> = bases.iter().map(|b| absolute(b)).collect();
        for old in self.bases() {
            if !wanted.contains(&old) {
                self.remove_base(&old);
            }
        }
        let mut errors = Vec::new();
        for base in &wanted {
            if let Err(e) = self.add_base(base) {
                errors.push(e);
            }
        }
        // add_base appends; put the list in the caller's order so indices match theirs.
        let mut state = lock(&self.state);
        state.bases = wanted;
        errors
    }

    /// Tries again to watch the bases that are wanted but not watched (call at reconcile).
    pub fn retry_unwatched(&mut self) -> Vec<WatchError> {
        self.unwatched()
            .into_iter()
            .filter_map(|b| self.add_base(&b).err())
            .collect()
    }

    /// Puts the watch on `base` in place. `retry`: it was watched before and lost.
    fn start_watch(&mut self, base: &Path, retry: bool) -> Result<(), WatchError> {
        // notify's poller accepts a missing path silently, and inotify would report it as
        // a bare "path not found": check first to name the base in the error.
        match std::fs::metadata(base) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(WatchError::NotADirectory {
                    path: base.to_path_buf(),
                });
            }
            Err(source) => {
                return Err(WatchError::MissingBase {
                    path: base.to_path_buf(),
                    source,
                });
            }
        }
        let mut backend = lock(&self.backend);
        let Some(b) = backend.as_mut() else {
            return Ok(());
        };
        if retry {
            // A base moved away keeps its inotify watches, reporting the moved tree under
            // the old paths: clear them before watching whatever is there now.
            let _ = b.unwatch(base);
        }
        match b.watch(base) {
            Ok(()) => Ok(()),
            // Switching re-watches every wanted base that exists, this one included.
            Err(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => {
                switch_to_polling(&mut backend, &self.state, &self.tx, self.options)
            }
            Err(source) => Err(WatchError::Watch {
                path: base.to_path_buf(),
                source,
            }),
        }
    }

    fn stop_watch(&mut self, base: &Path) {
        let mut backend = lock(&self.backend);
        let Some(b) = backend.as_mut() else {
            return;
        };
        if let Err(e) = b.unwatch(base) {
            tracing::debug!("{}: unwatch: {e}", base.display());
        }
        // notify drops every watch below the path, which includes what nested or
        // enclosing bases still need: put those back.
        let overlapping: Vec<PathBuf> = lock(&self.state)
            .bases
            .iter()
            .filter(|b| b.starts_with(base) || base.starts_with(b))
            .cloned()
            .collect();
        for other in overlapping {
            if let Err(e) = b.watch(&other) {
                tracing::warn!("{}: cannot re-watch: {e}", other.display());
                lock(&self.state).unwatched.insert(other);
            }
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        // Dropping the backend stops its thread, which drops the handler and with it the
        // last sender clone it held; taking it out also breaks the Weak back-reference.
        let backend = lock(&self.backend).take();
        drop(backend);
    }
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("bases", &self.bases())
            .field("polling", &self.is_polling())
            .finish()
    }
}

/// A poisoned lock only means a panic elsewhere; the data (paths, a backend) stays usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Lexically absolute (no symlink resolution): notify reports paths under the path it
/// was given, so this is the form events come back in.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

fn notify_config(options: WatchOptions) -> notify::Config {
    // Never follow symlinks: a link in a workspace (written by an agent) must not make us
    // watch, or report events from, a tree outside it.
    notify::Config::default()
        .with_follow_symlinks(false)
        .with_poll_interval(options.poll_interval)
}

fn new_inotify(
    state: &Arc<Mutex<State>>,
    tx: &UnboundedSender<WatchEvent>,
    backend: &Arc<Mutex<Option<Backend>>>,
    options: WatchOptions,
) -> notify::Result<inotify::Inotify> {
    let handler = Handler {
        state: Arc::clone(state),
        tx: tx.clone(),
        fallback: Some(Fallback::new(backend, state, options)),
    };
    inotify::Inotify::new(handler)
}

fn new_poll(
    state: &Arc<Mutex<State>>,
    tx: &UnboundedSender<WatchEvent>,
    options: WatchOptions,
) -> Result<PollWatcher, WatchError> {
    let handler = Handler {
        state: Arc::clone(state),
        tx: tx.clone(),
        fallback: None,
    };
    PollWatcher::new(handler, notify_config(options))
        .map_err(|source| WatchError::StartPoll { source })
}

/// Replaces the inotify backend by a poller over every wanted base. Called with the
/// backend lock held.
fn switch_to_polling(
    backend: &mut Option<Backend>,
    state: &Arc<Mutex<State>>,
    tx: &UnboundedSender<WatchEvent>,
    options: WatchOptions,
) -> Result<(), WatchError> {
    if matches!(backend, Some(Backend::Poll(_)) | None) {
        return Ok(());
    }
    tracing::warn!(
        "inotify watch limit reached (fs.inotify.max_user_watches); falling back to polling \
         every {:?}. Raise it with `sysctl fs.inotify.max_user_watches=524288` (persist in \
         /etc/sysctl.d/) and reload",
        options.poll_interval
    );
    let mut poll = new_poll(state, tx, options)?;
    let bases = lock(state).bases.clone();
    for base in &bases {
        if base.is_dir() {
            // The poller never fails to watch (errors come as events).
            let _ = poll.watch(base, RecursiveMode::Recursive);
            lock(state).unwatched.remove(base);
        }
    }
    // Dropping the inotify watcher frees its watches; it only signals its thread, so this
    // is safe even while that thread runs our handler.
    *backend = Some(Backend::Poll(poll));
    let _ = tx.send(WatchEvent::Rescan(
        "inotify watch limit reached (fs.inotify.max_user_watches); now polling".into(),
    ));
    Ok(())
}
