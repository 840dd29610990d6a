//! The watcher against a real temp workspace: which filesystem changes become events.

use agent_reaper::watch::{
    Change, PathKind, RenameSide, WatchEvent, WatchOptions, Watcher, watch, watch_with,
};
use agent_reaper::workspace::LogKind;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio::time::timeout;

const T: &str = "TASK-20251029-230251-1a2b3c4d";
const A: &str = "impl-230251-abc123";
const WAIT: Duration = Duration::from_secs(10);

type Rx = UnboundedReceiver<WatchEvent>;

/// Waits until an event for `path` with `change` arrives; returns what it saw on the way.
async fn expect(rx: &mut Rx, path: &Path, change: Change) -> PathKind {
    let mut seen = Vec::new();
    let found = timeout(WAIT, async {
        while let Some(ev) = rx.recv().await {
            if let WatchEvent::Path { event, change: c } = &ev
                && event.path == path
                && *c == change
            {
                return Some(event.kind.clone());
            }
            seen.push(ev);
        }
        None
    })
    .await;
    match found {
        Ok(Some(kind)) => kind,
        _ => panic!("no {change:?} for {}; saw {seen:#?}", path.display()),
    }
}

/// Asserts that nothing at all arrives for a short while (the one negative wait).
async fn expect_quiet(rx: &mut Rx) {
    if let Ok(Some(ev)) = timeout(Duration::from_millis(500), rx.recv()).await {
        panic!("unexpected event: {ev:#?}");
    }
}

fn setup() -> (tempfile::TempDir, PathBuf, Watcher, Rx) {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("ws");
    fs::create_dir_all(base.join("registry")).unwrap();
    let (tx, rx) = unbounded_channel();
    let w = watch(std::slice::from_ref(&base), tx).unwrap();
    (tmp, base, w, rx)
}

#[tokio::test]
async fn task_lifecycle_yields_the_right_events() {
    let (_tmp, base, w, mut rx) = setup();
    assert!(!w.is_polling());
    let task = base.join(T);

    fs::create_dir(&task).unwrap();
    assert_eq!(
        expect(&mut rx, &task, Change::Created).await,
        PathKind::TaskDir { task: T.into() }
    );

    // A file made right after its folder can beat notify's watch on that folder (the
    // reason TaskDir exists: the daemon scans a new task). Retry until the watch is in.
    let reg = task.join("AGENT_REGISTRY.json");
    until_seen(&mut rx, &reg, || fs::write(&reg, "{}").unwrap()).await;
    fs::write(&reg, "{\"a\": 1}").unwrap();
    assert_eq!(
        expect(&mut rx, &reg, Change::Modified).await,
        PathKind::TaskRegistry { task: T.into() }
    );
    fs::remove_file(&reg).unwrap();
    expect(&mut rx, &reg, Change::Removed).await;
    fs::write(&reg, "{}").unwrap();
    expect(&mut rx, &reg, Change::Created).await;

    let global = base.join("registry/GLOBAL_REGISTRY.json");
    fs::write(&global, "{}").unwrap();
    assert_eq!(
        expect(&mut rx, &global, Change::Created).await,
        PathKind::GlobalRegistry
    );

    // The progress folder may be made before its watch exists (hence LogDir); retry the
    // append until the watcher sees one, then a plain append must be seen too.
    let progress = task.join("progress");
    fs::create_dir(&progress).unwrap();
    assert_eq!(
        expect(&mut rx, &progress, Change::Created).await,
        PathKind::LogDir { task: T.into() }
    );
    let log = progress.join(format!("{A}_progress.jsonl"));
    until_seen(&mut rx, &log, || append(&log, "{\"n\":1}\n")).await;
    append(&log, "{\"n\":2}\n");
    let kind = expect(&mut rx, &log, Change::Modified).await;
    assert_eq!(kind.agent().map(|a| a.as_str()), Some(A));
    assert!(matches!(
        kind,
        PathKind::Log {
            kind: LogKind::Progress,
            ..
        }
    ));

    // A registry rewritten the Python way (open('w') truncates, then writes).
    fs::write(&reg, "{\"agents\": []}").unwrap();
    expect(&mut rx, &reg, Change::Modified).await;

    // Rename: both sides, each classified on its own.
    let renamed = progress.join("other-230251-abc123_progress.jsonl");
    fs::rename(&log, &renamed).unwrap();
    expect(&mut rx, &log, Change::Renamed(RenameSide::From)).await;
    expect(&mut rx, &renamed, Change::Renamed(RenameSide::To)).await;

    fs::remove_file(&renamed).unwrap();
    expect(&mut rx, &renamed, Change::Removed).await;
    drop(w);
}

