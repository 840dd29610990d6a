//! Unit tests for `archive`: real files in temp dirs, hooks for the racy moments.

use super::*;
use std::fs;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::symlink;

fn write(p: &Path, bytes: &[u8]) {
    fs::write(p, bytes).unwrap();
}

/// Some binary-ish content with every byte value, so a lossy copy would show.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 256) as u8).collect()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn same_fs_renames() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("logs/a_stream.jsonl");
    fs::create_dir(t.path().join("logs")).unwrap();
    let data = payload(200_000);
    write(&src, &data);
    let adir = t.path().join("archive");
    let got = archive_file(&src, &adir).unwrap();
    assert_eq!(got, Archived::Renamed(adir.join("a_stream.jsonl")));
    assert_eq!(fs::read(got.path()).unwrap(), data);
    assert!(!src.exists());
    let mode = fs::metadata(&adir).unwrap().mode() & 0o777;
    assert_eq!(mode & 0o700, 0o700);
}

#[test]
fn a_taken_name_is_never_replaced_nor_numbered() {
    // One log, one archive: the caller appends to the existing archive instead
    // (`crate::archive::late`); the move itself refuses, whichever way it would go.
    let t = tempfile::tempdir().unwrap();
    let adir = t.path().join("archive");
    fs::create_dir(&adir).unwrap();
    write(&adir.join("x_progress.jsonl"), b"old archive\n");
    let src = t.path().join("x_progress.jsonl");
    write(&src, b"first\n");
    for strategy in [Strategy::Rename, Strategy::Copy] {
        let err = archive_file_with(&src, &adir, strategy, |_| {}).unwrap_err();
        assert!(
            matches!(err, ArchiveError::Taken { ref path } if *path == adir.join("x_progress.jsonl")),
            "{strategy:?}: {err}"
        );
        assert_eq!(fs::read(&src).unwrap(), b"first\n");
        assert_eq!(
            fs::read(adir.join("x_progress.jsonl")).unwrap(),
            b"old archive\n"
        );
        assert_eq!(entries(&adir), vec!["x_progress.jsonl"]);
    }
}

#[test]
fn link_fallback_never_replaces() {
    let t = tempfile::tempdir().unwrap();
    let dir = Dir::open_base(t.path()).unwrap();
    write(&t.path().join("f.jsonl"), b"kept\n");
    write(&t.path().join("g.jsonl"), b"new\n");
    let err = crate::fs::link_then_unlink(&dir, OsStr::new("g.jsonl"), &dir, OsStr::new("f.jsonl"))
        .unwrap_err();
    assert_eq!(err, rustix::io::Errno::EXIST);
    assert_eq!(fs::read(t.path().join("f.jsonl")).unwrap(), b"kept\n");
    crate::fs::link_then_unlink(&dir, OsStr::new("g.jsonl"), &dir, OsStr::new("h.jsonl")).unwrap();
    assert_eq!(fs::read(t.path().join("h.jsonl")).unwrap(), b"new\n");
    assert!(!t.path().join("g.jsonl").exists());
}

#[test]
fn symlink_src_is_refused_and_target_untouched() {
    let t = tempfile::tempdir().unwrap();
    let target = t.path().join("real.jsonl");
    write(&target, b"precious\n");
    let link = t.path().join("link.jsonl");
    symlink(&target, &link).unwrap();
    let adir = t.path().join("archive");
    let err = archive_file(&link, &adir).unwrap_err();
    assert!(matches!(err, ArchiveError::NotRegular { ref path } if *path == link));
    assert_eq!(fs::read(&target).unwrap(), b"precious\n");
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    // The copy path refuses it too.
    fs::create_dir_all(&adir).unwrap();
    let err = archive_file_with(&link, &adir, Strategy::Copy, |_| {}).unwrap_err();
    assert!(matches!(err, ArchiveError::NotRegular { .. }), "{err}");
    assert_eq!(entries(&adir), Vec::<String>::new());
    // And a hard link (its other name could lie outside the workspace).
    let hard = t.path().join("hard.jsonl");
    fs::hard_link(&target, &hard).unwrap();
    let err = archive_file(&hard, &adir).unwrap_err();
    assert!(
        matches!(err, ArchiveError::Fs(crate::fs::FsError::HardLinked { .. })),
        "{err}"
    );
    assert_eq!(fs::read(&target).unwrap(), b"precious\n");
    assert_eq!(entries(&adir), Vec::<String>::new());
}

