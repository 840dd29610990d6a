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
