//! Reading the orchestrator's state DB: rows as registry entries, and the files we refuse.

use crate::common_sqlite::*;
use agent_reaper::registry::sqlite::{
    SqliteError, StateDb, default_index_path, discover_bases, wal_path,
};
use rusqlite::params;
use serde_json::json;
use std::fs;
use std::path::Path;

fn agent<'a>(
    map: &'a std::collections::BTreeMap<String, Vec<serde_json::Value>>,
    id: &str,
) -> &'a serde_json::Value {
    map.values()
        .flatten()
        .find(|a| a["id"] == id)
        .unwrap_or_else(|| panic!("{id} not read"))
}

#[test]
fn rows_read_as_registry_entries_by_task() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = build_state_db(dir.path());
    let db = StateDb::open(&db_path).unwrap().unwrap();
    assert_eq!(db.journal_mode(), "wal");
    let map = db.agents_by_task().unwrap();
    assert_eq!(map.keys().collect::<Vec<_>>(), [TASK_A, TASK_B]);
    let ids: Vec<_> = map[TASK_A]
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [WORKING, COMPLETED, RUNNING_BAD_FILES, WORKING_DONE_AT]
    );

    let w = agent(&map, WORKING);
    let keys: Vec<_> = w.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "id",
            "type",
            "model",
            "tmux_session",
            "parent",
            "depth",
            "phase_index",
            "tracked_files",
            "started_at",
            "status",
            "progress",
            "last_update",
            "prompt"
        ]
    );
    assert_eq!(w["status"], "working");
    assert_eq!(w["tmux_session"], format!("agent_{WORKING}"));
    assert_eq!(w["depth"], 1);
    assert_eq!(w["progress"], 40);
    assert!(w.get("completed_at").is_none(), "NULL columns are left out");
    assert!(w.get("claude_pid").is_none() && w.get("task_id").is_none());
    let log = dir
        .path()
        .join(TASK_A)
        .join("logs")
        .join(format!("{WORKING}_stream.jsonl"));
    assert_eq!(w["tracked_files"]["log_file"], json!(log));
    assert_eq!(w["prompt"], format!("You are fixer. Agent ID: {WORKING}"));

    let c = agent(&map, COMPLETED);
    assert_eq!(
        (&c["status"], &c["progress"]),
        (&json!("completed"), &json!(100))
    );
    assert_eq!(c["completed_at"], "2026-01-01T10:20:00.5");
    let bad = agent(&map, RUNNING_BAD_FILES);
    assert!(bad.get("tracked_files").is_none() && bad.get("progress").is_none());
    assert_eq!(map[TASK_B].len(), 1);
}

#[test]
fn unknown_columns_are_kept_and_an_empty_schema_reads_empty() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = build_state_db(dir.path());
    let conn = orchestrator_conn(&db_path);
    conn.execute_batch("ALTER TABLE agents ADD COLUMN zz_future TEXT")
        .unwrap();
    conn.execute(
        "UPDATE agents SET zz_future = 'x' WHERE agent_id = ?1",
        params![WORKING],
    )
    .unwrap();
    drop(conn);
    let map = StateDb::open(&db_path)
        .unwrap()
        .unwrap()
        .agents_by_task()
        .unwrap();
    assert_eq!(agent(&map, WORKING)["zz_future"], "x");

    // A DB the orchestrator has created but not yet given its tables.
    let fresh = dir.path().join("fresh.sqlite3");
    orchestrator_conn(&fresh)
        .execute_batch("CREATE TABLE t(x)")
        .unwrap();
    assert!(
        StateDb::open(&fresh)
            .unwrap()
            .unwrap()
            .agents_by_task()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_missing_db_is_none_and_never_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry").join("state.sqlite3");
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    assert!(StateDb::open(&path).unwrap().is_none());
    assert!(!path.exists());
}

#[test]
fn a_symlinked_db_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let real = build_state_db(dir.path());
    let link = dir.path().join("link.sqlite3");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let err = StateDb::open(&link).unwrap_err();
    assert!(matches!(err, SqliteError::Symlink { .. }), "{err}");
    assert!(err.to_string().contains(&*link.to_string_lossy()));
}

fn assert_corrupt_and_untouched(path: &Path) {
    let before = fs::read(path).unwrap();
    let result = StateDb::open(path).and_then(|db| match db {
        Some(db) => db.agents_by_task().map(|_| ()),
        None => panic!("file exists"),
    });
    let err = result.expect_err("a corrupt DB must not read");
    eprintln!("reported: {err}");
    assert!(matches!(err, SqliteError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
    assert!(
        fs::read(path).unwrap() == before,
        "the corrupt file was changed"
    );
}

#[test]
fn random_bytes_are_reported_and_left_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite3");
    // Deterministic noise (xorshift): no sqlite header anywhere.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..8192)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    fs::write(&path, noise).unwrap();
    assert_corrupt_and_untouched(&path);
    assert!(!wal_path(&path).exists(), "nothing created beside a non-DB");
    // An empty file is a DB the orchestrator has not written yet: nothing to read, nothing to report.
    fs::write(&path, "").unwrap();
    assert!(StateDb::open(&path).unwrap().is_none());
    assert_eq!(fs::metadata(&path).unwrap().len(), 0);
}

#[test]
fn a_truncated_db_is_reported_and_left_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = build_state_db(dir.path());
    // Grow it past a few pages so the cut lands inside the agents table.
    let conn = orchestrator_conn(&db_path);
    for i in 0..300 {
        conn.execute(
            "INSERT INTO agents (agent_id, task_id, status, prompt_preview) VALUES (?1, ?2, 'completed', ?3)",
            params![format!("filler-{i:06}-abcdef"), TASK_B, "p".repeat(200)],
        )
        .unwrap();
    }
    drop(conn);
    let full = fs::read(&db_path).unwrap();
    assert!(full.len() > 16 * 4096, "fixture too small: {}", full.len());
    fs::write(&db_path, &full[..full.len() / 2]).unwrap();
    assert_corrupt_and_untouched(&db_path);
}

#[test]
fn bases_come_from_the_index_when_active() {
    let dir = tempfile::tempdir().unwrap();
    let index = default_index_path(dir.path());
    assert!(
        discover_bases(&index).unwrap().is_empty(),
        "no index, no bases"
    );
    fs::create_dir_all(index.parent().unwrap()).unwrap();
    let conn = orchestrator_conn(&index);
    conn.execute_batch(
        "CREATE TABLE known_workspaces (workspace_base TEXT PRIMARY KEY, project TEXT, \
         last_seen TEXT, is_active INTEGER);
         INSERT INTO known_workspaces VALUES ('/srv/a/.agent-workspace', 'a', 'x', 1);
         INSERT INTO known_workspaces VALUES ('/srv/b/.agent-workspace', 'b', 'x', 0);
         INSERT INTO known_workspaces VALUES ('/srv/c/.agent-workspace', 'c', 'x', 'true');
         INSERT INTO known_workspaces VALUES ('relative/base', 'd', 'x', 1);
         INSERT INTO known_workspaces VALUES ('/srv/e/.agent-workspace', 'e', 'x', NULL);",
    )
    .unwrap();
    // The orchestrator's close checkpoints its WAL into the file: compare after that.
    drop(conn);
    let before = fs::read(&index).unwrap();
    let bases = discover_bases(&index).unwrap();
    assert_eq!(
        bases,
        [
            Path::new("/srv/a/.agent-workspace"),
            Path::new("/srv/c/.agent-workspace")
        ]
    );
    assert!(fs::read(&index).unwrap() == before, "the index was written");
}
