//! The journal file: round trip, torn and unreadable lines, fsync batching, compaction.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use agent_reaper::archive::outcome::RecoveryAction;
use agent_reaper::archive::recover;
use agent_reaper::journal::{COMPACT_AT, JOURNAL_FILE, Journal, LateAppend, Step};

fn copy_step(n: usize) -> Step {
    Step::Copy {
        src: PathBuf::from(format!("/w/progress/{n}_progress.jsonl")),
        partial: PathBuf::from(format!("/a/{n}_progress.jsonl.partial")),
        dest: PathBuf::from(format!("/a/{n}_progress.jsonl")),
        src_len: n as u64,
    }
}

fn registry_step() -> Step {
    Step::RegistryWrite {
        registry: "/w/AGENT_REGISTRY.json".into(),
        sidecar: "/w/AGENT_REGISTRY.json.reaper".into(),
    }
}

fn lines(state: &Path) -> Vec<String> {
    let text = fs::read_to_string(state.join(JOURNAL_FILE)).unwrap();
    text.lines().map(str::to_owned).collect()
}

#[test]
fn round_trip_keeps_pending_steps_and_marks() {
    let dir = tempfile::tempdir().unwrap();
    let append = Step::Append(LateAppend {
        src: "/w/progress/x_progress.jsonl".into(),
        archive: "/a/x_progress.jsonl".into(),
        archive_len: 10,
        src_dev: 1,
        src_ino: 2,
        src_len: 3,
        src_birth_ns: Some(4),
    });
    let (mut j, pending) = Journal::open(dir.path()).unwrap();
    assert!(pending.is_empty());
    let seqs = j
        .begin(&[append.clone(), copy_step(1), registry_step()])
        .unwrap();
    assert_eq!(seqs, vec![1, 2, 3]);
    j.mark_appended(&[1]).unwrap();
    j.finish(&[2]).unwrap();
    let first = &lines(dir.path())[0];
    assert!(
        first.starts_with(r#"{"seq":1,"op":"begin","step":{"kind":"append","#),
        "{first}"
    );
    assert_eq!(lines(dir.path())[4], r#"{"seq":2,"op":"done"}"#);
    drop(j);

    let (mut j, pending) = Journal::open(dir.path()).unwrap();
    let got: Vec<_> = pending
        .iter()
        .map(|p| (p.seq, p.step.clone(), p.appended))
        .collect();
    assert_eq!(got, vec![(1, append, true), (3, registry_step(), false)]);
    // Compacted on open: only the pending steps' records are left.
    assert_eq!(lines(dir.path()).len(), 3);
    // Sequence numbers keep growing across restarts.
    assert_eq!(j.begin(&[copy_step(4)]).unwrap(), vec![4]);
    drop(j);
    // Records written after a compaction land in the file under the journal's name.
    let (_, pending) = Journal::open(dir.path()).unwrap();
    let seqs: Vec<u64> = pending.iter().map(|p| p.seq).collect();
    assert_eq!(seqs, vec![1, 3, 4]);
}

#[test]
fn torn_last_line_is_ignored_and_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    j.begin(&[copy_step(1), copy_step(2)]).unwrap();
    drop(j);
    let path = dir.path().join(JOURNAL_FILE);
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(br#"{"seq":1,"op":"do"#).unwrap();

    let (mut j, pending) = Journal::open(dir.path()).unwrap();
    assert_eq!(pending.len(), 2);
    assert!(fs::read(&path).unwrap().ends_with(b"}\n"));
    j.finish(&[1]).unwrap();
    drop(j);
    let (_, pending) = Journal::open(dir.path()).unwrap();
    assert_eq!(pending.iter().map(|p| p.seq).collect::<Vec<_>>(), vec![2]);
}

#[test]
fn unreadable_line_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    j.begin(&[copy_step(1)]).unwrap();
    drop(j);
    let path = dir.path().join(JOURNAL_FILE);
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(b"\0\0\0\0\n").unwrap();
    let (mut j, pending) = Journal::open(dir.path()).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(j.begin(&[copy_step(2)]).unwrap(), vec![2]);
}

#[test]
fn one_fsync_per_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    let steps: Vec<Step> = (0..1000).map(copy_step).collect();
    let before = j.syncs();
    let seqs = j.begin(&steps).unwrap();
    assert_eq!(j.syncs(), before + 1);
    j.finish(&seqs).unwrap();
    assert_eq!(j.syncs(), before + 2);
    // Ending steps that are not pending writes nothing.
    j.finish(&seqs).unwrap();
    assert_eq!(j.syncs(), before + 2);
    assert_eq!(lines(dir.path()).len(), 2000);
}

#[test]
fn nothing_pending_truncates_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    let seqs = j.begin(&[copy_step(1)]).unwrap();
    j.undo(&seqs).unwrap();
    drop(j);
    let (_, pending) = Journal::open(dir.path()).unwrap();
    assert!(pending.is_empty());
    assert_eq!(
        fs::metadata(dir.path().join(JOURNAL_FILE)).unwrap().len(),
        0
    );
}

#[test]
fn large_journal_is_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    let keep = j.begin(&[registry_step()]).unwrap();
    let path = dir.path().join(JOURNAL_FILE);
    let mut max = 0;
    for round in 0..20 {
        let steps: Vec<Step> = (round * 500..(round + 1) * 500).map(copy_step).collect();
        let seqs = j.begin(&steps).unwrap();
        j.finish(&seqs).unwrap();
        max = max.max(fs::metadata(&path).unwrap().len());
    }
    assert!(max <= COMPACT_AT + 200_000, "{max}");
    assert!(fs::metadata(&path).unwrap().len() < COMPACT_AT);
    drop(j);
    let (mut j, pending) = Journal::open(dir.path()).unwrap();
    assert_eq!(pending.iter().map(|p| p.seq).collect::<Vec<_>>(), keep);
    j.finish(&keep).unwrap();
    drop(j);
    Journal::open(dir.path()).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), 0);
}

#[test]
fn registry_write_is_noted() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    j.begin(&[registry_step()]).unwrap();
    drop(j);
    let (mut j, pending) = Journal::open(dir.path()).unwrap();
    let rec = recover::recover(&mut j, pending);
    assert_eq!(rec[0].outcome.as_ref().unwrap(), &RecoveryAction::Noted);
    assert_eq!(j.pending().count(), 0);
}