#[test]
fn directory_src_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let err = archive_file(t.path(), &t.path().join("archive")).unwrap_err();
    assert!(matches!(err, ArchiveError::NotRegular { .. }), "{err}");
}

#[test]
fn symlinked_archive_dir_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let elsewhere = t.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    let adir = t.path().join("archive");
    symlink(&elsewhere, &adir).unwrap();
    let src = t.path().join("a.jsonl");
    write(&src, b"line\n");
    let err = archive_file(&src, &adir).unwrap_err();
    assert!(
        matches!(err, ArchiveError::NotRegular { ref path } if *path == adir),
        "{err}"
    );
    assert_eq!(fs::read(&src).unwrap(), b"line\n");
    assert!(entries(&elsewhere).is_empty());
}

#[test]
fn file_in_place_of_archive_dir_is_an_error() {
    let t = tempfile::tempdir().unwrap();
    let adir = t.path().join("archive");
    write(&adir, b"");
    let src = t.path().join("a.jsonl");
    write(&src, b"line\n");
    let err = archive_file(&src, &adir).unwrap_err();
    assert!(err.to_string().contains("archive"), "{err}");
    assert!(src.exists());
}

#[test]
fn file_already_in_archive_is_left_alone() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("a.jsonl");
    write(&src, b"line\n");
    assert!(archive_file(&src, t.path()).is_err());
    assert_eq!(entries(t.path()), vec!["a.jsonl"]);
}

#[test]
fn copy_path_same_fs() {
    let t = tempfile::tempdir().unwrap();
    let adir = t.path().join("archive");
    fs::create_dir(&adir).unwrap();
    // A stale .partial from a crash at the chosen name goes first.
    write(&adir.join("c.jsonl.partial"), b"half");
    let src = t.path().join("c.jsonl");
    let data = payload(300_001);
    write(&src, &data);
    let got = archive_file_with(&src, &adir, Strategy::Copy, |_| {}).unwrap();
    assert_eq!(got, Archived::Copied(adir.join("c.jsonl")));
    assert_eq!(fs::read(got.path()).unwrap(), data);
    assert_eq!(entries(&adir), vec!["c.jsonl"]);
    assert!(!src.exists());
}

/// A temp dir on /tmp and one on /dev/shm, when those are different filesystems.
fn two_filesystems(test: &str) -> Option<(tempfile::TempDir, tempfile::TempDir)> {
    let shm = Path::new("/dev/shm");
    let tmp = tempfile::tempdir().unwrap();
    let f_type = |p: &Path| rustix::fs::statfs(p).map(|s| s.f_type);
    match (f_type(tmp.path()), f_type(shm)) {
        (Ok(a), Ok(b)) if a != b => {}
        other => {
            eprintln!("skipping {test}: /tmp and /dev/shm are one filesystem ({other:?})");
            return None;
        }
    }
    let arch = tempfile::Builder::new().tempdir_in(shm).ok()?;
    Some((tmp, arch))
}

#[test]
fn cross_fs_append_during_copy_keeps_original() {
    let Some((tmp, arch)) = two_filesystems("cross_fs_append_during_copy") else {
        return;
    };
    let adir = arch.path().join("archive");
    let src = tmp.path().join("q_progress.jsonl");
    write(&src, b"1\n");
    // Plain rename first: EXDEV must lead to the copy path, which runs the hook.
    let err = archive_file_with(&src, &adir, Strategy::Rename, |stage| {
        if stage == Stage::BeforeUnlink {
            append(&src, b"2\n");
        }
    })
    .unwrap_err();
    assert!(
        matches!(err, ArchiveError::ChangedDuringCopy { .. }),
        "{err}"
    );
    assert_eq!(fs::read(&src).unwrap(), b"1\n2\n");
    assert!(entries(&adir).is_empty(), "{:?}", entries(&adir));
}

