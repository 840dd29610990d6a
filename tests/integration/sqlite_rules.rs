//! `once` on a workspace whose agents live in the orchestrator's SQLite state DB.

use crate::common::*;
use crate::common_sqlite::*;
use serde_json::Value;
use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The agent's progress lines, wherever they are now (live, or archived).
fn progress_lines(s: &Sandbox, task: &str, id: &str) -> Vec<Value> {
    let live = s.task(task).join(format!("progress/{id}_progress.jsonl"));
    let archived = s.task(task).join(format!("archive/{id}_progress.jsonl"));
    let path = if live.exists() { live } else { archived };
    fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn db_backed_agents_go_through_the_rules() {
    let s = Sandbox::new();
    s.write_config("settle = \"200ms\"\nterm_grace = [\"200ms\"]\nmax_inactivity = \"1s\"\n");
    let db = build_state_db(&s.base());
    // The completed agent still has its session; the stale one too, idle.
    s.start_session(&format!("agent_{COMPLETED}"), "sleep 600");
    s.start_session(&format!("agent_{STALE}"), "sleep 600");
    let plan: Value = serde_json::from_str(&s.run_ok(&["plan", "--json"])).unwrap();
    assert!(
        plan["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["backend"] == "sqlite"),
        "{plan:#}"
    );
    assert!(wait_until(Duration::from_secs(10), || {
        let plan: Value = serde_json::from_str(&s.run_ok(&["plan", "--json"])).unwrap();
        plan["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|t| t["agents"].as_array().unwrap())
            .any(|a| a["id"] == STALE && a["class"] == "stale")
    }));
    let before_completed_at = agent_row(&db, WORKING_DONE_AT).completed_at;
    s.run_ok(&["once"]);

    // Zombie: working, no session: `failed`, as the 2026 orchestrators' own detectors mark it.
    let row = agent_row(&db, WORKING);
    assert_eq!(row.status.as_deref(), Some("failed"));
    let (_, status, _, message) = latest_progress(&db, TASK_A, WORKING).unwrap();
    assert_eq!(status, "failed");
    assert!(message.contains("session_not_found"), "{message}");
    // The terminal progress line went to the agent's progress log.
    let last = progress_lines(&s, TASK_A, WORKING).pop().unwrap();
    assert_eq!(last["status"], "failed");
    assert_eq!(last["agent_id"], WORKING);
    // completed_at that was already set is kept.
    assert_eq!(
        agent_row(&db, WORKING_DONE_AT).completed_at,
        before_completed_at
    );
    // Terminal with a live session: stopped.
    assert!(!s.session_exists(&format!("agent_{COMPLETED}")));
    assert_eq!(
        agent_row(&db, COMPLETED).status.as_deref(),
        Some("completed")
    );
    // Stale: stopped and marked failed.
    assert!(!s.session_exists(&format!("agent_{STALE}")));
    let (_, status, _, message) = latest_progress(&db, TASK_B, STALE).unwrap();
    assert_eq!(status, "failed");
    assert!(message.contains("inactivity_timeout"), "{message}");

    // The next pass archives that line (it settled); after that, a pass changes nothing.
    s.run_ok(&["once"]);
    let last = progress_lines(&s, TASK_A, WORKING).pop().unwrap();
    assert_eq!(last["status"], "failed");
    assert!(
        !s.task(TASK_A)
            .join(format!("progress/{WORKING}_progress.jsonl"))
            .exists()
    );
    let rows = dump(&db);
    let tree = snapshot_tree(&s.base().join(TASK_A));
    s.run_ok(&["once"]);
    assert_eq!(dump(&db), rows);
    assert_eq!(snapshot_tree(&s.base().join(TASK_A)), tree);
}

const HOLDER: &str = r#"
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], timeout=10, isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
"#;

#[test]
fn a_writer_holding_the_db_past_the_timeout_skips_the_round_and_nothing_is_written() {
    let s = Sandbox::new();
    s.write_config("settle = \"200ms\"\nlock_timeout = \"300ms\"\n");
    let db = build_state_db(&s.base());
    let mut holder = Command::new("python3")
        .arg("-c")
        .arg(HOLDER)
        .arg(&db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "locked");
    let rows = dump(&db);
    let out = s.run_ok(&["once"]);
    let busy = out.matches("locked").count() + out.matches("busy").count();
    assert!(busy >= 1, "{out}");
    assert_eq!(dump(&db), rows, "written while another writer held the DB");
    // The writer lets go: the next round does the work.
    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());
    s.run_ok(&["once"]);
    assert_eq!(agent_row(&db, WORKING).status.as_deref(), Some("failed"));
}

#[test]
fn a_corrupt_db_is_reported_never_rewritten_and_json_tasks_go_on() {
    let s = Sandbox::new();
    let db = s.base().join("registry/state.sqlite3");
    fs::create_dir_all(db.parent().unwrap()).unwrap();
    let junk: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(&db, &junk).unwrap();
    let id = "json-120000-abcdef";
    write_task(
        &s.base(),
        "TASK-20261127-120000-0000dddd",
        serde_json::json!([agent_entry(id, "completed")]),
    );
    let out = s.run_ok(&["once"]);
    assert!(out.contains("state.sqlite3"), "{out}");
    assert_eq!(fs::read(&db).unwrap(), junk);
    let reg = read_json(
        &s.task("TASK-20261127-120000-0000dddd")
            .join("AGENT_REGISTRY.json"),
    );
    assert_eq!(reg["agents"][0]["auto_cleanup_result"]["success"], true);
}

#[test]
fn bases_listed_in_the_cross_project_index_are_cleaned_when_asked() {
    let s = Sandbox::new();
    let home = s.dir.path().join("home");
    let other = s.dir.path().join("other-ws");
    fs::create_dir_all(home.join(".claude-orchestrator")).unwrap();
    let index = home.join(".claude-orchestrator/global_registry.sqlite3");
    let conn = rusqlite::Connection::open(&index).unwrap();
    conn.execute_batch(
        "CREATE TABLE known_workspaces (workspace_base TEXT PRIMARY KEY, last_seen TEXT, is_active INTEGER);",
    )
    .unwrap();
    conn.execute(
        "INSERT INTO known_workspaces VALUES (?1, '2026-11-27T10:00:00', 1)",
        [other.to_str().unwrap()],
    )
    .unwrap();
    drop(conn);
    write_task(
        &other,
        "TASK-20261127-120000-0000eeee",
        serde_json::json!([agent_entry("indexed-120000-abcdef", "working")]),
    );
    let plan = |config: &str| -> Value {
        s.write_config(config);
        let out = s
            .cmd(&["plan", "--json"])
            .env("HOME", &home)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(plan("")["totals"]["tasks"], 0);
    let found = plan("discover_workspaces = true\n");
    assert_eq!(found["totals"]["tasks"], 1, "{found:#}");
    assert_eq!(
        found["tasks"][0]["agents"][0]["id"],
        "indexed-120000-abcdef"
    );
}

#[test]
fn the_daemon_sees_db_changes_through_the_wal() {
    let s = Sandbox::new();
    s.write_config(
        "settle = \"200ms\"\nzombie_grace = \"1h\"\nreconcile_interval = \"1h\"\nsession_poll_interval = \"1h\"\n",
    );
    let db = build_state_db(&s.base());
    let id = "fresh-100009-abcdef";
    let now = Command::new("date")
        .arg("+%Y-%m-%dT%H:%M:%S.000000")
        .output()
        .unwrap();
    let now = String::from_utf8(now.stdout).unwrap().trim().to_string();
    orchestrator_conn(&db)
        .execute(
            "INSERT INTO agents (agent_id, task_id, type, tmux_session, parent, depth, status, \
             progress, started_at, last_update) VALUES (?1, ?2, 'fresh', ?3, 'orchestrator', 1, \
             'working', 10, ?4, ?4)",
            rusqlite::params![id, TASK_A, format!("agent_{id}"), now],
        )
        .unwrap();
    let log = s.task(TASK_A).join(format!("progress/{id}_progress.jsonl"));
    fs::write(&log, "{\"progress\": 10}\n").unwrap();
    let mut daemon = s
        .cmd(&["run"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let health = s.base().join(".daemon_health");
    let started = wait_until(Duration::from_secs(20), || health.exists());
    // Alive as far as anyone can tell: it waits (zombie_grace is an hour).
    let kept = log.exists();
    // The orchestrator marks it completed in the DB; only the -wal changes on disk.
    orchestrator_conn(&db)
        .execute(
            "UPDATE agents SET status = 'completed', completed_at = ?2 WHERE agent_id = ?1",
            rusqlite::params![id, now],
        )
        .unwrap();
    let archived = s.task(TASK_A).join(format!("archive/{id}_progress.jsonl"));
    let done = wait_until(Duration::from_secs(20), || {
        archived.exists() && !log.exists()
    });
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert!(started, "daemon never became ready");
    assert!(kept, "archived before the flip");
    assert!(done, "the DB change did not wake the daemon");
}
