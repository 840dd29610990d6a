//! notify's callback side of the watcher: filtering, classifying, forwarding, and the
//! switch to polling when inotify runs out of watches.

use super::{
    Backend, Change, RenameSide, State, WatchEvent, WatchOptions, classify, lock, switch_to_polling,
};
use notify::Event;
use notify::event::{EventKind, MetadataKind, ModifyKind, RenameMode};
use std::io;
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::mpsc::UnboundedSender;

/// How many distinct backend errors we remember, so a persistent one (an unreadable
/// folder the poller trips over every scan) asks for one reconcile, not one per scan.
const MAX_REMEMBERED_ERRORS: usize = 256;

/// What the inotify handler needs to switch the watcher to polling from its own thread.
pub(super) struct Fallback {
    backend: Weak<Mutex<Option<Backend>>>,
    state: Weak<Mutex<State>>,
    options: WatchOptions,
    started: bool,
}

impl Fallback {
    pub(super) fn new(
        backend: &Arc<Mutex<Option<Backend>>>,
        state: &Arc<Mutex<State>>,
        options: WatchOptions,
    ) -> Self {
        Fallback {
            backend: Arc::downgrade(backend),
            state: Arc::downgrade(state),
            options,
            started: false,
        }
    }

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
pub(super) struct Handler {
    pub(super) state: Arc<Mutex<State>>,
    pub(super) tx: UnboundedSender<WatchEvent>,
    /// Set for inotify; the poller has nothing to fall back to.
    pub(super) fallback: Option<Fallback>,
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
                    // A lost base's stale watches (it was moved) report under old paths.
                    Some(ev) if state.unwatched.contains(&ev.base_dir) => {}
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
pub(super) fn change_of(kind: &EventKind) -> Option<Change> {
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
    use std::path::{Path, PathBuf};

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

    #[tokio::test]
    async fn watch_limit_at_runtime_switches_to_polling() {
        use notify::EventHandler as _;
        use std::time::Duration;
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().to_path_buf();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let w = super::super::watch(std::slice::from_ref(&base), tx.clone()).unwrap();
        assert!(!w.is_polling());
        // What inotify's thread does when a new folder's watch hits ENOSPC.
        let options = WatchOptions {
            poll_interval: Duration::from_millis(50),
            force_poll: false,
        };
        let mut h = Handler {
            state: Arc::clone(&w.state),
            tx,
            fallback: Some(Fallback::new(&w.backend, &w.state, options)),
        };
        h.handle_event(Err(notify::Error::new(notify::ErrorKind::MaxFilesWatch)));
        h.handle_event(Err(notify::Error::new(notify::ErrorKind::MaxFilesWatch)));
        let wait = Duration::from_secs(10);
        // One rescan per error, and one from the switch (started once; it may come
        // before the second error's).
        let mut rescans: Vec<String> = Vec::new();
        while rescans.len() < 3 {
            match tokio::time::timeout(wait, rx.recv())
                .await
                .unwrap()
                .unwrap()
            {
                WatchEvent::Rescan(reason) => rescans.push(reason),
                other => panic!("{other:?}"),
            }
        }
        let polling = rescans.iter().filter(|r| r.contains("now polling")).count();
        assert_eq!(polling, 1, "{rescans:?}");
        assert!(w.is_polling());
        // The poller now covers the base.
        let task = base.join("TASK-1");
        std::fs::create_dir(&task).unwrap();
        let got = tokio::time::timeout(wait, async {
            loop {
                if let Some(WatchEvent::Path { event, change }) = rx.recv().await {
                    return (event, change);
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(got.0.path, task);
        assert_eq!(got.1, Change::Created);
    }
}
