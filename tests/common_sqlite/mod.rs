//! Fixture generator: an orchestrator state DB (schema, WAL, its pragmas) with a few tasks and agents.
#![allow(dead_code)]

use rusqlite::{Connection, params};
use std::fs;
use std::path::{Path, PathBuf};

pub const TASK_A: &str = "TASK-20260101-100000-aaaaaaaa";
pub const TASK_B: &str = "TASK-20260101-110000-bbbbbbbb";
/// Active, tracked files set, never completed.
pub const WORKING: &str = "fixer-100001-a1b2c3";
/// Completed with `completed_at` and progress 100.
pub const COMPLETED: &str = "auditor-100002-d4e5f6";
/// Active, `tracked_files` not valid JSON, no progress row.
pub const RUNNING_BAD_FILES: &str = "tester-100003-0a0b0c";
/// Active but `completed_at` already set (a phase ended): COALESCE must keep it.
pub const WORKING_DONE_AT: &str = "planner-100004-111111";
/// In task B, quiet for hours: the stale case.
pub const STALE: &str = "builder-110001-222222";

pub const EARLIER_COMPLETED_AT: &str = "2026-01-01T10:30:00.000001";

/// The schema as the 2026 orchestrators create it (issue 6).
const SCHEMA: &str = "
CREATE TABLE tasks (
    task_id TEXT PRIMARY KEY, workspace TEXT, workspace_base TEXT, description TEXT,
    status TEXT, priority TEXT, client_cwd TEXT, created_at TEXT, updated_at TEXT,
    current_phase_index INTEGER
);
CREATE TABLE agents (
    agent_id TEXT PRIMARY KEY, task_id TEXT NOT NULL REFERENCES tasks(task_id), type TEXT,
    model TEXT, tmux_session TEXT, parent TEXT, depth INTEGER, phase_index INTEGER,
    claude_pid INTEGER, cursor_pid INTEGER, tracked_files TEXT, started_at TEXT,
    completed_at TEXT, status TEXT, progress INTEGER, last_update TEXT, prompt_preview TEXT,
    review_id TEXT, final_verdict TEXT
);
CREATE INDEX idx_agents_task ON agents(task_id);
CREATE TABLE agent_progress_latest (
    task_id TEXT, agent_id TEXT, timestamp TEXT, status TEXT, progress INTEGER, message TEXT,
    PRIMARY KEY (task_id, agent_id)
);
";

/// Opens a connection the way the orchestrator does (`timeout=10`, its pragmas).
pub fn orchestrator_conn(db: &Path) -> Connection {
    let conn = Connection::open(db).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON; \
         PRAGMA busy_timeout=10000;",
    )
    .unwrap();
    conn
}

fn tracked_files(base: &Path, task: &str, id: &str) -> String {
    let t = base.join(task);
    serde_json::json!({
        "prompt_file": t.join(format!("agent_prompt_{id}.txt")),
        "log_file": t.join("logs").join(format!("{id}_stream.jsonl")),
        "progress_file": t.join("progress").join(format!("{id}_progress.jsonl")),
        "findings_file": t.join("findings").join(format!("{id}_findings.jsonl")),
        "deploy_log": t.join("logs").join(format!("deploy_{id}.json")),
    })
    .to_string()
}

/// id, task, type, status, progress, completed_at, last_update, tracked_files.
struct FixtureAgent(
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    Option<i64>,
    Option<&'static str>,
    &'static str,
    Option<String>,
);

/// `<base>/registry/state.sqlite3` with the orchestrator's schema and no rows; returns its path.
pub fn empty_state_db(base: &Path) -> PathBuf {
    let db = base.join("registry").join("state.sqlite3");
    fs::create_dir_all(db.parent().unwrap()).unwrap();
    orchestrator_conn(&db).execute_batch(SCHEMA).unwrap();
    db
}

