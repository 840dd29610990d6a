//! The steady-state cache, in-process: a full pass skips a clean registry whose file did not
//! change, and reads it again once it does (or when the pass is scoped to it).

use super::{Mode, Reaper};
use crate::config::Config;
use crate::procs::{KillSession, Tmux, TmuxError, TmuxSnapshot};
use std::collections::HashSet;
use std::fs;
use std::time::{Duration, SystemTime};

struct NoSessions;

impl Tmux for NoSessions {
    fn snapshot(&self) -> Result<TmuxSnapshot, TmuxError> {
        Ok(TmuxSnapshot::default())
    }
    fn kill_session(&self, _: &str) -> Result<KillSession, TmuxError> {
        Ok(KillSession::AlreadyGone)
    }
}

const CLEAN: &str = r#"{"task_id":"TASK-20261127-120000-cache0001","agents":[{"id":"cache-000001-00000a","status":"completed","completed_at":"2026-11-27T10:00:00.000000","auto_cleanup_result":{"success":true}}],"active_count":0}"#;

#[test]
fn a_clean_registry_is_read_again_only_when_its_file_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let task = tmp.path().join("TASK-20261127-120000-cache0001");
    fs::create_dir_all(&task).unwrap();
    let registry = task.join("AGENT_REGISTRY.json");
    fs::write(&registry, CLEAN).unwrap();
    // Written long ago: the stamps vouch alone (a fresh one is trusted with its content
    // only, see `cache::stamp`, which this rewrite would fail).
    let old = SystemTime::now() - Duration::from_secs(3600);
    for path in [&registry, &task] {
        fs::File::open(path).unwrap().set_modified(old).unwrap();
    }
    let config = Config {
        workspace_bases: vec![tmp.path().to_path_buf()],
        ..Config::default()
    };
    let mut reaper = Reaper::new(config, Box::new(NoSessions));
    let pass = |r: &mut Reaper, scope: Option<&HashSet<_>>| {
        r.run_scoped(
            Mode::Execute {
                wait_for_settle: false,
            },
            scope,
        )
    };
    let first = pass(&mut reaper, None);
    assert_eq!(first.totals.agents_seen, 1);
    assert!(first.tasks[0].error.is_none(), "{:?}", first.tasks[0]);
    assert!(!first.tasks[0].registry_written);

    // Same inode, size and mtime, other bytes: the steady state does not look.
    let mtime = fs::metadata(&registry).unwrap().modified().unwrap();
    let garbage = "x".repeat(CLEAN.len());
    fs::write(&registry, &garbage).unwrap();
    fs::File::options()
        .append(true)
        .open(&registry)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let cached = pass(&mut reaper, None);
    assert_eq!(cached.totals.tasks, 1);
    assert_eq!(cached.totals.agents_seen, 1);
    assert!(cached.tasks.is_empty(), "{:?}", cached.tasks);
    assert_eq!(cached.totals.errors, 0, "{:?}", cached.errors);

    // A pass scoped to the task (a file event) always reads it.
    let scope: HashSet<_> = [task.clone()].into_iter().collect();
    let scoped = pass(&mut reaper, Some(&scope));
    assert!(scoped.tasks[0].error.is_some(), "{:?}", scoped.tasks[0]);

    // A new mtime: read again, and the garbage is reported.
    fs::File::options()
        .append(true)
        .open(&registry)
        .unwrap()
        .set_modified(SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    let changed = pass(&mut reaper, None);
    let error = changed.tasks[0].error.as_deref().unwrap_or("");
    assert!(error.contains("AGENT_REGISTRY.json"), "{error}");
    assert_eq!(fs::read_to_string(&registry).unwrap(), garbage);
}

/// A clean task skipped by the cache still counts for the ambiguity check: a new task
/// listing one of its ids has it read again, and the refusal names both real tasks.
#[test]
fn an_id_of_a_skipped_clean_task_listed_again_elsewhere_is_ambiguous() {
    let tmp = tempfile::tempdir().unwrap();
    let clean = tmp.path().join("TASK-20261127-120000-cache0001");
    fs::create_dir_all(&clean).unwrap();
    fs::write(clean.join("AGENT_REGISTRY.json"), CLEAN).unwrap();
    let other = tmp.path().join("TASK-20261127-120000-cache0003");
    let config = Config {
        workspace_bases: vec![tmp.path().to_path_buf()],
        ..Config::default()
    };
    let mut reaper = Reaper::new(config, Box::new(NoSessions));
    let execute = Mode::Execute {
        wait_for_settle: false,
    };
    reaper.run(execute);
    let cached = reaper.run(execute);
    assert!(cached.tasks.is_empty(), "skipped: {:?}", cached.tasks);

    fs::create_dir_all(&other).unwrap();
    fs::write(
        other.join("AGENT_REGISTRY.json"),
        r#"{"agents":[{"id":"cache-000001-00000a","status":"working"}]}"#,
    )
    .unwrap();
    let both = reaper.run(execute);
    let want = "agent id cache-000001-00000a is ambiguous (listed in 2 tasks \
                (TASK-20261127-120000-cache0001, TASK-20261127-120000-cache0003))";
    assert!(
        both.errors.iter().any(|e| e.starts_with(want)),
        "{:?}",
        both.errors
    );
    assert_eq!(both.tasks.len(), 2, "the clean task was read again");
}
