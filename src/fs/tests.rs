//! Each primitive against symlinks, hard links, FIFOs, devices, `..` names and swaps,
//! under both resolvers (openat2 and the component walk used on older kernels).

use super::*;
use std::fs as stdfs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

const BOTH: [Resolve; 2] = [Resolve::Openat2, Resolve::Walk];

/// A workspace base with a task folder, and a decoy folder outside it.
struct Fixture {
    _tmp: tempfile::TempDir,
    base: std::path::PathBuf,
    outside: std::path::PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    let outside = tmp.path().join("outside");
    stdfs::create_dir_all(base.join("TASK-1/logs")).unwrap();
    stdfs::create_dir_all(&outside).unwrap();
    stdfs::write(outside.join("secret"), "outside bytes").unwrap();
    stdfs::write(base.join("TASK-1/logs/a_stream.jsonl"), "line\n").unwrap();
    Fixture {
        _tmp: tmp,
        base,
        outside,
    }
}

fn open(f: &Fixture, r: Resolve) -> Dir {
    let d = Dir::open_base_with(&f.base, r).unwrap();
    assert_eq!(d.resolver(), r);
    d
}

fn outside_untouched(f: &Fixture) {
    assert_eq!(
        stdfs::read_to_string(f.outside.join("secret")).unwrap(),
        "outside bytes"
    );
}

/// Runs `op` on another thread and fails (instead of hanging) if it blocks.
fn within_deadline<T: Send + 'static>(op: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(op());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("operation blocked (a FIFO open must never block)")
}

#[test]
fn the_probe_picks_openat2_on_this_kernel_or_says_why_not() {
    // Kernels from 5.6 have openat2: there the probe must find it (a probe that always
    // fell back would silently trade the kernel's guarantee for the slower walk).
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut nums = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    let (major, minor) = (nums.next().unwrap(), nums.next().unwrap());
    let r = Resolve::detect();
    if (major, minor) >= (5, 6) {
        assert_eq!(r, Resolve::Openat2, "kernel {release} has openat2");
    }
}

#[test]
fn a_final_symlink_is_refused_for_every_purpose() {
    for r in BOTH {
        let f = fixture();
        symlink(
            f.outside.join("secret"),
            f.base.join("TASK-1/logs/b_stream.jsonl"),
        )
        .unwrap();
        let base = open(&f, r);
        for p in [
            Purpose::Read,
            Purpose::ReadToMove,
            Purpose::Append,
            Purpose::AppendOrCreate,
            Purpose::ReadWrite,
        ] {
            let err = base.open_file("TASK-1/logs/b_stream.jsonl", p).unwrap_err();
            assert!(matches!(err, FsError::Symlink { .. }), "{r:?} {p:?}: {err}");
            assert!(err.to_string().contains("b_stream.jsonl"), "{err}");
        }
        let meta = base
            .metadata("TASK-1/logs/b_stream.jsonl")
            .unwrap()
            .unwrap();
        assert_eq!(meta.kind, EntryKind::Symlink);
        outside_untouched(&f);
    }
}

#[test]
fn an_intermediate_symlink_is_refused() {
    for r in BOTH {
        let f = fixture();
        stdfs::write(f.outside.join("a_progress.jsonl"), "x").unwrap();
        symlink(&f.outside, f.base.join("TASK-1/progress")).unwrap();
        let base = open(&f, r);
        let task = base.open_dir("TASK-1").unwrap();
        for rel in ["progress/a_progress.jsonl", "progress"] {
            let err = task.open_file(rel, Purpose::Read).unwrap_err();
            assert!(matches!(err, FsError::Symlink { .. }), "{r:?} {rel}: {err}");
        }
        assert!(matches!(
            task.open_dir("progress").unwrap_err(),
            FsError::Symlink { .. }
        ));
        assert!(matches!(
            task.metadata("progress/a_progress.jsonl").unwrap_err(),
            FsError::Symlink { .. }
        ));
        assert!(matches!(
            task.create_dir_all_beneath("progress/sub", 0o755)
                .unwrap_err(),
            FsError::Symlink { .. }
        ));
        assert!(matches!(
            task.open_file("progress/new.jsonl", Purpose::AppendOrCreate)
                .unwrap_err(),
            FsError::Symlink { .. }
        ));
        assert!(!f.outside.join("new.jsonl").exists());
        assert!(!f.outside.join("sub").exists());
        // A symlinked task folder itself.
        symlink(&f.outside, f.base.join("TASK-2")).unwrap();
        assert!(matches!(
            base.open_dir("TASK-2").unwrap_err(),
            FsError::Symlink { .. }
        ));
        outside_untouched(&f);
    }
}

