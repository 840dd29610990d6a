//! Filesystem watching: notify (inotify, or polling past the watch limit) on each workspace
//! base, turned into domain events (base, task, kind, agent) for the daemon's loop.
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

pub use classify::{PathEvent, PathKind, classify};

use notify::event::{EventKind, MetadataKind, ModifyKind, RenameMode};
use notify::{Event, PollWatcher, RecommendedWatcher, RecursiveMode, Watcher as _};
use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

/// How often the poll fallback rescans the bases.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// How many distinct backend errors we remember, so a persistent one (an unreadable
/// folder the poller trips over every scan) asks for one reconcile, not one per scan.
const MAX_REMEMBERED_ERRORS: usize = 256;

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
    Inotify(RecommendedWatcher),
    Poll(PollWatcher),
}

impl Backend {
    fn watch(&mut self, path: &Path) -> notify::Result<()> {
        match self {
            Backend::Inotify(w) => w.watch(path, RecursiveMode::Recursive),
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
        {
            let mut state = lock(&self.state);
            if state.bases.contains(&base) && !state.unwatched.contains(&base) {
                return Ok(());
            }
            if !state.bases.contains(&base) {
                state.bases.push(base.clone());
            }
            // Marked unwatched until the watch is in place: events racing the add are
            // classified already, and a failure leaves it marked.
            state.unwatched.insert(base.clone());
        }
        self.start_watch(&base)
    }

    /// Stops watching `base` and drops it from the list (later indices shift down).
    pub fn remove_base(&mut self, base: &Path) {
        let base = absolute(base);
        let was_watched = {
            let mut state = lock(&self.state);
            state.bases.retain(|b| b != &base);
            !state.unwatched.remove(&base)
        };
        if was_watched {
            self.stop_watch(&base);
        }
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
        state.bases.dedup();
        errors
    }

    /// Tries again to watch the bases that are wanted but not watched (call at reconcile).
    pub fn retry_unwatched(&mut self) -> Vec<WatchError> {
        self.unwatched()
            .into_iter()
            .filter_map(|b| self.add_base(&b).err())
            .collect()
    }

    fn start_watch(&mut self, base: &Path) -> Result<(), WatchError> {
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
        match b.watch(base) {
            Ok(()) => {}
            Err(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => {
                // Switching re-watches every wanted base, this one included.
                switch_to_polling(&mut backend, &self.state, &self.tx, self.options)?;
                return Ok(());
            }
            Err(source) => {
                return Err(WatchError::Watch {
                    path: base.to_path_buf(),
                    source,
                });
            }
        }
        drop(backend);
        lock(&self.state).unwatched.remove(base);
        Ok(())
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
) -> notify::Result<RecommendedWatcher> {
    let handler = Handler {
        state: Arc::clone(state),
        tx: tx.clone(),
        fallback: Some(Fallback {
            backend: Arc::downgrade(backend),
            state: Arc::downgrade(state),
            options,
            started: false,
        }),
    };
    RecommendedWatcher::new(handler, notify_config(options))
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

/// What the inotify handler needs to switch the watcher to polling from its own thread.
struct Fallback {
    backend: Weak<Mutex<Option<Backend>>>,
    state: Weak<Mutex<State>>,
    options: WatchOptions,
    started: bool,
}

impl Fallback {
    /// Switches on another thread: the switch takes the backend lock, which a `Watcher`
    /// method may hold while it waits for this very (notify) thread to answer.
    fn start(&mut self, tx: &UnboundedSender<WatchEvent>) {
        if std::mem::replace(&mut self.started, true) {
            return;
        }
        let (backend, state, options, tx) = (
            self.backend.clone(),
            self.state.clone(),
            self.options,
            tx.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("watch-fallback".into())
            .spawn(move || {
                // Gone means the Watcher was dropped meanwhile: nothing to switch.
                let (Some(backend), Some(state)) = (backend.upgrade(), state.upgrade()) else {
                    return;
                };
                let mut guard = lock(&backend);
                if let Err(e) = switch_to_polling(&mut guard, &state, &tx, options) {
                    tracing::error!("{e}; file events are no longer watched");
                    let _ = tx.send(WatchEvent::Rescan(e.to_string()));
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the switch to polling: {e}");
        }
    }
}

/// notify's callback: filters and classifies, then forwards to the daemon.
struct Handler {
    state: Arc<Mutex<State>>,
    tx: UnboundedSender<WatchEvent>,
    /// Set for inotify; the poller has nothing to fall back to.
    fallback: Option<Fallback>,
}

impl notify::EventHandler for Handler {
    fn handle_event(&mut self, event: notify::Result<Event>) {
        match event {
            Ok(event) => self.on_event(event),
            Err(e) => self.on_error(e),
        }
    }
}

impl Handler {
    fn on_event(&mut self, event: Event) {
        if event.need_rescan() {
            let _ = self.tx.send(WatchEvent::Rescan(
                "inotify queue overflowed (fs.inotify.max_queued_events); events were lost".into(),
            ));
            return;
        }
        let Some(change) = change_of(&event.kind) else {
            return;
        };
        let mut out = Vec::new();
        {
            let mut state = lock(&self.state);
            for path in &event.paths {
                if state.bases.contains(path) {
                    // The base itself went (removed or moved away): its watch is gone.
                    if matches!(change, Change::Removed | Change::Renamed(_)) {
                        state.unwatched.insert(path.clone());
                        out.push(WatchEvent::Rescan(format!(
                            "{}: workspace base removed or moved; not watched until it is back",
                            path.display()
                        )));
                    }
                    continue;
                }
                match classify(&state.bases, path) {
                    Some(ev) if !ev.kind.is_own() => {
                        out.push(WatchEvent::Path { event: ev, change })
                    }
                    _ => {}
                }
            }
        }
        for ev in out {
            let _ = self.tx.send(ev);
        }
    }

    fn on_error(&mut self, e: notify::Error) {
        if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
            // Raised by inotify when a new folder's watch could not be added: that folder
            // (and any later one) would go unseen, so poll everything instead.
            let _ = self
                .tx
                .send(WatchEvent::Rescan(format!("watch limit reached: {e}")));
            if let Some(f) = self.fallback.as_mut() {
                f.start(&self.tx);
            }
            return;
        }
        // The poller trips over files that vanish between listing and stat: the next
        // scan reports the removal, nothing was lost.
        if let notify::ErrorKind::Io(io) = &e.kind
            && io.kind() == io::ErrorKind::NotFound
        {
            tracing::debug!("watch: {e}");
            return;
        }
        let reason = format!("watch error: {e}");
        let mut state = lock(&self.state);
        if state.reported_errors.contains(&reason) {
            tracing::debug!("{reason} (again)");
            return;
        }
        if state.reported_errors.len() >= MAX_REMEMBERED_ERRORS {
            state.reported_errors.clear();
        }
        state.reported_errors.insert(reason.clone());
        drop(state);
        tracing::warn!("{reason}");
        let _ = self.tx.send(WatchEvent::Rescan(reason));
    }
}

/// Which notify event kinds are changes worth waking for. Access (open, close, read) and
/// metadata-only changes (chmod, atime) are not: the daemon's own reads cause them.
fn change_of(kind: &EventKind) -> Option<Change> {
    match kind {
        EventKind::Create(_) => Some(Change::Created),
        EventKind::Remove(_) => Some(Change::Removed),
        EventKind::Modify(ModifyKind::Name(mode)) => match mode {
            RenameMode::From => Some(Change::Renamed(RenameSide::From)),
            RenameMode::To => Some(Change::Renamed(RenameSide::To)),
            // inotify sends `Both` after having sent `From` and `To`: the paths are covered.
            RenameMode::Both => None,
            RenameMode::Any | RenameMode::Other => Some(Change::Renamed(RenameSide::Unknown)),
        },
        // The poller reports a content change as a newer mtime; inotify never sends this.
        EventKind::Modify(ModifyKind::Metadata(MetadataKind::WriteTime)) => Some(Change::Modified),
        EventKind::Modify(ModifyKind::Metadata(_)) => None,
        EventKind::Modify(_) => Some(Change::Modified),
        EventKind::Access(_) | EventKind::Any | EventKind::Other => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, RemoveKind};

    #[test]
    fn only_content_and_name_changes_count() {
        use EventKind as K;
        let cases = [
            (K::Create(CreateKind::File), Some(Change::Created)),
            (K::Create(CreateKind::Folder), Some(Change::Created)),
            (K::Remove(RemoveKind::Any), Some(Change::Removed)),
            (
                K::Modify(ModifyKind::Data(DataChange::Any)),
                Some(Change::Modified),
            ),
            (K::Modify(ModifyKind::Any), Some(Change::Modified)),
            (
                K::Modify(ModifyKind::Metadata(MetadataKind::WriteTime)),
                Some(Change::Modified),
            ),
            (K::Modify(ModifyKind::Metadata(MetadataKind::Any)), None),
            (
                K::Modify(ModifyKind::Metadata(MetadataKind::Permissions)),
                None,
            ),
            (
                K::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)),
                None,
            ),
            (
                K::Modify(ModifyKind::Name(RenameMode::From)),
                Some(Change::Renamed(RenameSide::From)),
            ),
            (
                K::Modify(ModifyKind::Name(RenameMode::To)),
                Some(Change::Renamed(RenameSide::To)),
            ),
            (K::Modify(ModifyKind::Name(RenameMode::Both)), None),
            (K::Access(AccessKind::Open(AccessMode::Any)), None),
            (K::Access(AccessKind::Close(AccessMode::Read)), None),
            (K::Access(AccessKind::Close(AccessMode::Write)), None),
            (K::Any, None),
            (K::Other, None),
        ];
        for (kind, want) in cases {
            assert_eq!(change_of(&kind), want, "{kind:?}");
        }
    }

    fn handler() -> (Handler, tokio::sync::mpsc::UnboundedReceiver<WatchEvent>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let state = State {
            bases: vec![PathBuf::from("/ws")],
            ..State::default()
        };
        let h = Handler {
            state: Arc::new(Mutex::new(state)),
            tx,
            fallback: None,
        };
        (h, rx)
    }

    fn drain(rx: &mut tokio::sync::mpsc::UnboundedReceiver<WatchEvent>) -> Vec<WatchEvent> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    #[test]
    fn handler_classifies_and_drops_echoes() {
        use notify::EventHandler as _;
        let (mut h, mut rx) = handler();
        let ev = |kind, paths: &[&str]| {
            let mut e = Event::new(kind);
            for p in paths {
                e = e.add_path(PathBuf::from(p));
            }
            Ok(e)
        };
        // Our own archive rename: the log's side counts, the archive side does not.
        h.handle_event(ev(
            EventKind::Modify(ModifyKind::Name(RenameMode::From)),
            &["/ws/TASK-1/logs/a_stream.jsonl"],
        ));
        h.handle_event(ev(
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            &["/ws/TASK-1/archive/a_stream.jsonl"],
        ));
        h.handle_event(ev(
            EventKind::Create(CreateKind::File),
            &["/ws/TASK-1/AGENT_REGISTRY.json.reaper"],
        ));
        h.handle_event(ev(
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            &["/ws/TASK-1/AGENT_REGISTRY.json"],
        ));
        h.handle_event(ev(
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            &[
                "/ws/TASK-1/output/x",
                "/elsewhere/TASK-1/AGENT_REGISTRY.json",
            ],
        ));
        let got = drain(&mut rx);
        assert_eq!(got.len(), 1, "{got:?}");
        let WatchEvent::Path { event, change } = &got[0] else {
            panic!("{got:?}");
        };
        assert_eq!(*change, Change::Renamed(RenameSide::From));
        assert_eq!(event.kind.agent().map(|a| a.as_str()), Some("a"));
    }

    #[test]
    fn overflow_errors_and_lost_base_ask_for_a_rescan() {
        use notify::EventHandler as _;
        let (mut h, mut rx) = handler();
        h.handle_event(Ok(
            Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan)
        ));
        let denied = || {
            Err(
                notify::Error::io(io::Error::from(io::ErrorKind::PermissionDenied))
                    .add_path(PathBuf::from("/ws/TASK-1/secret")),
            )
        };
        h.handle_event(denied());
        // The same error again (the poller hits it every scan): reported once.
        h.handle_event(denied());
        h.handle_event(Err(notify::Error::io(io::Error::from(
            io::ErrorKind::NotFound,
        ))));
        h.handle_event(Ok(
            Event::new(EventKind::Remove(RemoveKind::Folder)).add_path(PathBuf::from("/ws"))
        ));
        let got = drain(&mut rx);
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got.iter().all(|e| matches!(e, WatchEvent::Rescan(_))));
        assert!(lock(&h.state).unwatched.contains(Path::new("/ws")));
    }
}
