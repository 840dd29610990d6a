//! Status transitions in the state DB: the rules' outcomes as rows, progress rows and progress lines.

use crate::common::shared;

use crate::common_sqlite::*;
use agent_reaper::registry::edit::Applied;
use agent_reaper::registry::sqlite::{
    DbApplied, DbChange, StateDb, append_progress_line, progress_line, terminal_message,
};
use serde_json::Value;
use std::fs;
use std::path::Path;

const NOW: &str = "2026-01-02T09:00:00.000001";

fn change(
    task: &str,
    id: &str,
    expect: &str,
    to: &'static str,
    reason: Option<&'static str>,
) -> DbChange {
    DbChange {
        task_id: task.into(),
        agent_id: id.into(),
        expect_status: expect.into(),
        set_status: Some((to, reason)),
        message: terminal_message(to, reason),
    }
}

fn open(db: &Path) -> StateDb {
    StateDb::open(db).unwrap().unwrap()
}

/// What the integrator does after a committed round: one progress line per written transition.
fn append_lines(base: &Path, changes: &[DbChange], results: &[DbApplied]) {
    for (c, r) in changes.iter().zip(results) {
        if let (Applied::Done, Some(progress), Some((status, _))) =
            (r.applied, r.progress, c.set_status)
        {
            let path = base
                .join(&c.task_id)
                .join("progress")
                .join(format!("{}_progress.jsonl", c.agent_id));
            append_progress_line(
                &path,
                &progress_line(NOW, &c.agent_id, status, &c.message, progress),
            )
            .unwrap();
        }
    }
}

#[test]
fn zombie_stale_and_completed_transitions_write_rows_and_progress() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    let db_path = build_state_db(base);
    let earlier_line = "{\"timestamp\": \"2026-01-01T10:05:00.000001\", \"agent_id\": \"fixer-100001-a1b2c3\", \"status\": \"working\", \"message\": \"half way\", \"progress\": 40}\n";
    let fixer_progress = base
        .join(TASK_A)
        .join("progress")
        .join(format!("{WORKING}_progress.jsonl"));
    fs::write(&fixer_progress, earlier_line).unwrap();
    let changes = [
        // zombie, no result line: terminated
        change(
            TASK_A,
            WORKING,
            "working",
            "terminated",
            Some("session_not_found"),
        ),
        // zombie whose stream ended in a result: completed (completed_at already set: kept)
        change(TASK_A, WORKING_DONE_AT, "working", "completed", None),
        // zombie with a NULL progress and no progress row yet
        change(TASK_A, RUNNING_BAD_FILES, "running", "failed", None),
        // stale
        change(
            TASK_B,
            STALE,
            "working",
            "terminated",
            Some("inactivity_timeout"),
        ),
    ];
    let mut db = open(&db_path);
    let results = db.apply_detailed(&changes, NOW).unwrap();
    assert!(
        results.iter().all(|r| r.applied == Applied::Done),
        "{results:?}"
    );
    assert_eq!(
        results.iter().map(|r| r.progress).collect::<Vec<_>>(),
        [Some(40), Some(100), Some(0), Some(10)]
    );
    append_lines(base, &changes, &results);
    drop(db);
    // Both tasks with a transition have `updated_at` bumped, as `update_agent_status` does.
    let conn = orchestrator_conn(&db_path);
    for task in [TASK_A, TASK_B] {
        let updated: String = conn
            .query_row(
                "SELECT updated_at FROM tasks WHERE task_id = ?1",
                [task],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(updated, NOW, "{task}");
    }
    drop(conn);

    let w = agent_row(&db_path, WORKING);
    assert_eq!(w.status.as_deref(), Some("terminated"));
    assert_eq!(w.last_update.as_deref(), Some(NOW));
    assert_eq!(
        w.completed_at.as_deref(),
        Some(NOW),
        "NULL completed_at is set"
    );
    assert_eq!(w.progress, Some(40), "progress 100 only for completed");
    let p = agent_row(&db_path, WORKING_DONE_AT);
    assert_eq!(p.status.as_deref(), Some("completed"));
    assert_eq!(
        p.completed_at.as_deref(),
        Some(EARLIER_COMPLETED_AT),
        "kept"
    );
    assert_eq!(p.progress, Some(100));
    let r = agent_row(&db_path, RUNNING_BAD_FILES);
    assert_eq!((r.status.as_deref(), r.progress), (Some("failed"), None));
    let s = agent_row(&db_path, STALE);
    assert_eq!(
        (s.status.as_deref(), s.progress),
        (Some("terminated"), Some(10))
    );

    let latest = latest_progress(&db_path, TASK_A, WORKING).unwrap();
    assert_eq!(
        latest,
        (
            NOW.to_string(),
            "terminated".to_string(),
            Some(40),
            "agent-reaper: marked terminated (session_not_found)".to_string()
        )
    );
    let inserted = latest_progress(&db_path, TASK_A, RUNNING_BAD_FILES).unwrap();
    assert_eq!((inserted.1.as_str(), inserted.2), ("failed", Some(0)));
    assert_eq!(
        latest_progress(&db_path, TASK_B, STALE).unwrap().3,
        "agent-reaper: marked terminated (inactivity_timeout)"
    );
    // Untouched rows stay as the orchestrator left them.
    let c = agent_row(&db_path, COMPLETED);
    assert_eq!(c.last_update.as_deref(), Some("2026-01-01T10:20:00.5"));
    assert_eq!(
        latest_progress(&db_path, TASK_A, COMPLETED).unwrap().3,
        "fixture progress"
    );

    // The progress file: the agent's own line kept, ours appended after it.
    let text = fs::read_to_string(&fixer_progress).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(format!("{}\n", lines[0]), earlier_line);
    let ours: Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(ours["status"], "terminated");
    assert_eq!(ours["progress"], 40);
    assert_eq!(ours["agent_id"], WORKING);
    assert_eq!(ours["timestamp"], NOW);
    // An agent that never reported gets a file with only our line.
    let fresh = base
        .join(TASK_A)
        .join("progress")
        .join(format!("{RUNNING_BAD_FILES}_progress.jsonl"));
    assert_eq!(fs::read_to_string(fresh).unwrap().lines().count(), 1);
}