#[test]
fn names_that_leave_the_folder_are_refused() {
    for r in BOTH {
        let f = fixture();
        let base = open(&f, r);
        let task = base.open_dir("TASK-1").unwrap();
        for bad in [
            "",
            "..",
            "../TASK-1",
            "logs/../../outside",
            "/etc/passwd",
            "./x",
            "a\0b",
        ] {
            let err = task.open_file(bad, Purpose::Read).unwrap_err();
            assert!(matches!(err, FsError::BadName { .. }), "{bad:?}: {err}");
            assert!(task.open_dir(bad).is_err(), "{bad:?}");
        }
        // Renames and unlinks take one plain name only.
        let archive = task.create_dir_all_beneath("archive", 0o755).unwrap();
        assert!(matches!(
            rename_noreplace(&task, "logs/a_stream.jsonl", &archive, "x").unwrap_err(),
            FsError::BadName { .. }
        ));
        assert!(matches!(
            task.unlink("../x").unwrap_err(),
            FsError::BadName { .. }
        ));
    }
}

#[test]
fn hard_links_are_refused_where_the_file_would_change() {
    for r in BOTH {
        let f = fixture();
        stdfs::hard_link(f.outside.join("secret"), f.base.join("TASK-1/logs/h.jsonl")).unwrap();
        let task = open(&f, r).open_dir("TASK-1").unwrap();
        for p in [Purpose::ReadToMove, Purpose::Append, Purpose::ReadWrite] {
            let err = task.open_file("logs/h.jsonl", p).unwrap_err();
            assert!(
                matches!(err, FsError::HardLinked { links: 2, .. }),
                "{r:?} {p:?}: {err}"
            );
        }
        // Reading is harmless and allowed.
        let file = task.open_file("logs/h.jsonl", Purpose::Read).unwrap();
        assert_eq!(read_capped(&file, 100).unwrap(), b"outside bytes");
        outside_untouched(&f);
    }
}

#[test]
fn a_fifo_never_blocks_and_is_refused() {
    for r in BOTH {
        let f = fixture();
        let fifo = f.base.join("TASK-1/logs/f_stream.jsonl");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let base = f.base.clone();
        let results = within_deadline(move || {
            let task = Dir::open_base_with(&base, r)
                .unwrap()
                .open_dir("TASK-1")
                .unwrap();
            [Purpose::Read, Purpose::Append, Purpose::ReadWrite]
                .map(|p| task.open_file("logs/f_stream.jsonl", p).map(|_| ()))
        });
        for res in results {
            let err = res.unwrap_err();
            assert!(matches!(err, FsError::NotRegular { .. }), "{r:?}: {err}");
        }
        let task = open(&f, r).open_dir("TASK-1").unwrap();
        assert_eq!(
            task.metadata("logs/f_stream.jsonl").unwrap().unwrap().kind,
            EntryKind::Fifo
        );
    }
}

