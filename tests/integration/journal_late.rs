//! Late-write appends through the public API, and recovery from crash states built by hand.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use agent_reaper::archive::late::{LateError, append_late_write};
use agent_reaper::archive::outcome::AppendOutcome;
use agent_reaper::archive::outcome::RecoveryAction;
use agent_reaper::archive::recover;
use agent_reaper::journal::{Journal, LateAppend, Step};

const OLD: &[u8] = b"{\"a\":1}\n{\"torn";
const NEW: &[u8] = b"\"}\n{\"b\":2}\n";

struct T {
    _dir: tempfile::TempDir,
    state: PathBuf,
    src: PathBuf,
    archive: PathBuf,
}

/// An archive whose last line lacks its newline, and a late write recreated beside it.
fn setup() -> T {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("progress")).unwrap();
    fs::create_dir(dir.path().join("archive")).unwrap();
    let src = dir.path().join("progress/x_progress.jsonl");
    let archive = dir.path().join("archive/x_progress.jsonl");
    fs::write(&src, NEW).unwrap();
    fs::write(&archive, OLD).unwrap();
    let state = dir.path().join("state");
    T {
        _dir: dir,
        state,
        src,
        archive,
    }
}

fn append_to(path: &Path, bytes: &[u8]) {
    let mut f = OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

/// Records the begin of an append of `t.src` as the daemon would, before any byte moves.
fn begin(t: &T, j: &mut Journal) -> u64 {
    let m = fs::metadata(&t.src).unwrap();
    let step = Step::Append(LateAppend {
        src: t.src.clone(),
        archive: t.archive.clone(),
        archive_len: OLD.len() as u64,
        src_dev: m.dev(),
        src_ino: m.ino(),
        src_len: m.len(),
        src_birth_ns: m
            .created()
            .ok()
            .map(|t| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64),
    });
    j.begin(&[step]).unwrap()[0]
}

/// Restarts: recovers the single pending step and checks the journal is then empty.
fn restart(t: &T) -> RecoveryAction {
    let (mut j, pending) = Journal::open(&t.state).unwrap();
    assert_eq!(pending.len(), 1);
    let rec = recover::recover(&mut j, pending);
    assert_eq!(j.pending().count(), 0);
    drop(j);
    assert!(Journal::open(&t.state).unwrap().1.is_empty());
    rec.into_iter().next().unwrap().outcome.unwrap()
}

fn both(a: &[u8], b: &[u8]) -> Vec<u8> {
    [a, b].concat()
}

#[test]
fn happy_path_appends_bytes_once_and_unlinks() {
    let t = setup();
    let (mut j, _) = Journal::open(&t.state).unwrap();
    let out = append_late_write(&t.src, &t.archive, &mut j).unwrap();
    let bytes = NEW.len() as u64;
    assert_eq!(out, AppendOutcome::Appended { bytes, rescued: 0 });
    assert_eq!(fs::read(&t.archive).unwrap(), both(OLD, NEW));
    assert!(!t.src.exists());
    assert_eq!(j.pending().count(), 0);
    assert_eq!(j.syncs(), 3, "begin, appended, done");
}

#[test]
fn empty_late_write_is_removed() {
    let t = setup();
    fs::write(&t.src, b"").unwrap();
    let (mut j, _) = Journal::open(&t.state).unwrap();
    let out = append_late_write(&t.src, &t.archive, &mut j).unwrap();
    assert_eq!(
        out,
        AppendOutcome::Appended {
            bytes: 0,
            rescued: 0
        }
    );
    assert_eq!(fs::read(&t.archive).unwrap(), OLD);
    assert!(!t.src.exists());
}

#[test]
fn symlink_and_same_file_are_refused() {
    let t = setup();
    let (mut j, _) = Journal::open(&t.state).unwrap();
    let link = t.src.with_file_name("link.jsonl");
    std::os::unix::fs::symlink(&t.src, &link).unwrap();
    let err = append_late_write(&link, &t.archive, &mut j).unwrap_err();
    assert!(matches!(err, LateError::NotRegular { .. }), "{err}");
    let hard = t.src.with_file_name("hard.jsonl");
    fs::hard_link(&t.archive, &hard).unwrap();
    let err = append_late_write(&hard, &t.archive, &mut j).unwrap_err();
    assert!(matches!(err, LateError::SameFile { .. }), "{err}");
    assert!(err.to_string().contains("hard.jsonl"), "{err}");
    assert_eq!(fs::read(&t.archive).unwrap(), OLD);
    assert_eq!(j.pending().count(), 0);
}

#[test]
fn crash_mid_append_by_hand_is_redone() {
    let t = setup();
    let (mut j, _) = Journal::open(&t.state).unwrap();
    begin(&t, &mut j);
    append_to(&t.archive, &NEW[..4]);
    drop(j);
    let bytes = NEW.len() as u64;
    assert_eq!(
        restart(&t),
        RecoveryAction::Redone(AppendOutcome::Appended { bytes, rescued: 0 })
    );
    assert_eq!(fs::read(&t.archive).unwrap(), both(OLD, NEW));
    assert!(!t.src.exists());
}

#[test]
fn crash_after_copy_then_writer_redoes_whole_file() {
    let t = setup();
    let (mut j, _) = Journal::open(&t.state).unwrap();
    begin(&t, &mut j);
    append_to(&t.archive, NEW);
    drop(j);
    append_to(&t.src, b"more\n");
    let all = both(NEW, b"more\n");
    let bytes = all.len() as u64;
    assert_eq!(
        restart(&t),
        RecoveryAction::Redone(AppendOutcome::Appended { bytes, rescued: 0 })
    );
    assert_eq!(fs::read(&t.archive).unwrap(), both(OLD, &all));
    assert!(!t.src.exists());
}

#[test]
fn crash_after_copy_with_src_removed_by_someone_is_undone() {
    let t = setup();
    let (mut j, _) = Journal::open(&t.state).unwrap();
    begin(&t, &mut j);
    append_to(&t.archive, NEW);
    drop(j);
    fs::remove_file(&t.src).unwrap();
    assert_eq!(restart(&t), RecoveryAction::Undone);
    assert_eq!(fs::read(&t.archive).unwrap(), OLD);
}

#[test]
fn crash_after_appended_record_unlinks() {
    let t = setup();
    let (mut j, _) = Journal::open(&t.state).unwrap();
    let seq = begin(&t, &mut j);
    append_to(&t.archive, NEW);
    j.mark_appended(&[seq]).unwrap();
    drop(j);
    assert_eq!(restart(&t), RecoveryAction::Completed);
    assert_eq!(fs::read(&t.archive).unwrap(), both(OLD, NEW));
    assert!(!t.src.exists());
}

#[test]
fn crash_after_appended_then_writer_is_undone() {
    for cut_back in [false, true] {
        let t = setup();
        let (mut j, _) = Journal::open(&t.state).unwrap();
        let seq = begin(&t, &mut j);
        append_to(&t.archive, NEW);
        j.mark_appended(&[seq]).unwrap();
        drop(j);
        append_to(&t.src, b"more\n");
        if cut_back {
            // An undo truncated the archive, then the daemon died before `undone`.
            let f = OpenOptions::new().write(true).open(&t.archive).unwrap();
            f.set_len(OLD.len() as u64).unwrap();
        }
        assert_eq!(restart(&t), RecoveryAction::Undone);
        assert_eq!(fs::read(&t.archive).unwrap(), OLD);
        assert_eq!(fs::read(&t.src).unwrap(), both(NEW, b"more\n"));
    }
}

#[test]
fn crash_after_unlink_is_done_and_a_recreated_file_left_alone() {
    for recreate in [false, true] {
        let t = setup();
        let (mut j, _) = Journal::open(&t.state).unwrap();
        let seq = begin(&t, &mut j);
        append_to(&t.archive, NEW);
        j.mark_appended(&[seq]).unwrap();
        fs::remove_file(&t.src).unwrap();
        drop(j);
        if recreate {
            fs::write(&t.src, b"later\n").unwrap();
        }
        assert_eq!(restart(&t), RecoveryAction::AlreadyDone);
        assert_eq!(fs::read(&t.archive).unwrap(), both(OLD, NEW));
        assert_eq!(t.src.exists(), recreate);
    }
}

#[test]
fn archive_grown_by_someone_else_is_left_alone() {
    let t = setup();
    let (mut j, _) = Journal::open(&t.state).unwrap();
    begin(&t, &mut j);
    append_to(
        &t.archive,
        b"not ours at all, and longer than the late write\n",
    );
    drop(j);
    assert!(matches!(restart(&t), RecoveryAction::LeftAlone { .. }));
    assert!(t.src.exists());
    assert!(fs::read(&t.archive).unwrap().len() > OLD.len());
}

#[test]
fn pending_step_on_the_archive_blocks_a_new_append() {
    let t = setup();
    let (mut j, _) = Journal::open(&t.state).unwrap();
    let seq = begin(&t, &mut j);
    append_to(&t.archive, &NEW[..2]);
    let err = append_late_write(&t.src, &t.archive, &mut j).unwrap_err();
    assert!(
        matches!(err, LateError::Pending { seq: s, .. } if s == seq),
        "{err}"
    );
    assert_eq!(fs::read(&t.src).unwrap(), NEW);
    drop(j);
    restart(&t);
    assert_eq!(fs::read(&t.archive).unwrap(), both(OLD, NEW));
}

#[test]
fn recovery_never_follows_a_folder_swapped_for_a_symlink_after_the_crash() {
    let t = setup();
    let root = t.src.parent().unwrap().parent().unwrap().to_path_buf();
    let (mut j, _) = Journal::open(&t.state).unwrap();
    begin(&t, &mut j);
    // Killed mid-append: part of the copy is in the archive.
    append_to(&t.archive, &NEW[..2]);
    drop(j);
    // Before the restart, `archive/` is swapped for a symlink to an outside folder
    // holding a file of the same name and content.
    let outside = root.join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("x_progress.jsonl"), both(OLD, &NEW[..2])).unwrap();
    fs::rename(root.join("archive"), root.join("moved")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("archive")).unwrap();
    let (mut j, pending) = Journal::open(&t.state).unwrap();
    j.set_roots(vec![root.clone()]);
    let rec = recover::recover(&mut j, pending);
    let err = rec[0].outcome.as_ref().unwrap_err().to_string();
    assert!(err.contains("symlink"), "{err}");
    // Nothing outside was cut back or appended to; the late write is still whole.
    assert_eq!(
        fs::read(outside.join("x_progress.jsonl")).unwrap(),
        both(OLD, &NEW[..2])
    );
    assert_eq!(fs::read(&t.src).unwrap(), NEW);
    // A recorded path below none of the roots is refused too.
    j.set_roots(vec![root.join("elsewhere")]);
    let (sdir, _) = (j.locate(&t.src), ());
    assert!(sdir.unwrap_err().to_string().contains("below none"));
}