#[test]
fn cross_fs_copies() {
    let Some((tmp, arch)) = two_filesystems("cross_fs_copies") else {
        return;
    };
    let adir = arch.path().join("archive");
    let src = tmp.path().join("b_findings.jsonl");
    let data = payload(1_000_003);
    write(&src, &data);
    let got = archive_file(&src, &adir).unwrap();
    assert_eq!(got, Archived::Copied(adir.join("b_findings.jsonl")));
    assert_eq!(fs::read(got.path()).unwrap(), data);
    assert_eq!(entries(&adir), vec!["b_findings.jsonl"]);
    assert!(!src.exists());

    // A clash across filesystems is refused too (the caller appends), the first untouched.
    write(&src, b"again\n");
    let err = archive_file(&src, &adir).unwrap_err();
    assert!(matches!(err, ArchiveError::Taken { .. }), "{err}");
    assert_eq!(fs::read(adir.join("b_findings.jsonl")).unwrap(), data);
    assert_eq!(fs::read(&src).unwrap(), b"again\n");
}

fn append(p: &Path, bytes: &[u8]) {
    let mut f = OpenOptions::new().append(true).open(p).unwrap();
    f.write_all(bytes).unwrap();
}

#[test]
fn append_during_copy_keeps_original() {
    let t = tempfile::tempdir().unwrap();
    let adir = t.path().join("archive");
    let src = t.path().join("p_progress.jsonl");
    write(&src, b"{\"n\":1}\n");
    let err = archive_file_with(&src, &adir, Strategy::Copy, |stage| {
        if stage == Stage::BeforeUnlink {
            append(&src, b"{\"n\":2}\n");
        }
    })
    .unwrap_err();
    assert!(
        matches!(err, ArchiveError::ChangedDuringCopy { ref dest, .. }
            if *dest == adir.join("p_progress.jsonl")),
        "{err}"
    );
    assert_eq!(fs::read(&src).unwrap(), b"{\"n\":1}\n{\"n\":2}\n");
    assert!(entries(&adir).is_empty(), "{:?}", entries(&adir));

    // Once it settles, a retry archives everything.
    let got = archive_file_with(&src, &adir, Strategy::Copy, |_| {}).unwrap();
    assert_eq!(fs::read(got.path()).unwrap(), b"{\"n\":1}\n{\"n\":2}\n");
    assert!(!src.exists());
}

#[test]
fn write_through_old_fd_after_unlink_is_carried_over() {
    let t = tempfile::tempdir().unwrap();
    let adir = t.path().join("archive");
    let src = t.path().join("s_stream.jsonl");
    write(&src, b"a\n");
    // A writer that opened the file before the unlink and writes after it.
    let mut late = OpenOptions::new().append(true).open(&src).unwrap();
    let got = archive_file_with(&src, &adir, Strategy::Copy, |stage| {
        if stage == Stage::AfterUnlink {
            late.write_all(b"b\n").unwrap();
        }
    })
    .unwrap();
    assert_eq!(fs::read(got.path()).unwrap(), b"a\nb\n");
    assert!(!src.exists());
    assert_eq!(entries(&adir), vec!["s_stream.jsonl"]);
}

#[test]
fn source_removed_during_copy_keeps_the_copy() {
    let t = tempfile::tempdir().unwrap();
    let adir = t.path().join("archive");
    let src = t.path().join("r.jsonl");
    write(&src, b"only copy\n");
    let got = archive_file_with(&src, &adir, Strategy::Copy, |stage| {
        if stage == Stage::BeforeUnlink {
            fs::remove_file(&src).unwrap();
        }
    })
    .unwrap();
    assert_eq!(fs::read(got.path()).unwrap(), b"only copy\n");
}
