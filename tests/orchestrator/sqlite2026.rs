//! The 2026 SQLite generation: the orchestrator's own `state_db` and MCP tools write tasks and agents, agent-reaper reaps, its readers judge.

use crate::common::age_files;
use crate::harness::{Generation, World};
use serde_json::{Value, json};
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Stdio;

pub(crate) const TASK: &str = "TASK-20260427-120000-a1b2c3d4";
/// Never had a session.
pub(crate) const NEVER: &str = "fixer-120001-0a0b0c";
/// Had a session that died.
const DIED: &str = "tester-120002-1a1b1c";
/// Alive and working: must be left alone.
pub(crate) const LIVE: &str = "builder-120003-2a2b2c";

const CONFIG: &str = "settle = \"200ms\"\nzombie_grace = \"0s\"\n";

/// A task made the way the 2026 `create_real_task` + `deploy_headless_agent` make one:
/// `create_task_with_phases`, the task folders, the backward-compatible registry (empty, or
/// listing the agents as an install upgraded from the JSON generation has it), then
/// `deploy_agent_atomic` per agent; then each agent reports once through the MCP tool
/// `update_agent_progress` (progress line + `record_progress` + `update_agent_status`).
pub(crate) const CREATE_TASK: &str = r#"
import json
import real_mcp_server as mcp
from orchestrator import state_db
task, upgraded, agents = sys.argv[1], sys.argv[2] == "1", sys.argv[3:]
ws = os.path.join(BASE, task)
for sub in ("progress", "logs", "findings", "output", "handovers"):
    os.makedirs(os.path.join(ws, sub), exist_ok=True)
r = state_db.create_task_with_phases(
    workspace_base=BASE, task_id=task, workspace=ws, description="reaper test",
    phases=[{"name": "Build", "description": "build it"}, {"name": "Check"}])
assert r["success"], r
entries = [{
    "id": a, "type": a.split("-")[0], "tmux_session": "agent_" + a, "parent": "orchestrator",
    "depth": 1, "phase_index": 0, "status": "running", "started_at": "2026-04-27T12:00:00.000001",
    "progress": 0, "last_update": "2026-04-27T12:00:00.000001", "prompt": "You are a test agent.",
} for a in agents] if upgraded else []
with open(os.path.join(ws, "AGENT_REGISTRY.json"), "w") as f:
    json.dump({"task_id": task, "task_description": "reaper test", "workspace": ws,
               "status": "INITIALIZED", "agents": entries, "total_spawned": len(entries),
               "active_count": len(entries), "completed_count": 0}, f, indent=2)
for agent in agents:
    r = state_db.deploy_agent_atomic(
        workspace_base=BASE, task_id=task, agent_id=agent, agent_type=agent.split("-")[0],
        model="sonnet", parent="orchestrator", depth=1, phase_index=0,
        tmux_session="agent_" + agent, prompt_preview="You are a test agent.")
    assert r["success"], r
for agent in agents:
    r = mcp.update_agent_progress(task, agent, "working", "half way", 30)
    assert r["success"], r
print(json.dumps(state_db.get_agents_for_task(workspace_base=BASE, task_id=task)))
"#;

/// The orchestrator's readers on the DB agent-reaper wrote, optionally after its
/// `reconcile_task_workspace` (what `get_phase_status`, `check_phase_progress` and the
/// dashboard run first).
const JUDGE: &str = r#"
import json, sqlite3
from orchestrator import state_db
task, reconcile = sys.argv[1], sys.argv[2] == "1"
ws = os.path.join(BASE, task)
def agents():
    return {a["agent_id"]: a for a in state_db.get_agents_for_task(workspace_base=BASE, task_id=task)}
out = {"before_reconcile": agents()}
if reconcile:
    state_db.reconcile_task_workspace(ws)
db = state_db.get_state_db_path(BASE)
conn = sqlite3.connect(db)
conn.row_factory = sqlite3.Row
out["integrity"] = conn.execute("PRAGMA integrity_check").fetchone()[0]
out["foreign_key_violations"] = len(conn.execute("PRAGMA foreign_key_check").fetchall())
out["journal_mode"] = conn.execute("PRAGMA journal_mode").fetchone()[0]
out["task"] = dict(conn.execute("SELECT * FROM tasks WHERE task_id=?", (task,)).fetchone())
out["latest"] = {r["agent_id"]: dict(r) for r in conn.execute(
    "SELECT * FROM agent_progress_latest WHERE task_id=?", (task,))}
indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
out["indexes_kept"] = {"idx_agents_task", "idx_agents_task_phase"} <= indexes
conn.close()
out["agents"] = agents()
out["task_counts"] = state_db.get_task_counts(workspace_base=BASE, task_id=task)
out["active_counts"] = state_db.get_active_counts(workspace_base=BASE)
out["snapshot_counts"] = state_db.load_task_snapshot(workspace_base=BASE, task_id=task)["counts"]
out["phase_counts"] = state_db.load_phase_snapshot(workspace_base=BASE, task_id=task, phase_index=0)["counts"]
out["tables"] = sorted(state_db.inspect_database(BASE)["tables"])
print(json.dumps(out, default=str))
"#;

pub(crate) fn create_task(w: &World, upgraded: bool, agents: &[&str]) -> Value {
    let mut args = vec![TASK, if upgraded { "1" } else { "0" }];
    args.extend_from_slice(agents);
    w.python_json(CREATE_TASK, &args)
}

pub(crate) fn judge(w: &World, reconcile: bool) -> Value {
    w.python_json(JUDGE, &[TASK, if reconcile { "1" } else { "0" }])
}

pub(crate) fn task_file(w: &World, rel: &str) -> PathBuf {
    w.task(TASK).join(rel)
}

/// A stream log cut off mid-work: no `result` line.
pub(crate) fn write_stream(w: &World, id: &str) {
    fs::write(
        task_file(w, &format!("logs/{id}_stream.jsonl")),
        "{\"type\": \"system\", \"subtype\": \"init\"}\n{\"type\": \"assistant\"}\n",
    )
    .unwrap();
}

pub(crate) fn lines(path: &std::path::Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// The progress lines of `id`, wherever they are now (archive first, then the live file).
pub(crate) fn progress_lines(w: &World, id: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for rel in [
        format!("archive/{id}_progress.jsonl"),
        format!("progress/{id}_progress.jsonl"),
    ] {
        let path = task_file(w, &rel);
        if path.exists() {
            out.extend(lines(&path));
        }
    }
    out
}

/// What a zombie's row, progress row and progress lines must say after agent-reaper, in
/// the orchestrator's own words: `failed`, the reason in the message, progress kept.
fn assert_failed_as_the_detectors_mark_it(w: &World, judged: &Value, id: &str) {
    let row = &judged["agents"][id];
    assert_eq!(row["status"], "failed", "{id}: {row:#}");
    assert_eq!(row["progress"], 30, "{id}: progress is kept");
    assert!(row["completed_at"].is_string(), "{id}: completed_at set");
    assert!(row["last_update"].is_string());
    let latest = &judged["latest"][id];
    assert_eq!(latest["status"], "failed");
    assert_eq!(latest["progress"], 30);
    assert!(
        latest["message"]
            .as_str()
            .unwrap()
            .contains("session_not_found"),
        "{latest}"
    );
    // The progress line: the keys and order the detectors' `json.dumps` writes, last.
    let all = progress_lines(w, id);
    let last = all.last().unwrap();
    let keys: Vec<&str> = last
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        ["timestamp", "agent_id", "status", "message", "progress"]
    );
    assert_eq!(last["status"], "failed");
    assert_eq!(last["agent_id"], id);
    assert_eq!(last["progress"], 30);
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("session_not_found")
    );
    let ours = all.iter().filter(|l| l["status"] == "failed").count();
    assert_eq!(ours, 1, "{id}: exactly one terminal line: {all:#?}");
}

fn assert_db_sound(judged: &Value) {
    assert_eq!(judged["integrity"], "ok");
    assert_eq!(judged["foreign_key_violations"], 0);
    assert_eq!(judged["journal_mode"], "wal");
    assert_eq!(judged["indexes_kept"], true);
}