/// Repeats `act` until some event for `path` arrives: for the first file in a folder
/// that was just created, whose watch notify adds only after reporting the folder.
async fn until_seen(rx: &mut Rx, path: &Path, mut act: impl FnMut()) {
    timeout(WAIT, async {
        loop {
            act();
            let got = timeout(Duration::from_millis(200), async {
                while let Some(ev) = rx.recv().await {
                    if matches!(&ev, WatchEvent::Path { event, .. } if event.path == path) {
                        return;
                    }
                }
            })
            .await;
            if got.is_ok() {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never saw an event for {}", path.display()));
}

fn append(path: &Path, line: &str) {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(line.as_bytes()).unwrap();
}

#[tokio::test]
async fn reads_and_metadata_changes_are_silent() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("ws");
    let task = base.join(T);
    fs::create_dir_all(task.join("logs")).unwrap();
    let reg = task.join("AGENT_REGISTRY.json");
    let log = task.join(format!("logs/{A}_stream.jsonl"));
    fs::write(&reg, "{}").unwrap();
    fs::write(&log, "{}\n").unwrap();

    let (tx, mut rx) = unbounded_channel();
    let _w = watch(std::slice::from_ref(&base), tx).unwrap();
    // Everything the daemon does when it looks: list, stat, open, read, close.
    for _ in 0..3 {
        fs::read_dir(&base).unwrap().for_each(drop);
        fs::read_dir(&task).unwrap().for_each(drop);
        fs::read(&reg).unwrap();
        fs::read(&log).unwrap();
        fs::symlink_metadata(&log).unwrap();
        drop(fs::File::open(&log).unwrap());
    }
    // Metadata-only changes are not content changes either.
    let mut perms = fs::metadata(&log).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    fs::set_permissions(&log, perms).unwrap();
    expect_quiet(&mut rx).await;
}

#[tokio::test]
async fn own_writes_are_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("ws");
    let task = base.join(T);
    fs::create_dir_all(task.join("archive")).unwrap();
    fs::create_dir_all(task.join("logs")).unwrap();
    let log = task.join(format!("logs/{A}_stream.jsonl"));
    fs::write(&log, "{}\n").unwrap();
    let (tx, mut rx) = unbounded_channel();
    let _w = watch(std::slice::from_ref(&base), tx).unwrap();

    // What the daemon does: sidecar write and removal, archive writes, the archiving
    // rename; then a marker that proves the earlier events were processed (they arrive
    // in order) without being forwarded, except the log's side of the rename.
    let sidecar = task.join("AGENT_REGISTRY.json.reaper");
    fs::write(&sidecar, "{}").unwrap();
    fs::remove_file(&sidecar).unwrap();
    fs::write(task.join("archive/x.partial"), "x").unwrap();
    fs::rename(&log, task.join(format!("archive/{A}_stream.jsonl"))).unwrap();
    let marker = task.join("AGENT_REGISTRY.json");
    fs::write(&marker, "{}").unwrap();
    let mut seen = Vec::new();
    timeout(WAIT, async {
        while let Some(ev) = rx.recv().await {
            if matches!(&ev, WatchEvent::Path { event, .. } if event.path == marker) {
                break;
            }
            seen.push(ev);
        }
    })
    .await
    .unwrap();
    let want = WatchEvent::Path {
        event: agent_reaper::watch::classify(std::slice::from_ref(&base), &log).unwrap(),
        change: Change::Renamed(RenameSide::From),
    };
    assert_eq!(seen, vec![want]);
}

#[tokio::test]
async fn missing_base_is_named_and_can_come_later() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("not-yet");
    let (tx, mut rx) = unbounded_channel();
    let err = watch(std::slice::from_ref(&missing), tx.clone()).unwrap_err();
    assert!(err.to_string().contains("not-yet"), "{err}");

    // The way to keep watching the others: an empty watcher and set_bases.
    let present = tmp.path().join("present");
    fs::create_dir(&present).unwrap();
    let mut w = watch(&[], tx).unwrap();
    let errors = w.set_bases(&[missing.clone(), present.clone()]);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(w.unwatched(), vec![missing.clone()]);
    assert_eq!(w.bases(), vec![missing.clone(), present.clone()]);

    fs::create_dir(&missing).unwrap();
    assert!(w.retry_unwatched().is_empty());
    assert!(w.unwatched().is_empty());
    let task = missing.join(T);
    fs::create_dir(&task).unwrap();
    let WatchEvent::Path { event, .. } = timeout(WAIT, rx.recv()).await.unwrap().unwrap() else {
        panic!("expected a path event");
    };
    assert_eq!(event.base, 0);
    assert_eq!(event.kind, PathKind::TaskDir { task: T.into() });

    // Removing the base: a rescan, and it is unwatched until it is back.
    fs::remove_dir(&task).unwrap();
    fs::remove_dir(&missing).unwrap();
    let rescan = timeout(WAIT, async {
        while let Some(ev) = rx.recv().await {
            if let WatchEvent::Rescan(reason) = ev {
                return reason;
            }
        }
        unreachable!()
    })
    .await
    .unwrap();
    assert!(rescan.contains("not-yet"), "{rescan}");
    assert_eq!(w.unwatched(), vec![missing.clone()]);

    // Dropped from the list by a reload.
    assert!(w.set_bases(std::slice::from_ref(&present)).is_empty());
    assert_eq!(w.bases(), vec![present]);
    assert!(w.unwatched().is_empty());
}

#[tokio::test]
async fn nested_bases_keep_working_after_a_removal() {
    let tmp = tempfile::tempdir().unwrap();
    let outer = tmp.path().join("outer");
    let inner = outer.join("TASK-inner");
    fs::create_dir_all(inner.join(T)).unwrap();
    let (tx, mut rx) = unbounded_channel();
    let mut w = watch(&[outer.clone(), inner.clone()], tx).unwrap();

    let reg = inner.join(T).join("AGENT_REGISTRY.json");
    fs::write(&reg, "{}").unwrap();
    let WatchEvent::Path { event, .. } = timeout(WAIT, rx.recv()).await.unwrap().unwrap() else {
        panic!()
    };
    assert_eq!(
        (event.base, &event.kind),
        (1, &PathKind::TaskRegistry { task: T.into() })
    );

    // Dropping the inner base must not blind the outer one to that subtree.
    w.remove_base(&inner);
    fs::write(inner.join("AGENT_REGISTRY.json"), "{}").unwrap();
    let kind = expect(
        &mut rx,
        &inner.join("AGENT_REGISTRY.json"),
        Change::Modified,
    )
    .await;
    assert_eq!(
        kind,
        PathKind::TaskRegistry {
            task: "TASK-inner".into()
        }
    );
}

#[tokio::test]
async fn poll_fallback_reports_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("ws");
    let task = base.join(T);
    fs::create_dir_all(task.join("logs")).unwrap();
    let (tx, mut rx) = unbounded_channel();
    let options = WatchOptions {
        poll_interval: Duration::from_millis(50),
        force_poll: true,
    };
    let w = watch_with(std::slice::from_ref(&base), tx, options).unwrap();
    assert!(w.is_polling());

    let log = task.join(format!("logs/{A}_stream.jsonl"));
    fs::write(&log, "{}\n").unwrap();
    expect(&mut rx, &log, Change::Created).await;

    // The poller compares whole-second mtimes: move it forward explicitly.
    append(&log, "{}\n");
    let later = std::time::SystemTime::now() + Duration::from_secs(5);
    fs::File::options()
        .write(true)
        .open(&log)
        .unwrap()
        .set_modified(later)
        .unwrap();
    expect(&mut rx, &log, Change::Modified).await;

    // Reading is silent when polling too (content hashing is off).
    fs::read(&log).unwrap();

    fs::remove_file(&log).unwrap();
    expect(&mut rx, &log, Change::Removed).await;
}

