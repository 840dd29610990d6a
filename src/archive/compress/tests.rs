//! Unit tests for `compress`: round trips, late frames, and recovery from every state a crash can leave.

use super::frame::{append_frame, recover_frame};
use super::*;
use crate::archive::outcome::AppendOutcome;
use crate::archive::recover::{self as journal, Recovered};
use crate::fs::FileId;
use std::fs;

struct T {
    _tmp: tempfile::TempDir,
    state: PathBuf,
    arch: PathBuf,
    logs: PathBuf,
}

fn setup() -> T {
    let tmp = tempfile::tempdir().unwrap();
    let (state, arch, logs) = (
        tmp.path().join("state"),
        tmp.path().join("archive"),
        tmp.path().join("logs"),
    );
    fs::create_dir(&arch).unwrap();
    fs::create_dir(&logs).unwrap();
    T {
        _tmp: tmp,
        state,
        arch,
        logs,
    }
}

/// A few MB of stream-log-like lines, not all alike.
fn log_bytes(lines: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..lines {
        out.extend_from_slice(
            format!(
                "{{\"type\":\"assistant\",\"n\":{i},\"text\":\"line {}\"}}\n",
                i * 7919 % 1013
            )
            .as_bytes(),
        );
    }
    out
}

/// `data` as one zstd frame.
fn zst(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

fn dir(p: &Path) -> Dir {
    Dir::open_base(p).unwrap()
}

fn decoded(p: &Path) -> Vec<u8> {
    decode_all(&File::open(p).unwrap()).unwrap()
}

fn restart(t: &T) -> Vec<Recovered> {
    let (mut j, pending) = Journal::open(&t.state).unwrap();
    let rec = journal::recover(&mut j, pending);
    assert_eq!(j.pending().count(), 0, "{rec:?}");
    rec
}

fn only_action(rec: Vec<Recovered>) -> Action {
    assert_eq!(rec.len(), 1, "{rec:?}");
    rec.into_iter().next().unwrap().outcome.unwrap()
}

#[test]
fn compressed_archive_decodes_to_the_exact_bytes_and_keeps_the_age() {
    let t = setup();
    let data = log_bytes(50_000);
    let name = OsStr::new("a_stream.jsonl");
    fs::write(t.arch.join(name), &data).unwrap();
    let mtime = fs::metadata(t.arch.join(name)).unwrap().modified().unwrap();
    let (mut j, _) = Journal::open(&t.state).unwrap();
    let out = compress_archived(&dir(&t.arch), name, 3, &mut j).unwrap();
    let Compressed::Done {
        zst,
        bytes_in,
        bytes_out,
    } = out
    else {
        panic!("{out:?}")
    };
    assert_eq!(zst, t.arch.join("a_stream.jsonl.zst"));
    assert_eq!(bytes_in, data.len() as u64);
    assert!(bytes_out < bytes_in / 4, "{bytes_out} of {bytes_in}");
    assert_eq!(decoded(&zst), data);
    assert!(!t.arch.join(name).exists(), "original must go");
    assert!(!t.arch.join("a_stream.jsonl.zst.partial").exists());
    assert_eq!(fs::metadata(&zst).unwrap().modified().unwrap(), mtime);
    assert_eq!(j.pending().count(), 0);
}

#[test]
fn late_bytes_become_a_further_frame_of_the_same_file() {
    let t = setup();
    let (old, late) = (log_bytes(1000), b"{\"type\":\"result\"}\n{\"torn".to_vec());
    fs::write(t.arch.join("a_stream.jsonl"), &old).unwrap();
    let (mut j, _) = Journal::open(&t.state).unwrap();
    compress_archived(&dir(&t.arch), OsStr::new("a_stream.jsonl"), 3, &mut j).unwrap();
    fs::write(t.logs.join("a_stream.jsonl"), &late).unwrap();
    let zname = OsStr::new("a_stream.jsonl.zst");
    let out = append_frame(
        &dir(&t.logs),
        OsStr::new("a_stream.jsonl"),
        &dir(&t.arch),
        zname,
        3,
        &mut j,
    )
    .unwrap();
    assert_eq!(
        out,
        AppendOutcome::Appended {
            bytes: late.len() as u64,
            rescued: 0
        }
    );
    assert_eq!(decoded(&t.arch.join(zname)), [old, late].concat());
    assert!(!t.logs.join("a_stream.jsonl").exists());
    assert_eq!(j.pending().count(), 0);
}

#[test]
fn a_zst_beside_the_original_is_refused_not_replaced() {
    let t = setup();
    fs::write(t.arch.join("a"), b"new").unwrap();
    fs::write(t.arch.join("a.zst"), b"someone's").unwrap();
    let (mut j, _) = Journal::open(&t.state).unwrap();
    let err = compress_archived(&dir(&t.arch), OsStr::new("a"), 3, &mut j).unwrap_err();
    assert!(matches!(err, CompressError::Taken { .. }), "{err}");
    assert_eq!(fs::read(t.arch.join("a.zst")).unwrap(), b"someone's");
    assert_eq!(fs::read(t.arch.join("a")).unwrap(), b"new");
}

/// Records a begun compression of `archive/a` as a crashed run would have.
fn begun_compress(t: &T, data: &[u8]) {
    let a = t.arch.join("a");
    fs::write(&a, data).unwrap();
    let (mut j, _) = Journal::open(&t.state).unwrap();
    j.begin(&[Step::Compress {
        archive: a.clone(),
        zst: t.arch.join("a.zst"),
        partial: t.arch.join("a.zst.partial"),
        archive_id: FileId::of_metadata(&fs::metadata(&a).unwrap()),
    }])
    .unwrap();
}

#[test]
fn recovery_before_the_rename_keeps_the_original_and_drops_the_partial() {
    let t = setup();
    let data = log_bytes(2000);
    begun_compress(&t, &data);
    let full = zst(&data);
    fs::write(t.arch.join("a.zst.partial"), &full[..full.len() / 2]).unwrap();
    assert_eq!(only_action(restart(&t)), Action::Undone);
    assert_eq!(fs::read(t.arch.join("a")).unwrap(), data);
    assert!(!t.arch.join("a.zst.partial").exists());
    assert!(!t.arch.join("a.zst").exists());
}

#[test]
fn recovery_after_the_rename_finishes_only_when_the_zst_decodes_to_the_original() {
    let t = setup();
    let data = log_bytes(2000);
    begun_compress(&t, &data);
    fs::write(t.arch.join("a.zst"), zst(&data)).unwrap();
    assert_eq!(only_action(restart(&t)), Action::Completed);
    assert!(!t.arch.join("a").exists());
    assert_eq!(decoded(&t.arch.join("a.zst")), data);

    // A `.zst` that is not the original's: both stay.
    let t = setup();
    begun_compress(&t, &data);
    fs::write(t.arch.join("a.zst"), zst(b"other")).unwrap();
    assert!(matches!(only_action(restart(&t)), Action::LeftAlone { .. }));
    assert_eq!(fs::read(t.arch.join("a")).unwrap(), data);
    assert!(t.arch.join("a.zst").exists());
}

#[test]
fn recovery_after_the_unlink_only_records_it() {
    let t = setup();
    let data = log_bytes(100);
    begun_compress(&t, &data);
    fs::write(t.arch.join("a.zst"), zst(&data)).unwrap();
    fs::remove_file(t.arch.join("a")).unwrap();
    assert_eq!(only_action(restart(&t)), Action::AlreadyDone);
    assert_eq!(decoded(&t.arch.join("a.zst")), data);
}

/// A compressed archive of `old` and a late write `late`, with a begun frame append.
fn begun_frame(t: &T, old: &[u8], late: &[u8], appended: bool) -> u64 {
    let z = t.arch.join("a.zst");
    fs::write(&z, zst(old)).unwrap();
    let src = t.logs.join("a");
    fs::write(&src, late).unwrap();
    let archive_len = fs::metadata(&z).unwrap().len();
    let id = FileId::of_metadata(&fs::metadata(&src).unwrap());
    let (mut j, _) = Journal::open(&t.state).unwrap();
    let seq = j
        .begin(&[Step::AppendFrame(crate::journal::LateAppend {
            src: src.clone(),
            archive: z,
            archive_len,
            src_dev: id.dev,
            src_ino: id.ino,
            src_len: late.len() as u64,
            src_birth_ns: cfs::birth_ns(&File::open(&src).unwrap()),
        })])
        .unwrap()[0];
    if appended {
        j.mark_appended(&[seq]).unwrap();
    }
    archive_len
}

/// [`begun_frame`] marked `appended`, its frame whole in the `.zst`: a crash before the unlink.
fn marked_frame_in_place(t: &T, old: &[u8], late: &[u8]) {
    begun_frame(t, old, late, true);
    append_raw(&t.arch.join("a.zst"), &zst(late));
}

fn append_raw(path: &Path, bytes: &[u8]) {
    use std::io::Write as _;
    fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

#[test]
fn recovery_of_a_torn_frame_cuts_it_off_and_keeps_the_source() {
    let t = setup();
    let (old, late) = (log_bytes(500), log_bytes(300));
    let len = begun_frame(&t, &old, &late, false);
    let frame = zst(&late);
    append_raw(&t.arch.join("a.zst"), &frame[..frame.len() / 3]);
    assert_eq!(only_action(restart(&t)), Action::Undone);
    assert_eq!(fs::metadata(t.arch.join("a.zst")).unwrap().len(), len);
    assert_eq!(decoded(&t.arch.join("a.zst")), old);
    assert_eq!(fs::read(t.logs.join("a")).unwrap(), late);
}

#[test]
fn recovery_of_a_marked_frame_unlinks_the_source_once() {
    let t = setup();
    let (old, late) = (log_bytes(500), log_bytes(300));
    marked_frame_in_place(&t, &old, &late);
    assert_eq!(only_action(restart(&t)), Action::Completed);
    assert!(!t.logs.join("a").exists());
    assert_eq!(decoded(&t.arch.join("a.zst")), [old, late].concat());
}

#[test]
fn recovery_of_a_marked_frame_whose_source_grew_cuts_the_frame_off() {
    let t = setup();
    let (old, late) = (log_bytes(500), log_bytes(300));
    marked_frame_in_place(&t, &old, &late);
    append_raw(&t.logs.join("a"), b"{\"more\":1}\n");
    assert_eq!(only_action(restart(&t)), Action::Undone);
    assert_eq!(decoded(&t.arch.join("a.zst")), old);
    assert_eq!(
        fs::read(t.logs.join("a")).unwrap(),
        [&late[..], b"{\"more\":1}\n"].concat()
    );
}

#[test]
fn recovery_of_a_frame_whose_source_is_gone_only_records_it() {
    let t = setup();
    let (old, late) = (log_bytes(50), log_bytes(30));
    marked_frame_in_place(&t, &old, &late);
    fs::remove_file(t.logs.join("a")).unwrap();
    let (mut j, pending) = Journal::open(&t.state).unwrap();
    let action = recover_frame(&mut j, &pending[0]).unwrap();
    assert_eq!(action, Action::AlreadyDone);
    assert_eq!(decoded(&t.arch.join("a.zst")), [old, late].concat());
}

#[test]
fn a_pending_step_blocks_new_work_on_that_archive() {
    let t = setup();
    begun_frame(&t, b"x", b"y", false);
    let (mut j, _) = Journal::open(&t.state).unwrap();
    let err = append_frame(
        &dir(&t.logs),
        OsStr::new("a"),
        &dir(&t.arch),
        OsStr::new("a.zst"),
        3,
        &mut j,
    )
    .unwrap_err();
    assert!(matches!(err, CompressError::Pending { .. }), "{err}");
}
