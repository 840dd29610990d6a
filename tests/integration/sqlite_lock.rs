//! A writer holding the state DB in `BEGIN IMMEDIATE`: we wait up to the busy timeout, then give one `Busy` and write nothing.

use crate::common_sqlite::*;
use agent_reaper::registry::edit::Applied;
use agent_reaper::registry::sqlite::{DbChange, SqliteError, StateDb, terminal_message};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const NOW: &str = "2026-01-02T09:00:00.000001";

fn zombie() -> DbChange {
    DbChange {
        task_id: TASK_A.into(),
        agent_id: WORKING.into(),
        expect_status: "working".into(),
        set_status: Some(("terminated", Some("session_not_found"))),
        message: terminal_message("terminated", Some("session_not_found")),
    }
}

/// How the holder ends its transaction.
enum Release {
    /// Holds for this long, then commits (the orchestrator's slow status update).
    After(Duration),
    /// Holds until told, then commits.
    OnSignal(mpsc::Receiver<()>),
}

/// An orchestrator connection in a thread: `BEGIN IMMEDIATE`, a write, "locked" on the channel, hold, commit.
fn hold_write_lock(db: PathBuf, release: Release) -> (mpsc::Receiver<()>, thread::JoinHandle<()>) {
    let (locked_tx, locked_rx) = mpsc::channel();
    let handle = thread::spawn(move || {
        let conn = orchestrator_conn(&db);
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        conn.execute(
            "UPDATE tasks SET updated_at = 'held' WHERE task_id = ?1",
            [TASK_B],
        )
        .unwrap();
        locked_tx.send(()).unwrap();
        match release {
            Release::After(hold) => thread::sleep(hold),
            Release::OnSignal(rx) => rx.recv().unwrap(),
        }
        conn.execute_batch("COMMIT").unwrap();
    });
    locked_rx.recv().expect("holder failed before locking");
    (locked_rx, handle)
}

fn open(db: &Path, timeout: Duration) -> StateDb {
    StateDb::open_with_timeout(db, timeout).unwrap().unwrap()
}

#[test]
fn a_long_writer_is_waited_for_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = build_state_db(dir.path());
    let mut db = open(&db_path, Duration::from_secs(5));
    let hold = Duration::from_secs(2);
    let (_locked, holder) = hold_write_lock(db_path.clone(), Release::After(hold));
    let started = Instant::now();
    let applied = db.apply(&[zombie()], NOW).unwrap();
    let waited = started.elapsed();
    holder.join().unwrap();
    assert_eq!(applied, [Applied::Done]);
    // The holder locked before we started and held for 2 s: we must have waited most of it.
    assert!(
        waited >= Duration::from_millis(1500),
        "waited only {waited:?}"
    );
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
    assert_eq!(
        agent_row(&db_path, WORKING).status.as_deref(),
        Some("terminated")
    );
}

#[test]
fn a_writer_past_the_timeout_gives_one_busy_error_and_no_write() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = build_state_db(dir.path());
    let before = dump(&db_path);
    let mut db = open(&db_path, Duration::from_millis(300));
    let (release_tx, release_rx) = mpsc::channel();
    let (_locked, holder) = hold_write_lock(db_path.clone(), Release::OnSignal(release_rx));

    // Readers are not blocked by a WAL writer: the round can still look.
    let map = db.agents_by_task().unwrap();
    assert_eq!(map[TASK_A].len(), 4);

    let started = Instant::now();
    let err = db.apply(&[zombie()], NOW).unwrap_err();
    let elapsed = started.elapsed();
    release_tx.send(()).unwrap();
    holder.join().unwrap();
    match &err {
        SqliteError::Busy { path, waited } => {
            assert_eq!(path, &db_path);
            assert!(*waited >= Duration::from_millis(250), "{waited:?}");
        }
        other => panic!("expected busy, got {other}"),
    }
    assert!(
        elapsed < Duration::from_secs(3),
        "no retry loop: {elapsed:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&*db_path.to_string_lossy()) && text.contains("skipped this round"),
        "{text}"
    );
    assert_eq!(dump(&db_path), before, "nothing of ours written");

    // Next round, lock gone: the same change goes through on the same connection.
    assert_eq!(db.apply(&[zombie()], NOW).unwrap(), [Applied::Done]);
}
