//! The inotify backend: one watch per folder that can hold a workspace file (each base,
//! its `registry/`, its task folders and their `logs/`, `progress/`, `findings/`), with a
//! mask of content and name changes only. Never `archive/` (the reaper's own moves) and
//! never opens or reads (the reaper's own reads would flood the queue); a whole-tree walk
//! is not needed, so 20,000 task folders cost 80,000 `inotify_add_watch` calls and no
//! path per watch. Events are handed to the shared [`Handler`] as notify events.
//!
//! Order, so nothing is lost: a folder is watched before its listing (the base) or before
//! its creation is reported (a new task or log folder), and the daemon answers a new
//! folder by scanning it, which covers files made before its watch.

use super::classify::task_id;
use super::handler::Handler;
use notify::event::{CreateKind, DataChange, Flag, ModifyKind, RemoveKind, RenameMode};
use notify::{Event, EventHandler as _, EventKind};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The folders of a task that hold agent logs.
const LOG_DIRS: [&str; 3] = ["logs", "progress", "findings"];
/// The folder of a base that holds the global registry and the state DB.
const REGISTRY_DIR: &str = "registry";

/// What a watched folder is.
#[derive(Debug)]
enum Node {
    /// A workspace base, as configured (a symlinked base is followed, on purpose).
    Base(PathBuf),
    /// A folder inside another watched one (`parent` is its watch descriptor).
    Child {
        parent: i32,
        name: Box<OsStr>,
        task: bool,
    },
}

/// The watches, by descriptor. Paths are rebuilt from names only for events.
#[derive(Debug, Default)]
struct Tree {
    nodes: HashMap<i32, Node>,
}

impl Tree {
    fn path(&self, wd: i32) -> Option<PathBuf> {
        match self.nodes.get(&wd)? {
            Node::Base(path) => Some(path.clone()),
            Node::Child { parent, name, .. } => Some(self.path(*parent)?.join(&**name)),
        }
    }

    /// The descriptors of `wd` and everything watched below it.
    fn subtree(&self, wd: i32) -> Vec<i32> {
        let below = |mut w: i32| loop {
            if w == wd {
                return true;
            }
            match self.nodes.get(&w) {
                Some(Node::Child { parent, .. }) => w = *parent,
                _ => return false,
            }
        };
        self.nodes.keys().copied().filter(|w| below(*w)).collect()
    }

    fn child(&self, parent: i32, name: &OsStr) -> Option<i32> {
        self.nodes.iter().find_map(|(wd, node)| match node {
            Node::Child {
                parent: p, name: n, ..
            } if *p == parent && **n == *name => Some(*wd),
            _ => None,
        })
    }
}

/// Content and name changes of the folder's entries, and the folder itself going away.
fn mask() -> WatchFlags {
    WatchFlags::CREATE
        | WatchFlags::DELETE
        | WatchFlags::MODIFY
        | WatchFlags::MOVED_FROM
        | WatchFlags::MOVED_TO
        | WatchFlags::DELETE_SELF
        | WatchFlags::MOVE_SELF
        | WatchFlags::ONLYDIR
        | WatchFlags::EXCL_UNLINK
}

/// The inotify instance and its reader thread (stopped when this is dropped).
pub(super) struct Inotify {
    fd: Arc<OwnedFd>,
    tree: Arc<Mutex<Tree>>,
    /// Closing it wakes the reader thread, which then ends.
    _stop: OwnedFd,
}

impl Inotify {
    pub(super) fn new(handler: Handler) -> notify::Result<Self> {
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)
            .map_err(|e| notify::Error::io(e.into()))?;
        let (stop_rx, stop) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| notify::Error::io(e.into()))?;
        let fd = Arc::new(fd);
        let tree = Arc::new(Mutex::new(Tree::default()));
        let reader = Reader {
            fd: Arc::clone(&fd),
            tree: Arc::clone(&tree),
            handler,
            stop: stop_rx,
        };
        std::thread::Builder::new()
            .name("inotify".into())
            .spawn(move || reader.run())
            .map_err(notify::Error::io)?;
        Ok(Inotify {
            fd,
            tree,
            _stop: stop,
        })
    }

    /// Watches `base` and what below it can hold workspace files. The base is watched
    /// before it is listed: a task folder made meanwhile is listed or reported, or both.
    pub(super) fn watch(&self, base: &Path) -> notify::Result<()> {
        let wd = add(&self.fd, base, mask()).map_err(|e| error(e, base))?;
        lock(&self.tree)
            .nodes
            .insert(wd, Node::Base(base.to_path_buf()));
        let listed = crate::fs::Dir::open_base(base)
            .and_then(|d| d.list())
            .map_err(|e| {
                notify::Error::io(std::io::Error::other(e.to_string())).add_path(base.into())
            })?;
        for entry in listed {
            if entry.kind == crate::fs::EntryKind::Dir {
                watch_child(&self.fd, &self.tree, wd, base, &entry.name)?;
            }
        }
        Ok(())
    }

    /// How many folders are watched.
    pub(super) fn len(&self) -> usize {
        lock(&self.tree).nodes.len()
    }

    /// Stops watching `base` and everything below it.
    pub(super) fn unwatch(&self, base: &Path) -> notify::Result<()> {
        let mut tree = lock(&self.tree);
        let root = tree
            .nodes
            .iter()
            .find_map(|(wd, n)| matches!(n, Node::Base(p) if p == base).then_some(*wd));
        let Some(root) = root else {
            return Err(notify::Error::watch_not_found().add_path(base.into()));
        };
        for wd in tree.subtree(root) {
            tree.nodes.remove(&wd);
            let _ = inotify::remove_watch(self.fd.as_fd(), wd);
        }
        Ok(())
    }
}