#[tokio::test]
async fn symlinks_base_followed_links_inside_not() {
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real");
    let outside = tmp.path().join("outside");
    let task = real.join(T);
    fs::create_dir_all(&task).unwrap();
    fs::create_dir_all(&outside).unwrap();
    // An agent-made link from the task to somewhere else: must not be watched through.
    std::os::unix::fs::symlink(&outside, task.join("logs")).unwrap();
    let link = tmp.path().join("ws");
    std::os::unix::fs::symlink(&real, &link).unwrap();

    let (tx, mut rx) = unbounded_channel();
    let _w = watch(std::slice::from_ref(&link), tx).unwrap();
    fs::write(outside.join(format!("{A}_stream.jsonl")), "x").unwrap();
    // Events come back under the base as configured (the link), not the target.
    let reg = link.join(T).join("AGENT_REGISTRY.json");
    fs::write(&reg, "{}").unwrap();
    let first = timeout(WAIT, rx.recv()).await.unwrap().unwrap();
    let WatchEvent::Path { event, change } = first else {
        panic!("{first:?}")
    };
    assert_eq!((event.path, change), (reg, Change::Created));
}

#[tokio::test]
async fn moved_base_is_rewatched_without_stale_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("ws");
    fs::create_dir_all(base.join(T)).unwrap();
    let (tx, mut rx) = unbounded_channel();
    let mut w = watch(std::slice::from_ref(&base), tx).unwrap();

    let moved = tmp.path().join("ws.old");
    fs::rename(&base, &moved).unwrap();
    let reason = timeout(WAIT, async {
        loop {
            if let Some(WatchEvent::Rescan(r)) = rx.recv().await {
                return r;
            }
        }
    })
    .await
    .unwrap();
    assert!(reason.contains("removed or moved"), "{reason}");
    assert_eq!(w.unwatched(), vec![base.clone()]);

    // Writes in the moved tree would come back under the old paths: dropped.
    fs::write(moved.join(T).join("AGENT_REGISTRY.json"), "{}").unwrap();
    fs::create_dir_all(base.join(T)).unwrap();
    assert!(w.retry_unwatched().is_empty());
    fs::write(moved.join(T).join("AGENT_REGISTRY.json"), "{\"a\":1}").unwrap();
    // The new tree at the base path is watched; the first event must be from it.
    let reg = base.join(T).join("AGENT_REGISTRY.json");
    fs::write(&reg, "{}").unwrap();
    let first = timeout(WAIT, rx.recv()).await.unwrap().unwrap();
    let WatchEvent::Path { event, change } = first else {
        panic!("{first:?}")
    };
    assert_eq!((event.path, change), (reg, Change::Created));
}

