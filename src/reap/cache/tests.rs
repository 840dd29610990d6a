//! The clean-task cache: what it keeps on disk, what it refuses to trust, and what makes a
//! cached task read again.

use super::stamp::{FOLDERS, Seen, Stamp};
use super::*;
use crate::workspace::discover_tasks;
use std::fs;
use std::time::Duration;

const TASK: &str = "TASK-20261127-120000-cache0002";
const ID: &str = "done-000001-00000a";

fn registry_text(status: &str) -> String {
    format!(
        r#"{{"task_id":"{TASK}","agents":[{{"id":"{ID}","status":"{status}","auto_cleanup_result":{{"success":true}}}}],"active_count":0}}"#
    )
}

/// A task folder with one cleaned agent and nothing of it present; `aged`: every stamp an
/// hour old (a steady state), else just written (too recent to vouch alone).
fn clean_task(aged: bool) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(TASK);
    for sub in ["logs", "progress", "findings"] {
        fs::create_dir_all(dir.join(sub)).unwrap();
    }
    fs::write(dir.join("AGENT_REGISTRY.json"), registry_text("completed")).unwrap();
    if aged {
        age(&dir);
    }
    (tmp, dir)
}

fn set_mtime(path: &Path, when: SystemTime) {
    fs::File::open(path).unwrap().set_modified(when).unwrap();
}

fn age(dir: &Path) {
    let old = SystemTime::now() - Duration::from_secs(3600);
    for sub in ["logs", "progress", "findings", "AGENT_REGISTRY.json", ""] {
        set_mtime(&dir.join(sub), old);
    }
}

fn mtime(path: &Path) -> SystemTime {
    fs::metadata(path).unwrap().modified().unwrap()
}

/// The task as discovery finds it in `base` (fresh handles, as in a new pass).
fn task_in(base: &Path) -> TaskDir {
    discover_tasks(base).unwrap().remove(0)
}

fn cached(base: &Path) -> CleanTasks {
    let mut cache = CleanTasks::in_memory();
    let task = task_in(base);
    cache.confirm(&[&task], &HashMap::new(), 1 << 20, &|_| true);
    assert!(cache.get(&task.dir).is_some(), "a clean task is cached");
    cache
}

fn check(cache: &mut CleanTasks, base: &Path) -> Holds {
    cache.check(&task_in(base), &[], false)
}

fn sample(n: u64) -> CleanTask {
    let stamp = Stamp {
        dev: 7 + n,
        ino: 99,
        size: 1234,
        mtime: (1_700_000_000, 123_456_789),
    };
    CleanTask {
        registry: Seen {
            stamp: Some(stamp),
            digest: Some([n as u8; 16]),
        },
        folders: [
            Seen {
                stamp: Some(stamp),
                digest: None,
            },
            Seen::default(),
            Seen {
                stamp: Some(Stamp { ino: 5, ..stamp }),
                digest: Some([3; 16]),
            },
            Seen::default(),
        ],
        agents: 3,
        ids: "a-1\nb-2\nc-3".into(),
        sessions: vec![1, 5, u64::MAX],
    }
}

#[test]
fn the_cache_survives_a_save_and_a_load() {
    let state = tempfile::tempdir().unwrap();
    let (mut cache, problem) = CleanTasks::load(state.path());
    assert!(problem.is_none() && cache.len() == 0);
    cache.insert(PathBuf::from("/ws/TASK-a"), sample(1));
    cache.insert(PathBuf::from("/other base/TASK-b"), sample(2));
    cache.save().unwrap();

    let (loaded, problem) = CleanTasks::load(state.path());
    assert!(problem.is_none(), "{problem:?}");
    assert_eq!(loaded.tasks, cache.tasks);
    assert_eq!(
        FOLDERS.len(),
        loaded.tasks.values().next().unwrap().folders.len()
    );
}

#[test]
fn a_damaged_or_foreign_cache_file_is_never_trusted_and_is_replaced() {
    let state = tempfile::tempdir().unwrap();
    let path = state.path().join(disk::FILE_NAME);
    let mut one = HashMap::new();
    one.insert(PathBuf::from("/ws/TASK-a"), sample(1));
    let good = disk::encode(&one);
    let mut flipped = good.clone();
    flipped[40] ^= 1;
    let mut foreign = good.clone();
    foreign[16] = 9; // the version
    let damaged: [(&str, Vec<u8>); 5] = [
        ("truncated", good[..good.len() - 3].to_vec()),
        ("a flipped bit", flipped),
        ("another version", foreign),
        ("not a cache", b"{\"tasks\": []}".to_vec()),
        ("empty", Vec::new()),
    ];
    for (what, bytes) in damaged {
        fs::write(&path, &bytes).unwrap();
        let (mut cache, problem) = CleanTasks::load(state.path());
        let problem = problem.unwrap_or_else(|| panic!("{what}: accepted"));
        assert!(
            problem.to_string().contains(&path.display().to_string()),
            "{what}: {problem}"
        );
        assert_eq!(cache.len(), 0, "{what}: nothing of it is used");
        // The next save replaces it, even with nothing to keep.
        cache.save().unwrap();
        let (_, again) = CleanTasks::load(state.path());
        assert!(again.is_none(), "{what}: replaced by a good file");
    }
}