/// Watches the folder `name` in the watched folder `parent` (at `parent_path`) if it is
/// one the workspace layout names, and, for a task folder, its log folders. The last
/// component is never followed: a symlink planted by an agent is not watched through.
fn watch_child(
    fd: &OwnedFd,
    tree: &Mutex<Tree>,
    parent: i32,
    parent_path: &Path,
    name: &OsStr,
) -> notify::Result<()> {
    let (is_base, parent_is_task) = match lock(tree).nodes.get(&parent) {
        Some(Node::Base(_)) => (true, false),
        Some(Node::Child { task, .. }) => (false, *task),
        None => return Ok(()),
    };
    let text = name.to_str().unwrap_or("");
    let task = is_base && task_id(text).is_some();
    let wanted =
        task || (is_base && text == REGISTRY_DIR) || (parent_is_task && LOG_DIRS.contains(&text));
    if !wanted {
        return Ok(());
    }
    let path = parent_path.join(name);
    let wd = match add(fd, &path, mask() | WatchFlags::DONT_FOLLOW) {
        Ok(wd) => wd,
        // Gone already, or not a folder (a symlink, a file): nothing to watch.
        Err(e) if e == rustix::io::Errno::NOENT || e == rustix::io::Errno::NOTDIR => {
            return Ok(());
        }
        Err(e) => return Err(error(e, &path)),
    };
    {
        let mut tree = lock(tree);
        // The same folder may be a base of its own (nested bases): it stays one.
        if !matches!(tree.nodes.get(&wd), Some(Node::Base(_))) {
            tree.nodes.insert(
                wd,
                Node::Child {
                    parent,
                    name: name.into(),
                    task,
                },
            );
        }
    }
    if task {
        for dir in LOG_DIRS {
            watch_child(fd, tree, wd, &path, OsStr::new(dir))?;
        }
    }
    Ok(())
}

fn add(fd: &OwnedFd, path: &Path, flags: WatchFlags) -> rustix::io::Result<i32> {
    inotify::add_watch(fd, path, flags)
}

fn error(e: rustix::io::Errno, path: &Path) -> notify::Error {
    if e == rustix::io::Errno::NOSPC {
        // fs.inotify.max_user_watches: the caller falls back to polling.
        notify::Error::new(notify::ErrorKind::MaxFilesWatch).add_path(path.into())
    } else {
        notify::Error::io(e.into()).add_path(path.into())
    }
}

fn lock(m: &Mutex<Tree>) -> std::sync::MutexGuard<'_, Tree> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The reader thread: waits on the inotify descriptor and the stop pipe.
struct Reader {
    fd: Arc<OwnedFd>,
    tree: Arc<Mutex<Tree>>,
    handler: Handler,
    stop: OwnedFd,
}

impl Reader {
    fn run(mut self) {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let mut buf = vec![MaybeUninit::<u8>::uninit(); 64 * 1024];
        loop {
            let mut fds = [
                PollFd::new(self.fd.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.stop.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    self.handler.handle_event(Err(notify::Error::io(e.into())));
                    return;
                }
            }
            // The stop pipe's writer was closed: the watcher is gone.
            if fds[1].any().unwrap_or(true) {
                return;
            }
            let fd = Arc::clone(&self.fd);
            let mut reader = inotify::Reader::new(fd.as_fd(), &mut buf);
            loop {
                let (wd, flags, cookie, name) = match reader.next() {
                    Ok(ev) => (
                        ev.wd(),
                        ev.events(),
                        ev.cookie(),
                        ev.file_name()
                            .map(|n| OsString::from(OsStr::from_bytes(n.to_bytes()))),
                    ),
                    Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => break,
                    Err(e) => {
                        self.handler.handle_event(Err(notify::Error::io(e.into())));
                        break;
                    }
                };
                self.on_event(wd, flags, cookie, name);
            }
        }
    }