/// One watch per folder that can hold a workspace file: the base, its `registry/`, each
/// task and its `logs/`, `progress/`, `findings/`; never `archive/` (the reaper's own
/// moves) nor other folders, whose writes then wake nothing.
#[tokio::test]
async fn only_workspace_folders_are_watched_archive_is_not() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("ws");
    let task = base.join(T);
    for dir in ["registry", "not-a-task/logs"] {
        fs::create_dir_all(base.join(dir)).unwrap();
    }
    for dir in ["logs", "progress", "findings", "archive", "output/deep"] {
        fs::create_dir_all(task.join(dir)).unwrap();
    }
    let (tx, mut rx) = unbounded_channel();
    let w = watch(std::slice::from_ref(&base), tx).unwrap();
    // base, registry, the task, its three log folders.
    assert_eq!(w.watched_folders(), Some(6));
    fs::write(task.join(format!("archive/{A}_stream.jsonl")), "{}\n").unwrap();
    fs::write(task.join(format!("output/deep/{A}_stream.jsonl")), "{}\n").unwrap();
    expect_quiet(&mut rx).await;
    // A late log in a log folder that was there before the watch: seen at once.
    let log = task.join(format!("logs/{A}_stream.jsonl"));
    fs::write(&log, "{}\n").unwrap();
    let kind = expect(&mut rx, &log, Change::Created).await;
    assert!(matches!(
        kind,
        PathKind::Log {
            kind: LogKind::Stream,
            ..
        }
    ));
}

/// A task folder moved into the base with its log folders already inside is watched
/// whole as it arrives; moved out, its writes no longer come back under the old path.
#[tokio::test]
async fn a_task_moved_in_is_watched_and_one_moved_out_is_let_go() {
    let (tmp, base, w, mut rx) = setup();
    let staged = tmp.path().join(T);
    fs::create_dir_all(staged.join("progress")).unwrap();
    let task = base.join(T);
    fs::rename(&staged, &task).unwrap();
    expect(&mut rx, &task, Change::Renamed(RenameSide::To)).await;
    assert_eq!(w.watched_folders(), Some(4));
    let log = task.join(format!("progress/{A}_progress.jsonl"));
    append(&log, "{\"n\":1}\n");
    expect(&mut rx, &log, Change::Created).await;

    let away = tmp.path().join("away");
    fs::rename(&task, &away).unwrap();
    expect(&mut rx, &task, Change::Renamed(RenameSide::From)).await;
    assert_eq!(w.watched_folders(), Some(2));
    append(
        &away.join(format!("progress/{A}_progress.jsonl")),
        "{\"n\":2}\n",
    );
    expect_quiet(&mut rx).await;
}
