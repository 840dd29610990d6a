//! Unit tests for `late`: crash at every stage, writers at the delicate moments.

use super::*;
use crate::archive::recover::{self, Recovered};
use std::fs::{self, OpenOptions};

const OLD: &[u8] = b"{\"a\":1}\n{\"torn";
const NEW: &[u8] = b"\"}\n{\"b\":2}\n{\"c\":3}\n";

struct T {
    _dir: tempfile::TempDir,
    state: PathBuf,
    src: PathBuf,
    archive: PathBuf,
}

/// An archive whose last line has no newline, and a late write to append to it.
fn setup() -> T {
    let dir = tempfile::tempdir().unwrap();
    let (state, progress, arch) = (
        dir.path().join("state"),
        dir.path().join("progress"),
        dir.path().join("archive"),
    );
    fs::create_dir(&progress).unwrap();
    fs::create_dir(&arch).unwrap();
    let (src, archive) = (
        progress.join("x_progress.jsonl"),
        arch.join("x_progress.jsonl"),
    );
    fs::write(&src, NEW).unwrap();
    fs::write(&archive, OLD).unwrap();
    T {
        _dir: dir,
        state,
        src,
        archive,
    }
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn append_to(path: &Path, bytes: &[u8]) {
    OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

/// Reopens the journal as a restarted daemon would and recovers everything pending.
fn restart(t: &T) -> Vec<Recovered> {
    let (mut j, pending) = Journal::open(&t.state).unwrap();
    let rec = recover::recover(&mut j, pending);
    assert_eq!(j.pending().count(), 0, "{rec:?}");
    drop(j);
    assert!(Journal::open(&t.state).unwrap().1.is_empty());
    rec
}

fn action(rec: &[Recovered]) -> &RecoveryAction {
    assert_eq!(rec.len(), 1, "{rec:?}");
    rec[0].outcome.as_ref().unwrap()
}

#[test]
fn crash_at_every_stage_recovers_each_byte_once() {
    for stage in [
        Stage::Begun,
        Stage::Chunk,
        Stage::Copied,
        Stage::Marked,
        Stage::Unlinked,
    ] {
        let t = setup();
        let (mut j, _) = Journal::open(&t.state).unwrap();
        let out = append_with(&t.src, &t.archive, &mut j, 3, |s| s == stage).unwrap();
        assert!(out.is_none(), "{stage:?}");
        if stage == Stage::Chunk {
            // Killed mid-append: the archive holds a partial copy.
            assert_eq!(fs::read(&t.archive).unwrap(), cat(&[OLD, &NEW[..3]]));
        }
        drop(j);
        let rec = restart(&t);
        let want = match stage {
            Stage::Begun | Stage::Chunk | Stage::Copied => {
                RecoveryAction::Redone(AppendOutcome::Appended {
                    bytes: NEW.len() as u64,
                    rescued: 0,
                })
            }
            Stage::Marked => RecoveryAction::Completed,
            Stage::Unlinked => RecoveryAction::AlreadyDone,
        };
        assert_eq!(action(&rec), &want, "{stage:?}");
        assert_eq!(fs::read(&t.archive).unwrap(), cat(&[OLD, NEW]), "{stage:?}");
        assert!(!t.src.exists(), "{stage:?}");
    }
}

#[test]
fn writer_during_append_gives_changed_and_no_change() {
    for stage in [Stage::Chunk, Stage::Copied, Stage::Marked] {
        let t = setup();
        let (mut j, _) = Journal::open(&t.state).unwrap();
        let mut once = true;
        let out = append_with(&t.src, &t.archive, &mut j, 3, |s| {
            if s == stage && std::mem::take(&mut once) {
                append_to(&t.src, b"{\"d\":4}\n");
            }
            false
        });
        assert_eq!(out.unwrap(), Some(AppendOutcome::Changed), "{stage:?}");
        assert_eq!(fs::read(&t.archive).unwrap(), OLD);
        assert_eq!(fs::read(&t.src).unwrap(), cat(&[NEW, b"{\"d\":4}\n"]));
        assert_eq!(j.pending().count(), 0);
    }
}

#[test]
fn bytes_written_through_an_earlier_open_are_rescued() {
    let t = setup();
    let mut writer = OpenOptions::new().append(true).open(&t.src).unwrap();
    let (mut j, _) = Journal::open(&t.state).unwrap();
    let out = append_with(&t.src, &t.archive, &mut j, CHUNK, |s| {
        if s == Stage::Unlinked {
            writer.write_all(b"late\n").unwrap();
        }
        false
    });
    assert_eq!(
        out.unwrap(),
        Some(AppendOutcome::Appended {
            bytes: NEW.len() as u64,
            rescued: 5
        })
    );
    assert_eq!(fs::read(&t.archive).unwrap(), cat(&[OLD, NEW, b"late\n"]));
}