#[test]
fn our_progress_line_has_the_orchestrators_key_set_and_spacing() {
    let Some(workspace) = shared::fixture_workspace() else {
        return;
    };
    let files = fixture_progress_files(&workspace);
    assert!(!files.is_empty(), "fixture progress files not found");
    let ours = progress_line(
        NOW,
        WORKING,
        "terminated",
        &terminal_message("terminated", Some("session_not_found")),
        40,
    );
    let keys = |line: &str| -> Vec<String> {
        serde_json::from_str::<serde_json::Map<String, Value>>(line)
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    let our_keys = keys(&ours);
    let mut checked = 0;
    for file in files {
        for line in fs::read_to_string(&file)
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
        {
            assert_eq!(keys(line), our_keys, "{}", file.display());
            // Same `json.dumps` separators: `", "` between items, `": "` after keys.
            assert!(
                line.starts_with("{\"timestamp\": \"") && ours.starts_with("{\"timestamp\": \"")
            );
            assert!(line.contains("\", \"agent_id\": \"") && ours.contains("\", \"agent_id\": \""));
            checked += 1;
        }
    }
    assert!(checked > 10);
    assert!(ours.ends_with("}\n") && !ours.trim_end().contains('\n'));
}

#[test]
fn a_status_that_moved_is_left_alone_and_unknown_agents_are_missing() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = build_state_db(dir.path());
    // The orchestrator moved the agent on after we looked.
    orchestrator_conn(&db_path)
        .execute(
            "UPDATE agents SET status = 'reviewing' WHERE agent_id = ?1",
            [WORKING],
        )
        .unwrap();
    let before = dump(&db_path);
    let mut db = open(&db_path);
    let changes = [
        change(
            TASK_A,
            WORKING,
            "working",
            "terminated",
            Some("session_not_found"),
        ),
        change(
            TASK_A,
            "ghost-000000-000000",
            "working",
            "terminated",
            Some("session_not_found"),
        ),
        // Right id, wrong task: not ours to touch.
        change(TASK_B, COMPLETED, "completed", "terminated", None),
        DbChange {
            set_status: None,
            ..change(TASK_A, COMPLETED, "completed", "completed", None)
        },
        DbChange {
            set_status: None,
            ..change(TASK_A, WORKING, "working", "completed", None)
        },
    ];
    let results = db.apply_detailed(&changes, NOW).unwrap();
    assert_eq!(
        results.iter().map(|r| r.applied).collect::<Vec<_>>(),
        [
            Applied::StatusMoved,
            Applied::Missing,
            Applied::Missing,
            Applied::Done,
            Applied::StatusMoved
        ]
    );
    assert!(results.iter().all(|r| r.progress.is_none()));
    drop(db);
    assert_eq!(dump(&db_path), before, "nothing written");
    assert_eq!(open(&db_path).apply(&[], NOW).unwrap(), []);
}