#[test]
fn devices_and_folders_are_refused() {
    let f = fixture();
    let task = open(&f, Resolve::detect()).open_dir("TASK-1").unwrap();
    let err = task.open_file("logs", Purpose::Read).unwrap_err();
    assert!(matches!(err, FsError::NotRegular { .. }), "{err}");
    // A device node needs CAP_MKNOD; agents do not have it, root tests do.
    let dev = f.base.join("TASK-1/logs/z_stream.jsonl");
    let made = rustix::fs::mknodat(
        rustix::fs::CWD,
        &dev,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 5), // /dev/zero
    );
    if made.is_err() {
        println!("skipped the device case: mknod needs CAP_MKNOD");
        return;
    }
    let err = task
        .open_file("logs/z_stream.jsonl", Purpose::Read)
        .unwrap_err();
    assert!(
        matches!(
            err,
            FsError::NotRegular {
                kind: "character device",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_handle_keeps_acting_on_the_folder_it_opened_when_the_name_is_swapped() {
    for r in BOTH {
        let f = fixture();
        let task = open(&f, r).open_dir("TASK-1").unwrap();
        // The task folder is moved aside and a symlink to the outside takes its name.
        stdfs::rename(f.base.join("TASK-1"), f.base.join("moved")).unwrap();
        symlink(&f.outside, f.base.join("TASK-1")).unwrap();
        write_new_atomically(&task, "secret", b"daemon bytes", 0o644).unwrap();
        task.create_dir_all_beneath("archive", 0o755).unwrap();
        outside_untouched(&f);
        assert!(!f.outside.join("archive").exists());
        assert_eq!(
            stdfs::read_to_string(f.base.join("moved/secret")).unwrap(),
            "daemon bytes"
        );
    }
}

#[test]
fn writing_a_new_file_replaces_a_planted_symlink_never_its_target() {
    let f = fixture();
    let task = open(&f, Resolve::detect()).open_dir("TASK-1").unwrap();
    symlink(
        f.outside.join("secret"),
        f.base.join("TASK-1/.daemon_health"),
    )
    .unwrap();
    write_new_atomically(&task, ".daemon_health", b"123\n", 0o644).unwrap();
    outside_untouched(&f);
    let meta = stdfs::symlink_metadata(f.base.join("TASK-1/.daemon_health")).unwrap();
    assert!(meta.file_type().is_file());
    assert_eq!(
        stdfs::read(f.base.join("TASK-1/.daemon_health")).unwrap(),
        b"123\n"
    );
    // No temporary file is left behind.
    let names: Vec<_> = task.list().unwrap().into_iter().map(|l| l.name).collect();
    assert_eq!(names.len(), 2, "{names:?}"); // logs, .daemon_health
    // create_new never opens through a symlink either.
    symlink(f.outside.join("secret"), f.base.join("TASK-1/x.partial")).unwrap();
    assert!(matches!(
        task.create_new("x.partial", 0o644).unwrap_err(),
        FsError::Exists { .. }
    ));
    outside_untouched(&f);
}

#[test]
fn rename_never_replaces() {
    for r in BOTH {
        let f = fixture();
        let task = open(&f, r).open_dir("TASK-1").unwrap();
        let logs = task.open_dir("logs").unwrap();
        let archive = task.create_dir_all_beneath("archive", 0o755).unwrap();
        stdfs::write(f.base.join("TASK-1/archive/a_stream.jsonl"), "first").unwrap();
        let err =
            rename_noreplace(&logs, "a_stream.jsonl", &archive, "a_stream.jsonl").unwrap_err();
        assert!(matches!(err, FsError::Exists { .. }), "{err}");
        rename_noreplace(&logs, "a_stream.jsonl", &archive, "b_stream.jsonl").unwrap();
        assert_eq!(
            stdfs::read_to_string(f.base.join("TASK-1/archive/a_stream.jsonl")).unwrap(),
            "first"
        );
        assert_eq!(
            stdfs::read_to_string(f.base.join("TASK-1/archive/b_stream.jsonl")).unwrap(),
            "line\n"
        );
    }
}

#[test]
fn unlink_if_same_never_deletes_a_file_swapped_in_after_the_check() {
    let f = fixture();
    let task = open(&f, Resolve::detect()).open_dir("TASK-1").unwrap();
    stdfs::write(f.base.join("TASK-1/agent_prompt_a.txt"), "prompt").unwrap();
    let checked = task
        .open_file("agent_prompt_a.txt", Purpose::ReadToMove)
        .unwrap()
        .id;
    // Swapped between the check and the unlink (the original kept aside, so its inode
    // number cannot be reused by the newcomer).
    stdfs::rename(
        f.base.join("TASK-1/agent_prompt_a.txt"),
        f.base.join("TASK-1/aside"),
    )
    .unwrap();
    stdfs::write(f.base.join("TASK-1/agent_prompt_a.txt"), "someone else's").unwrap();
    let err = unlink_if_same(&task, "agent_prompt_a.txt", &checked, Compare::Inode).unwrap_err();
    assert!(matches!(err, FsError::Changed { .. }), "{err}");
    assert_eq!(
        stdfs::read_to_string(f.base.join("TASK-1/agent_prompt_a.txt")).unwrap(),
        "someone else's"
    );
    // Ours: deleted, and nothing else left in the folder.
    let now = task
        .open_file("agent_prompt_a.txt", Purpose::ReadToMove)
        .unwrap()
        .id;
    assert_eq!(
        unlink_if_same(&task, "agent_prompt_a.txt", &now, Compare::Inode).unwrap(),
        UnlinkOutcome::Unlinked
    );
    assert_eq!(
        unlink_if_same(&task, "agent_prompt_a.txt", &now, Compare::Inode).unwrap(),
        UnlinkOutcome::Gone
    );
    let mut names: Vec<_> = task.list().unwrap().into_iter().map(|l| l.name).collect();
    names.sort();
    assert_eq!(names, ["aside", "logs"]);
}

#[test]
fn unlink_regular_deletes_only_a_regular_file_with_one_link() {
    let f = fixture();
    let task = open(&f, Resolve::detect()).open_dir("TASK-1").unwrap();
    let entries = |task: &Dir| {
        let mut names: Vec<_> = task.list().unwrap().into_iter().map(|l| l.name).collect();
        names.sort();
        names
    };
    // A hard link to a file elsewhere: refused, both names kept, nothing left aside.
    stdfs::write(f.base.join("TASK-1/elsewhere"), "kept").unwrap();
    stdfs::hard_link(
        f.base.join("TASK-1/elsewhere"),
        f.base.join("TASK-1/agent_prompt_a.txt"),
    )
    .unwrap();
    let err = unlink_regular(&task, "agent_prompt_a.txt").unwrap_err();
    assert!(matches!(err, FsError::HardLinked { links: 2, .. }), "{err}");
    assert_eq!(
        stdfs::read_to_string(f.base.join("TASK-1/agent_prompt_a.txt")).unwrap(),
        "kept"
    );
    stdfs::remove_file(f.base.join("TASK-1/agent_prompt_a.txt")).unwrap();
    // A symlink to an outside file: refused, the link and its target kept.
    symlink(
        f.outside.join("secret"),
        f.base.join("TASK-1/agent_prompt_a.txt"),
    )
    .unwrap();
    let err = unlink_regular(&task, "agent_prompt_a.txt").unwrap_err();
    assert!(matches!(err, FsError::Symlink { .. }), "{err}");
    assert!(
        stdfs::symlink_metadata(f.base.join("TASK-1/agent_prompt_a.txt"))
            .unwrap()
            .is_symlink()
    );
    assert_eq!(
        stdfs::read_to_string(f.outside.join("secret")).unwrap(),
        "outside bytes"
    );
    stdfs::remove_file(f.base.join("TASK-1/agent_prompt_a.txt")).unwrap();
    // A folder (or FIFO) swapped in for the prompt: refused, left whole.
    stdfs::create_dir(f.base.join("TASK-1/agent_prompt_a.txt")).unwrap();
    stdfs::write(f.base.join("TASK-1/agent_prompt_a.txt/inner"), "x").unwrap();
    let err = unlink_regular(&task, "agent_prompt_a.txt").unwrap_err();
    assert!(matches!(err, FsError::NotRegular { .. }), "{err}");
    assert!(f.base.join("TASK-1/agent_prompt_a.txt/inner").exists());
    stdfs::remove_dir_all(f.base.join("TASK-1/agent_prompt_a.txt")).unwrap();
    assert_eq!(entries(&task), ["elsewhere", "logs"]);
    // A plain prompt: deleted; asked again, nothing had the name.
    stdfs::write(f.base.join("TASK-1/agent_prompt_a.txt"), "prompt").unwrap();
    assert_eq!(
        unlink_regular(&task, "agent_prompt_a.txt").unwrap(),
        UnlinkOutcome::Unlinked
    );
    assert_eq!(
        unlink_regular(&task, "agent_prompt_a.txt").unwrap(),
        UnlinkOutcome::Gone
    );
    assert_eq!(entries(&task), ["elsewhere", "logs"]);
    assert!(unlink_regular(&task, "../secret").is_err());
    assert_eq!(
        stdfs::read_to_string(f.outside.join("secret")).unwrap(),
        "outside bytes"
    );
}

#[test]
fn unlink_if_unchanged_keeps_a_file_that_grew() {
    let f = fixture();
    let logs = open(&f, Resolve::detect()).open_dir("TASK-1/logs").unwrap();
    let checked = logs
        .open_file("a_stream.jsonl", Purpose::ReadToMove)
        .unwrap()
        .id;
    let mut w = stdfs::OpenOptions::new()
        .append(true)
        .open(f.base.join("TASK-1/logs/a_stream.jsonl"))
        .unwrap();
    std::io::Write::write_all(&mut w, b"more\n").unwrap();
    let err = unlink_if_same(&logs, "a_stream.jsonl", &checked, Compare::Unchanged).unwrap_err();
    assert!(matches!(err, FsError::Changed { .. }), "{err}");
    assert_eq!(
        stdfs::read_to_string(f.base.join("TASK-1/logs/a_stream.jsonl")).unwrap(),
        "line\nmore\n"
    );
}

#[test]
fn reads_are_bounded() {
    let f = fixture();
    let p = f.base.join("TASK-1/logs/big.jsonl");
    let body: Vec<u8> = (0..10_000u32)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    stdfs::write(&p, &body).unwrap();
    let task = open(&f, Resolve::detect()).open_dir("TASK-1").unwrap();
    let file = task.open_file("logs/big.jsonl", Purpose::Read).unwrap();
    let err = read_capped(&file, 100).unwrap_err();
    assert!(matches!(err, FsError::TooLarge { max: 100, .. }), "{err}");
    assert_eq!(read_capped(&file, body.len() as u64).unwrap(), body);

    // Backwards in chunks: offsets descend, the bytes join up to the file's tail.
    let mut chunks = tail_chunks_backwards(&file.file, 1000, 4500).unwrap();
    let mut got = Vec::new();
    let mut last_off = u64::MAX;
    for c in chunks.by_ref() {
        let (off, bytes) = c.unwrap();
        assert!(off < last_off);
        last_off = off;
        got.splice(0..0, bytes);
    }
    assert_eq!(got.len(), 4500);
    assert_eq!(got, body[body.len() - 4500..]);
    assert!(!chunks.reached_start());
    let all: Vec<u8> = tail_chunks_backwards(&file.file, 4096, 16 << 20)
        .unwrap()
        .map(|c| c.unwrap().1)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .flatten()
        .collect();
    assert_eq!(all, body);
}

#[test]
fn discovery_lists_names_with_their_types() {
    let f = fixture();
    symlink(&f.outside, f.base.join("TASK-2")).unwrap();
    let mut listed = open(&f, Resolve::detect()).list().unwrap();
    listed.sort_by(|a, b| a.name.cmp(&b.name));
    let kinds: Vec<_> = listed
        .iter()
        .map(|l| (l.name.to_str().unwrap(), l.kind))
        .collect();
    assert_eq!(
        kinds,
        [("TASK-1", EntryKind::Dir), ("TASK-2", EntryKind::Symlink)]
    );
}

#[test]
fn a_missing_file_is_not_found_not_a_refusal() {
    for r in BOTH {
        let f = fixture();
        let task = open(&f, r).open_dir("TASK-1").unwrap();
        let err = task
            .open_file("logs/none.jsonl", Purpose::Read)
            .unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert!(!err.is_refusal());
        assert!(task.metadata("nothing/here").unwrap().is_none());
        let _ = Path::new("");
    }
}