#[test]
fn zombies_in_a_db_only_task_are_failed_and_the_orchestrators_readers_agree() {
    let Some(w) = World::new(Generation::Sqlite2026) else {
        return;
    };
    w.write_config(CONFIG);
    let deployed = create_task(&w, false, &[NEVER, DIED, LIVE]);
    assert_eq!(deployed.as_array().unwrap().len(), 3);
    for id in [NEVER, DIED] {
        write_stream(&w, id);
    }
    w.start_session(&format!("agent_{DIED}"), "sleep 600");
    w.start_session(&format!("agent_{LIVE}"), "sleep 600");
    let status = w
        .sandbox
        .tmux()
        .args(["kill-session", "-t", &format!("=agent_{DIED}")])
        .status()
        .unwrap();
    assert!(status.success());
    let before = judge(&w, false);
    assert_db_sound(&before);
    assert_eq!(before["task_counts"]["active_agents"], 3);
    age_files(&w.task(TASK));

    let out = w.reaper_ok(&["once"]);
    assert!(out.contains(NEVER) && out.contains(DIED), "{out}");

    let after = judge(&w, true);
    assert_db_sound(&after);
    for id in [NEVER, DIED] {
        assert_failed_as_the_detectors_mark_it(&w, &after, id);
        // Its files went to the archive by their exact names.
        assert!(task_file(&w, &format!("archive/{id}_stream.jsonl")).exists());
    }
    assert_eq!(after["agents"][LIVE]["status"], "working");
    assert!(w.session_exists(&format!("agent_{LIVE}")));
    // The orchestrator's counters read the same rows.
    let tc = &after["task_counts"];
    assert_eq!(
        (
            &tc["total_agents"],
            &tc["active_agents"],
            &tc["failed_agents"]
        ),
        (&json!(3), &json!(1), &json!(2))
    );
    assert_eq!(after["active_counts"]["active_agents"], 1);
    let sc = &after["snapshot_counts"];
    assert_eq!(
        (&sc["total"], &sc["active"], &sc["terminal"]),
        (&json!(3), &json!(1), &json!(2))
    );
    let pc = &after["phase_counts"];
    assert_eq!(
        (&pc["failed"], &pc["pending"], &pc["all_done"]),
        (&json!(2), &json!(1), &json!(false))
    );
    // `update_agent_status` bumps the task's `updated_at`; so do we.
    let was = before["task"]["updated_at"].as_str().unwrap();
    let now = after["before_reconcile"][NEVER]["last_update"]
        .as_str()
        .unwrap();
    assert!(now > was, "{now} vs {was}");
    // Every table the orchestrator made is still there; we added none.
    assert_eq!(after["tables"], before["tables"]);

    // A second pass finds nothing to do and changes nothing the orchestrator reads.
    w.reaper_ok(&["once"]);
    let again = judge(&w, true);
    assert_eq!(again["agents"], after["agents"]);
    assert_eq!(again["latest"], after["latest"]);
}