#[test]
fn our_reads_and_writes_leave_the_journal_mode_and_the_wal_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = build_state_db(dir.path());
    // The orchestrator keeps a connection open, so its WAL exists.
    let orch = orchestrator_conn(&db_path);
    orch.execute("UPDATE tasks SET updated_at = 'x'", [])
        .unwrap();
    let wal = agent_reaper::registry::sqlite::wal_path(&db_path);
    assert!(wal.exists());
    {
        let mut db = open(&db_path);
        db.agents_by_task().unwrap();
        db.apply(
            &[change(TASK_A, WORKING, "working", "terminated", None)],
            NOW,
        )
        .unwrap();
    }
    drop(orch);
    let mode: String = orchestrator_conn(&db_path)
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    assert_eq!(
        agent_row(&db_path, WORKING).status.as_deref(),
        Some("terminated")
    );
}

#[test]
fn a_failing_change_rolls_back_the_whole_round() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = build_state_db(dir.path());
    // The progress row cannot be written: the agents update made just before it must not stay.
    orchestrator_conn(&db_path)
        .execute_batch(
            "CREATE TRIGGER no_insert BEFORE INSERT ON agent_progress_latest \
             BEGIN SELECT RAISE(ABORT, 'refused'); END;",
        )
        .unwrap();
    let before = dump_agents(&db_path);
    let err = open(&db_path)
        .apply(
            &[change(TASK_A, WORKING, "working", "terminated", None)],
            NOW,
        )
        .unwrap_err();
    assert!(
        err.to_string().contains(&*db_path.to_string_lossy()),
        "{err}"
    );
    assert_eq!(dump_agents(&db_path), before);
}

fn dump_agents(db: &Path) -> Vec<(String, Option<String>, Option<String>)> {
    let conn = orchestrator_conn(db);
    let mut stmt = conn
        .prepare("SELECT agent_id, status, last_update FROM agents ORDER BY agent_id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn the_other_stores_are_written_while_the_db_write_lock_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = build_state_db(dir.path());
    let mut seen = None;
    let results = open(&db_path)
        .apply_detailed_then(
            &[change(TASK_A, WORKING, "working", "failed", None)],
            NOW,
            |results| {
                // An orchestrator writer (no wait) cannot get in while we write the others.
                let other = orchestrator_conn(&db_path);
                other.busy_timeout(std::time::Duration::ZERO).unwrap();
                let blocked = other
                    .execute("UPDATE tasks SET description = 'x'", [])
                    .is_err();
                // Nor does a reader see the new row before the commit.
                let status: String = other
                    .query_row(
                        "SELECT status FROM agents WHERE agent_id = ?1",
                        [WORKING],
                        |r| r.get(0),
                    )
                    .unwrap();
                seen = Some((results.to_vec(), blocked, status));
            },
        )
        .unwrap();
    let (inside, blocked, status_inside) = seen.expect("before_commit ran");
    assert_eq!(inside, results);
    assert!(blocked, "another writer got in before the commit");
    assert_eq!(status_inside, "working");
    assert_eq!(
        agent_row(&db_path, WORKING).status.as_deref(),
        Some("failed")
    );

    // A transaction that fails before it (a change that cannot apply) never runs it.
    orchestrator_conn(&db_path)
        .execute_batch(
            "CREATE TRIGGER no_insert BEFORE INSERT ON agent_progress_latest \
             BEGIN SELECT RAISE(ABORT, 'refused'); END;",
        )
        .unwrap();
    let mut ran = false;
    let err = open(&db_path).apply_detailed_then(
        &[change(TASK_A, RUNNING_BAD_FILES, "running", "failed", None)],
        NOW,
        |_| ran = true,
    );
    assert!(err.is_err());
    assert!(!ran);
}
