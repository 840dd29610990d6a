//! Unit tests for retention's pure decision: by age, by total size, oldest first, never a kept file.

use super::*;

const DAY: u64 = 86_400;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1000 * DAY)
}

fn file(days_old: u64, bytes: u64, removable: bool) -> Candidate {
    Candidate {
        bytes,
        mtime: now() - Duration::from_secs(days_old * DAY),
        removable,
    }
}

fn retention(max_age_days: Option<u64>, max_total_size: Option<u64>) -> Retention {
    Retention {
        max_age: max_age_days.map(|d| Duration::from_secs(d * DAY)),
        max_total_size,
    }
}

#[test]
fn age_removes_every_removable_file_older_than_max_age_oldest_first() {
    let files = [
        file(10, 1, true),
        file(40, 1, true),
        file(31, 1, true),
        file(90, 1, false),
    ];
    let chosen = choose(&files, &retention(Some(30), None), now());
    assert_eq!(chosen, vec![(1, Reason::MaxAge), (2, Reason::MaxAge)]);
}

#[test]
fn size_removes_oldest_removable_files_until_the_base_fits() {
    // 100 in all; 60 may stay: the two oldest removable ones go (30 + 20), not the
    // oldest of all, which is kept (an active task's).
    let files = [
        file(5, 10, true),
        file(50, 30, false),
        file(9, 20, true),
        file(20, 30, true),
        file(7, 10, true),
    ];
    let chosen = choose(&files, &retention(None, Some(60)), now());
    assert_eq!(
        chosen,
        vec![(3, Reason::MaxTotalSize), (2, Reason::MaxTotalSize)]
    );
}

#[test]
fn age_counts_towards_size_and_kept_files_are_never_chosen() {
    let files = [file(40, 50, true), file(2, 50, true), file(100, 500, false)];
    // Age takes the 40-day one; the kept 500 bytes alone exceed the size limit, so the
    // rest of the removable ones go too, and nothing more can.
    let chosen = choose(&files, &retention(Some(30), Some(100)), now());
    assert_eq!(chosen, vec![(0, Reason::MaxAge), (1, Reason::MaxTotalSize)]);
    assert!(choose(&files, &Retention::default(), now()).is_empty());
    assert!(choose(&files, &retention(None, Some(600)), now()).is_empty());
}

#[test]
fn sizes_read_like_a_person_wrote_them() {
    assert_eq!(human_bytes(512), "512 B");
    assert_eq!(human_bytes(1536), "1.5 KiB");
    assert_eq!(human_bytes(10 << 30), "10.0 GiB");
}

#[test]
fn with_object_storage_only_archives_the_ledger_shows_uploaded_may_go() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    let state = tmp.path().join("state");
    let archive = base.join("TASK-1").join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    let log = archive.join("a1_stream.jsonl");
    std::fs::write(&log, b"{\"type\":\"result\"}\n").unwrap();
    let config = Config {
        workspace_bases: vec![base.clone()],
        state_dir: Some(state.clone()),
        archive_url: Some(crate::config::upload::parse_archive_url("s3://bucket/p").unwrap()),
        retention: retention(None, Some(1)),
        ..Config::default()
    };
    let task_dir = base.join("TASK-1");
    let seen = [SeenTask {
        dir: &task_dir,
        task_id: "TASK-1",
        agent_ids: vec!["a1"],
        cleaned: true,
    }];
    let later = SystemTime::now() + Duration::from_secs(DAY);

    // Not uploaded yet: the local file is the only copy, whatever the size limit says.
    let s = survey(&config, &seen, later);
    assert!(s.bases[0].remove.is_empty(), "{:?}", s.bases[0].remove);

    // Uploaded and kept local (the ledger names it as it is now): retention may drop it.
    let mut ledger = Ledger::load(&state).unwrap();
    ledger
        .record(&log, FileId::of_metadata(&std::fs::metadata(&log).unwrap()))
        .unwrap();
    let s = survey(&config, &seen, later);
    assert_eq!(s.bases[0].remove.len(), 1);
    assert_eq!(s.bases[0].remove[0].path, log);
}