/// A task in the state DB that also has an `AGENT_REGISTRY.json` listing its agents (an
/// install upgraded from the JSON generation). The orchestrator's `reconcile_task_workspace`
/// re-derives each agent's DB status from that file plus the last progress line: agent-reaper
/// must give the transition to both, or the orchestrator sets the agent back to `working`
/// and every round adds a line to the archived progress log.
#[test]
fn an_upgraded_install_keeps_the_transition_across_reconcile_and_once_rounds() {
    let Some(w) = World::new(Generation::Sqlite2026) else {
        return;
    };
    w.write_config(CONFIG);
    create_task(&w, true, &[NEVER, LIVE]);
    write_stream(&w, NEVER);
    w.start_session(&format!("agent_{LIVE}"), "sleep 600");
    age_files(&w.task(TASK));
    let registry = task_file(&w, "AGENT_REGISTRY.json");
    let archived = task_file(&w, &format!("archive/{NEVER}_progress.jsonl"));
    let mut archived_lines = Vec::new();
    for round in 0..4 {
        w.reaper_ok(&["once"]);
        let judged = judge(&w, true);
        assert_db_sound(&judged);
        // reconcile ran before these reads: it kept the transition.
        assert_eq!(
            judged["agents"][NEVER]["status"], "failed",
            "round {round}: reconcile undid it: {:#}",
            judged["agents"][NEVER]
        );
        assert_eq!(judged["agents"][LIVE]["status"], "working");
        assert_failed_as_the_detectors_mark_it(&w, &judged, NEVER);
        let reg: Value = serde_json::from_slice(&fs::read(&registry).unwrap()).unwrap();
        let entry = reg["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == NEVER)
            .unwrap();
        assert_eq!(entry["status"], "failed", "round {round}: {entry:#}");
        assert_eq!(entry["termination_reason"], "session_not_found");
        assert!(entry["completed_at"].is_string());
        assert_eq!(reg["active_count"], 1);
        // Every store agrees with the last progress line, wherever it is.
        assert_eq!(
            progress_lines(&w, NEVER).last().unwrap()["status"],
            "failed"
        );
        if archived.exists() {
            archived_lines.push(lines(&archived).len());
        }
    }
    // Archived once, then never a line more: the orchestrator's line and ours.
    assert!(!archived_lines.is_empty(), "never archived");
    assert!(
        archived_lines.iter().all(|&n| n == 2),
        "archived progress log per round: {archived_lines:?}"
    );
    assert!(!task_file(&w, &format!("progress/{NEVER}_progress.jsonl")).exists());
}

pub(crate) const DAEMON_CONFIG: &str = "settle = \"300ms\"\nreconcile_interval = \"1h\"\n\
     session_poll_interval = \"200ms\"\nzombie_grace = \"200ms\"\nlock_timeout = \"700ms\"\n";

/// The orchestrator's writers and readers run against the daemon: one agent keeps reporting
/// through `update_agent_progress` while `reconcile_task_workspace` runs after every report
/// (as `get_phase_status` and the dashboard do), and the other agent's session is gone. The
/// daemon marks it `failed` in every store; once its work is done, no reconcile sets the
/// agent back, and every line the orchestrator wrote is where it belongs, exactly once.
const WRITER: &str = r#"
import json, time
import real_mcp_server as mcp
from orchestrator import state_db
task, live, zombie, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ws = os.path.join(BASE, task)
archive = os.path.join(ws, "archive", zombie + "_progress.jsonl")
i = after = undone_after_archive = transient_undos = 0
seen_failed = False
deadline = time.monotonic() + 90
while (i < rounds or after < rounds) and time.monotonic() < deadline:
    r = mcp.update_agent_progress(task, live, "working", f"step {i}", min(i, 99))
    assert r["success"], r
    state_db.reconcile_task_workspace(ws)
    archived = os.path.exists(archive)
    status = state_db.get_agent_by_id(workspace_base=BASE, task_id=task, agent_id=zombie)["status"]
    if status == "failed":
        seen_failed = True
    elif seen_failed:
        transient_undos += 1
        if archived:
            undone_after_archive += 1
    if archived:
        after += 1
    i += 1
    if i == 1:
        print("started", flush=True)
print(json.dumps({"rounds": i, "after_archive": after, "seen_failed": seen_failed,
                  "transient_undos": transient_undos,
                  "undone_after_archive": undone_after_archive}))
"#;

#[test]
fn the_daemon_keeps_its_transition_while_the_orchestrator_writes_and_reconciles() {
    let Some(w) = World::new(Generation::Sqlite2026) else {
        return;
    };
    w.write_config(DAEMON_CONFIG);
    create_task(&w, true, &[NEVER, LIVE]);
    write_stream(&w, NEVER);
    w.start_session(&format!("agent_{LIVE}"), "sleep 600");
    // The writer first, so the daemon's transition lands while it writes and reconciles.
    let mut writer = w
        .python_cmd(WRITER, &[TASK, LIVE, NEVER, "30"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(writer.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "started");
    let daemon = w.spawn_daemon(|_| {});
    line.clear();
    out.read_line(&mut line).unwrap();
    assert!(
        writer.wait().unwrap().success(),
        "the orchestrator's writer failed"
    );
    let report: Value = serde_json::from_str(&line).unwrap();
    eprintln!("writer: {report}");
    assert_eq!(report["seen_failed"], true, "{}", daemon.log_text());
    assert!(
        report["after_archive"].as_u64().unwrap() >= 20,
        "the daemon never archived the zombie's progress log\n{}",
        daemon.log_text()
    );
    assert_eq!(report["undone_after_archive"], 0, "{report}");
    let rounds = report["rounds"].as_u64().unwrap();
    let mut daemon = daemon;
    assert!(daemon.stop().success());

    // Every line the orchestrator wrote for the live agent, once, in order.
    let live = progress_lines(&w, LIVE);
    let messages: Vec<&str> = live
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    let mut expected = vec!["half way".to_string()];
    expected.extend((0..rounds).map(|i| format!("step {i}")));
    assert_eq!(messages, expected);
    // The zombie's: the orchestrator's line, then agent-reaper's terminal line(s). A
    // reconcile that read the files just before the transition and wrote just after it can
    // undo it once (its read-then-write holds no lock); the daemon then marks it again.
    let zombie = progress_lines(&w, NEVER);
    assert_eq!(zombie[0]["message"], "half way");
    let ours = &zombie[1..];
    let undos = report["transient_undos"].as_u64().unwrap() as usize;
    assert!(!ours.is_empty() && ours.len() <= 1 + undos, "{zombie:#?}");
    assert!(ours.iter().all(|l| l["status"] == "failed"));
    let judged = judge(&w, true);
    assert_db_sound(&judged);
    assert_eq!(judged["agents"][NEVER]["status"], "failed");
    assert_eq!(judged["agents"][LIVE]["status"], "working");
    let reg: Value =
        serde_json::from_slice(&fs::read(task_file(&w, "AGENT_REGISTRY.json")).unwrap()).unwrap();
    assert_eq!(reg["agents"][0]["status"], "failed");
}