/// Builds `<base>/registry/state.sqlite3` plus the task folders' `progress/`; returns the DB path.
pub fn build_state_db(base: &Path) -> PathBuf {
    let db = base.join("registry").join("state.sqlite3");
    fs::create_dir_all(db.parent().unwrap()).unwrap();
    for task in [TASK_A, TASK_B] {
        fs::create_dir_all(base.join(task).join("progress")).unwrap();
    }
    let conn = orchestrator_conn(&db);
    conn.execute_batch(SCHEMA).unwrap();
    for (task, created) in [
        (TASK_A, "2026-01-01T10:00:00.123456"),
        (TASK_B, "2026-01-01T11:00:00.654321"),
    ] {
        conn.execute(
            "INSERT INTO tasks VALUES (?1, ?2, ?3, 'fixture task', 'ACTIVE', 'P1', ?4, ?5, ?5, 0)",
            params![
                task,
                base.join(task).to_str(),
                base.to_str(),
                base.parent().unwrap().to_str(),
                created
            ],
        )
        .unwrap();
    }
    let a = |id: &str| tracked_files(base, TASK_A, id);
    let rows = [
        FixtureAgent(
            WORKING,
            TASK_A,
            "fixer",
            "working",
            Some(40),
            None,
            "2026-01-01T10:05:00.000001",
            Some(a(WORKING)),
        ),
        FixtureAgent(
            COMPLETED,
            TASK_A,
            "auditor",
            "completed",
            Some(100),
            Some("2026-01-01T10:20:00.5"),
            "2026-01-01T10:20:00.5",
            Some(a(COMPLETED)),
        ),
        FixtureAgent(
            RUNNING_BAD_FILES,
            TASK_A,
            "tester",
            "running",
            None,
            None,
            "2026-01-01T10:06:00",
            Some("{not json".into()),
        ),
        FixtureAgent(
            WORKING_DONE_AT,
            TASK_A,
            "planner",
            "working",
            Some(70),
            Some(EARLIER_COMPLETED_AT),
            "2026-01-01T10:31:00",
            None,
        ),
        FixtureAgent(
            STALE,
            TASK_B,
            "builder",
            "working",
            Some(10),
            None,
            "2026-01-01T11:01:00",
            Some(tracked_files(base, TASK_B, STALE)),
        ),
    ];
    for FixtureAgent(id, task, kind, status, progress, completed_at, last_update, files) in rows {
        conn.execute(
            "INSERT INTO agents (agent_id, task_id, type, model, tmux_session, parent, depth, \
             phase_index, claude_pid, cursor_pid, tracked_files, started_at, completed_at, status, \
             progress, last_update, prompt_preview, review_id, final_verdict) \
             VALUES (?1, ?2, ?3, 'sonnet', ?4, 'orchestrator', 1, 0, NULL, NULL, ?5, ?6, ?7, ?8, \
             ?9, ?10, ?11, NULL, NULL)",
            params![
                id,
                task,
                kind,
                format!("agent_{id}"),
                files,
                "2026-01-01T10:00:01.000001",
                completed_at,
                status,
                progress,
                last_update,
                format!("You are {kind}. Agent ID: {id}")
            ],
        )
        .unwrap();
        if let Some(progress) = progress {
            conn.execute(
                "INSERT INTO agent_progress_latest VALUES (?1, ?2, ?3, ?4, ?5, 'fixture progress')",
                params![task, id, last_update, status, progress],
            )
            .unwrap();
        }
    }
    db
}

/// One agent row's columns we write, as the orchestrator would read them back.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub status: Option<String>,
    pub last_update: Option<String>,
    pub completed_at: Option<String>,
    pub progress: Option<i64>,
}

pub fn agent_row(db: &Path, id: &str) -> Row {
    orchestrator_conn(db)
        .query_row(
            "SELECT status, last_update, completed_at, progress FROM agents WHERE agent_id = ?1",
            [id],
            |r| {
                Ok(Row {
                    status: r.get(0)?,
                    last_update: r.get(1)?,
                    completed_at: r.get(2)?,
                    progress: r.get(3)?,
                })
            },
        )
        .unwrap()
}

/// `(timestamp, status, progress, message)` of an agent's `agent_progress_latest` row.
pub fn latest_progress(
    db: &Path,
    task: &str,
    id: &str,
) -> Option<(String, String, Option<i64>, String)> {
    orchestrator_conn(db)
        .query_row(
            "SELECT timestamp, status, progress, message FROM agent_progress_latest \
             WHERE task_id = ?1 AND agent_id = ?2",
            [task, id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .ok()
}

/// Every row of both tables we write, for "nothing changed" checks.
pub fn dump(db: &Path) -> Vec<String> {
    let conn = orchestrator_conn(db);
    let mut out = Vec::new();
    for sql in [
        "SELECT agent_id, status, last_update, completed_at, progress FROM agents ORDER BY agent_id",
        "SELECT task_id, agent_id, timestamp, status, progress, message FROM agent_progress_latest \
         ORDER BY task_id, agent_id",
    ] {
        let mut stmt = conn.prepare(sql).unwrap();
        let n = stmt.column_count();
        let rows = stmt
            .query_map([], |r| {
                let cells: Vec<String> = (0..n)
                    .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                    .collect();
                Ok(cells.join("|"))
            })
            .unwrap();
        out.extend(rows.map(Result::unwrap));
    }
    out
}

/// The real orchestrator's progress files under `root` (the 2025-10 fixture workspace).
pub fn fixture_progress_files(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for task in fs::read_dir(root).unwrap() {
        let progress = task.unwrap().path().join("progress");
        if let Ok(dir) = fs::read_dir(&progress) {
            files.extend(dir.map(|e| e.unwrap().path()));
        }
    }
    files.sort();
    files
}
