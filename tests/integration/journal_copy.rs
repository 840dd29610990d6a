//! Recovery of cross-filesystem copies left half-done by a crash.

use std::fs;
use std::path::PathBuf;

use agent_reaper::archive::outcome::RecoveryAction;
use agent_reaper::archive::recover;
use agent_reaper::journal::{Journal, Step};

struct T {
    _dir: tempfile::TempDir,
    state: PathBuf,
    src: PathBuf,
    partial: PathBuf,
    dest: PathBuf,
}

fn setup() -> T {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("progress")).unwrap();
    fs::create_dir(dir.path().join("archive")).unwrap();
    T {
        state: dir.path().join("state"),
        src: dir.path().join("progress/x.jsonl"),
        partial: dir.path().join("archive/x.jsonl.partial"),
        dest: dir.path().join("archive/x.jsonl"),
        _dir: dir,
    }
}

/// Journals a copy of `len` bytes, then restarts and recovers it.
fn recover(t: &T, len: u64) -> RecoveryAction {
    let (mut j, _) = Journal::open(&t.state).unwrap();
    let step = Step::Copy {
        src: t.src.clone(),
        partial: t.partial.clone(),
        dest: t.dest.clone(),
        src_len: len,
    };
    j.begin(&[step]).unwrap();
    drop(j);
    let (mut j, pending) = Journal::open(&t.state).unwrap();
    let rec = recover::recover(&mut j, pending);
    assert_eq!(j.pending().count(), 0);
    rec.into_iter().next().unwrap().outcome.unwrap()
}

#[test]
fn verified_dest_unlinks_src() {
    let t = setup();
    fs::write(&t.src, b"abc\n").unwrap();
    fs::write(&t.dest, b"abc\n").unwrap();
    assert_eq!(recover(&t, 4), RecoveryAction::Completed);
    assert!(!t.src.exists());
    assert_eq!(fs::read(&t.dest).unwrap(), b"abc\n");
}

#[test]
fn dest_without_src_was_done_and_stray_partial_goes() {
    let t = setup();
    fs::write(&t.dest, b"abc\n").unwrap();
    fs::write(&t.partial, b"abc\n").unwrap();
    assert_eq!(recover(&t, 4), RecoveryAction::AlreadyDone);
    assert!(!t.partial.exists());
    assert_eq!(fs::read(&t.dest).unwrap(), b"abc\n");
}

#[test]
fn partial_only_is_undone() {
    let t = setup();
    fs::write(&t.src, b"abc\n").unwrap();
    fs::write(&t.partial, b"ab").unwrap();
    assert_eq!(recover(&t, 4), RecoveryAction::Undone);
    assert!(!t.partial.exists());
    assert_eq!(fs::read(&t.src).unwrap(), b"abc\n");
}

#[test]
fn src_grown_after_copy_drops_the_copy() {
    let t = setup();
    fs::write(&t.src, b"abc\ndef\n").unwrap();
    fs::write(&t.dest, b"abc\n").unwrap();
    assert_eq!(recover(&t, 4), RecoveryAction::Undone);
    assert!(!t.dest.exists());
    assert_eq!(fs::read(&t.src).unwrap(), b"abc\ndef\n");
}

#[test]
fn foreign_dest_is_left_alone() {
    let t = setup();
    fs::write(&t.src, b"abc\n").unwrap();
    fs::write(&t.dest, b"xyz\n").unwrap();
    assert!(matches!(recover(&t, 4), RecoveryAction::LeftAlone { .. }));
    assert!(t.src.exists() && t.dest.exists());
}

#[test]
fn partial_without_src_is_kept() {
    let t = setup();
    fs::write(&t.partial, b"abc\n").unwrap();
    assert!(matches!(recover(&t, 4), RecoveryAction::LeftAlone { .. }));
    assert!(t.partial.exists());
}