    fn on_event(&mut self, wd: i32, flags: ReadFlags, cookie: u32, name: Option<OsString>) {
        if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
            let ev = Event::new(EventKind::Other).set_flag(Flag::Rescan);
            self.handler.handle_event(Ok(ev));
            return;
        }
        if flags.contains(ReadFlags::IGNORED) {
            // The folder went (or was unwatched): its descriptor is dead.
            lock(&self.tree).nodes.remove(&wd);
            return;
        }
        let (dir, is_base) = {
            let tree = lock(&self.tree);
            (
                tree.path(wd),
                matches!(tree.nodes.get(&wd), Some(Node::Base(_))),
            )
        };
        let Some(dir) = dir else {
            return;
        };
        let is_dir = flags.contains(ReadFlags::ISDIR);
        let Some(name) = name else {
            // The watched folder itself: only a base going matters (its parent's event
            // reports any other folder).
            if is_base && flags.contains(ReadFlags::DELETE_SELF) {
                self.emit(EventKind::Remove(RemoveKind::Folder), dir, cookie);
            } else if is_base && flags.contains(ReadFlags::MOVE_SELF) {
                self.emit(
                    EventKind::Modify(ModifyKind::Name(RenameMode::From)),
                    dir,
                    cookie,
                );
            }
            return;
        };
        let path = dir.join(&name);
        if flags.intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO) && is_dir {
            // Watched before it is reported: the daemon's scan of it then misses nothing.
            if let Err(e) = watch_child(&self.fd, &self.tree, wd, &dir, &name) {
                self.handler.handle_event(Err(e));
            }
        }
        if flags.contains(ReadFlags::MOVED_FROM) && is_dir {
            // Moved away, its watches would report its new place under this old path.
            let mut tree = lock(&self.tree);
            if let Some(child) = tree.child(wd, &name) {
                for w in tree.subtree(child) {
                    tree.nodes.remove(&w);
                    let _ = inotify::remove_watch(self.fd.as_fd(), w);
                }
            }
        }
        let kind = if flags.contains(ReadFlags::CREATE) {
            EventKind::Create(if is_dir {
                CreateKind::Folder
            } else {
                CreateKind::File
            })
        } else if flags.contains(ReadFlags::DELETE) {
            EventKind::Remove(if is_dir {
                RemoveKind::Folder
            } else {
                RemoveKind::File
            })
        } else if flags.contains(ReadFlags::MOVED_FROM) {
            EventKind::Modify(ModifyKind::Name(RenameMode::From))
        } else if flags.contains(ReadFlags::MOVED_TO) {
            EventKind::Modify(ModifyKind::Name(RenameMode::To))
        } else if flags.contains(ReadFlags::MODIFY) {
            EventKind::Modify(ModifyKind::Data(DataChange::Any))
        } else {
            return;
        };
        self.emit(kind, path, cookie);
    }

    fn emit(&mut self, kind: EventKind, path: PathBuf, cookie: u32) {
        let mut ev = Event::new(kind).add_path(path);
        if cookie != 0 {
            ev = ev.set_tracker(cookie as usize);
        }
        self.handler.handle_event(Ok(ev));
    }
}

#[cfg(test)]
mod tests {
    use super::super::{State, WatchEvent};
    use super::*;

    fn reader() -> (Reader, tokio::sync::mpsc::UnboundedReceiver<WatchEvent>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let state = State {
            bases: vec![PathBuf::from("/ws")],
            ..State::default()
        };
        let handler = Handler {
            state: Arc::new(Mutex::new(state)),
            tx,
            fallback: None,
        };
        let mut tree = Tree::default();
        tree.nodes.insert(1, Node::Base(PathBuf::from("/ws")));
        let fd = inotify::init(CreateFlags::CLOEXEC).unwrap();
        let (stop, _) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let r = Reader {
            fd: Arc::new(fd),
            tree: Arc::new(Mutex::new(tree)),
            handler,
            stop,
        };
        (r, rx)
    }

    #[test]
    fn a_queue_overflow_asks_for_a_full_reconcile() {
        let (mut r, mut rx) = reader();
        r.on_event(-1, ReadFlags::QUEUE_OVERFLOW, 0, None);
        assert!(matches!(rx.try_recv(), Ok(WatchEvent::Rescan(_))));
    }

    #[test]
    fn a_base_moved_away_is_reported_and_a_dead_watch_forgotten() {
        let (mut r, mut rx) = reader();
        r.on_event(1, ReadFlags::MOVE_SELF, 0, None);
        assert!(matches!(rx.try_recv(), Ok(WatchEvent::Rescan(m)) if m.contains("moved")));
        r.on_event(1, ReadFlags::IGNORED, 0, None);
        assert!(lock(&r.tree).nodes.is_empty());
        // Events of a forgotten descriptor are dropped.
        r.on_event(1, ReadFlags::CREATE, 0, Some("TASK-1".into()));
        assert!(rx.try_recv().is_err());
    }
}