#[test]
fn a_cached_task_holds_until_a_new_log_appears_in_its_logs_folder() {
    for aged in [true, false] {
        let (tmp, dir) = clean_task(aged);
        let mut cache = cached(tmp.path());
        assert_eq!(check(&mut cache, tmp.path()), Holds::Yes, "aged {aged}");
        assert_eq!(check(&mut cache, tmp.path()), Holds::Yes, "aged {aged}");

        let logs = dir.join("logs");
        let before = mtime(&logs);
        fs::write(logs.join(format!("{ID}_stream.jsonl")), "{}\n").unwrap();
        if !aged {
            // Within the same timestamp tick the folder's mtime may not move: only its
            // names can tell.
            set_mtime(&logs, before);
        }
        assert_eq!(check(&mut cache, tmp.path()), Holds::No, "aged {aged}");
        // And a judge now finds the log: the task is not cached again.
        let task = task_in(tmp.path());
        let mut fresh = CleanTasks::in_memory();
        fresh.confirm(&[&task], &HashMap::new(), 1 << 20, &|_| true);
        assert!(fresh.get(&task.dir).is_none(), "aged {aged}");
    }
}

#[test]
fn a_new_prompt_or_a_log_folder_gone_from_the_task_folder_invalidates_it() {
    for late in ["agent_prompt_done-000001-00000a.txt", "findings"] {
        let (tmp, dir) = clean_task(true);
        let mut cache = cached(tmp.path());
        if late.ends_with(".txt") {
            fs::write(dir.join(late), "p").unwrap();
        } else {
            fs::remove_dir(dir.join("findings")).unwrap();
        }
        assert_eq!(check(&mut cache, tmp.path()), Holds::No, "{late}");
    }
}

#[test]
fn a_registry_rewrite_invalidates_it() {
    // Another size or mtime: always.
    let (tmp, dir) = clean_task(true);
    let mut cache = cached(tmp.path());
    fs::write(dir.join("AGENT_REGISTRY.json"), registry_text("terminated")).unwrap();
    assert_eq!(check(&mut cache, tmp.path()), Holds::No);

    // Same size, mtime put back, within the tick of the stamp: its bytes tell.
    let (tmp, dir) = clean_task(false);
    let registry = dir.join("AGENT_REGISTRY.json");
    let mut cache = cached(tmp.path());
    let before = mtime(&registry);
    fs::write(&registry, registry_text("completeD")).unwrap();
    set_mtime(&registry, before);
    assert_eq!(check(&mut cache, tmp.path()), Holds::No);
}

/// A registry of `READ_ALONE_ABOVE` bytes or more is parsed as it is read (its text never
/// held whole): cached the same, its digest the one a later check computes, and a
/// same-size rewrite within the tick still told by its bytes.
#[test]
fn a_large_registry_parsed_as_it_is_read_is_cached_and_a_rewrite_told_by_its_bytes() {
    let large = |status: &str| {
        let pad = "x".repeat(crate::reap::read::READ_ALONE_ABOVE as usize);
        format!(r#"{{"pad":"{pad}",{}"#, &registry_text(status)[1..])
    };
    let (tmp, dir) = clean_task(false);
    let registry = dir.join("AGENT_REGISTRY.json");
    fs::write(&registry, large("completed")).unwrap();
    let mut cache = CleanTasks::in_memory();
    cache.confirm(&[&task_in(tmp.path())], &HashMap::new(), 64 << 20, &|_| {
        true
    });
    let clean = cache.get(&dir).expect("a large clean registry is cached");
    assert_eq!((clean.agents, &*clean.ids), (1, ID));
    assert!(clean.registry.digest.is_some(), "just written: digested");
    assert_eq!(
        check(&mut cache, tmp.path()),
        Holds::Yes,
        "the same digest again"
    );

    let before = mtime(&registry);
    fs::write(&registry, large("completeD")).unwrap();
    set_mtime(&registry, before);
    assert_eq!(check(&mut cache, tmp.path()), Holds::No);
}

#[test]
fn a_live_session_of_one_of_its_agents_has_it_read() {
    let (tmp, _dir) = clean_task(true);
    let mut cache = cached(tmp.path());
    let live = [session_hash(&format!("agent_{ID}"))];
    assert_eq!(cache.check(&task_in(tmp.path()), &live, true), Holds::No);
    assert_eq!(cache.check(&task_in(tmp.path()), &[1, 2], true), Holds::Yes);
    // Sorted live sessions, many more than the task's agents: still found.
    let mut many: Vec<u64> = (0..1000).chain(live).collect();
    many.sort_unstable();
    assert_eq!(cache.check(&task_in(tmp.path()), &many, true), Holds::No);
}

#[test]
fn a_digest_is_dropped_once_its_stamp_is_old_enough_to_vouch_alone() {
    let (tmp, dir) = clean_task(false);
    let mut cache = cached(tmp.path());
    let clean = cache.get(&dir).unwrap();
    assert!(clean.registry.digest.is_some() && clean.folders[1].digest.is_some());
    age(&dir);
    // The stamps moved (aged by hand): a change, read again; a new judge, then settled.
    assert_eq!(check(&mut cache, tmp.path()), Holds::No);
    let mut cache = cached(tmp.path());
    let clean = cache.get(&dir).unwrap();
    assert!(clean.registry.digest.is_none() && clean.folders.iter().all(|f| f.digest.is_none()));
    cache.save().unwrap();
    assert_eq!(check(&mut cache, tmp.path()), Holds::Yes);
    assert!(!cache.dirty, "nothing to write back");
}

#[test]
fn session_hashes_are_stable_across_runs_and_builds() {
    // Kept on disk: a changed hash would silently mismatch (FNV-1a, known values).
    assert_eq!(session_hash(""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(session_hash("a"), 0xaf63_dc4c_8601_ec8c);
}
