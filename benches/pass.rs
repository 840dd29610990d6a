//! Bench: one `agent-reaper once` pass over large finished workspaces. Prints a table.
//!
//! `cargo bench --bench pass` (set `REAPER_BENCH_AGENTS` to change the 10,000).

use serde_json::json;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

fn write_task(base: &Path, task: &str, ids: &[String], status: &str) {
    let dir = base.join(task);
    for sub in ["logs", "progress", "findings"] {
        fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let agents: Vec<_> = ids
        .iter()
        .map(|id| {
            json!({"id": id, "type": "bench", "tmux_session": format!("agent_{id}"),
                   "parent": "orchestrator", "depth": 1, "status": status,
                   "started_at": "2026-11-27T10:00:00.000001", "progress": 100,
                   "last_update": "2026-11-27T10:30:00.000001",
                   "completed_at": "2026-11-27T10:30:00.000002",
                   "prompt": "bench agent"})
        })
        .collect();
    let root = json!({"task_id": task, "agents": agents, "total_spawned": ids.len(),
                      "active_count": 0, "completed_count": ids.len()});
    fs::write(
        dir.join("AGENT_REGISTRY.json"),
        serde_json::to_string_pretty(&root).unwrap(),
    )
    .unwrap();
    let old = SystemTime::now() - Duration::from_secs(3600);
    for id in ids {
        for (path, body) in [
            (
                dir.join(format!("progress/{id}_progress.jsonl")),
                "{\"progress\":100}\n",
            ),
            (
                dir.join(format!("findings/{id}_findings.jsonl")),
                "{\"finding\":1}\n",
            ),
            (
                dir.join(format!("logs/{id}_stream.jsonl")),
                "{\"type\":\"result\",\"is_error\":false}\n",
            ),
            (dir.join(format!("agent_prompt_{id}.txt")), "prompt"),
        ] {
            fs::write(&path, body).unwrap();
            fs::File::options()
                .append(true)
                .open(&path)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
    }
}

fn reaper(root: &Path, base: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agent-reaper"));
    cmd.arg("once")
        .arg("--workspace-base")
        .arg(base)
        .env("TMUX_TMPDIR", root.join("tmux"))
        .env_remove("TMUX")
        .env_remove("AGENT_REAPER_CONFIG");
    cmd
}

fn timed(mut cmd: Command) -> (Duration, String) {
    // Flush the setup's dirty pages first, so the pass is not charged for their writeback.
    unsafe { libc::sync() };
    let start = Instant::now();
    let out = cmd.output().unwrap();
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("Summary:"))
        .unwrap_or("")
        .to_string();
    (took, summary)
}

fn main() {
    let agents: usize = std::env::var("REAPER_BENCH_AGENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let mut rows = Vec::new();

    // 1. Many finished agents whose sessions are gone.
    let root = tempfile::tempdir().unwrap();
    fs::create_dir_all(root.path().join("tmux")).unwrap();
    let base = root.path().join("ws");
    let tasks = 100;
    for t in 0..tasks {
        let ids: Vec<String> = (0..agents / tasks)
            .map(|a| format!("bench-{t:03}{a:03}-{:06x}", t * 1000 + a))
            .collect();
        write_task(
            &base,
            &format!("TASK-20261127-1000{t:02}-bench{t:03}"),
            &ids,
            "completed",
        );
    }
    let (took, summary) = timed(reaper(root.path(), &base));
    rows.push((
        format!("{agents} finished agents, 100 tasks, sessions gone"),
        took,
        summary,
    ));
    let (took, summary) = timed(reaper(root.path(), &base));
    rows.push((
        "same workspace again (nothing to do)".to_string(),
        took,
        summary,
    ));

    // 2. 40 finished agents whose tmux sessions still run.
    let root = tempfile::tempdir().unwrap();
    let tmux_dir = root.path().join("tmux");
    fs::create_dir_all(&tmux_dir).unwrap();
    let base = root.path().join("ws");
    for t in 0..4 {
        let ids: Vec<String> = (0..10)
            .map(|a| format!("live-{t:03}{a:03}-{:06x}", t * 100 + a))
            .collect();
        write_task(
            &base,
            &format!("TASK-20261127-2000{t:02}-live{t:04}"),
            &ids,
            "completed",
        );
        for id in &ids {
            let ok = Command::new("tmux")
                .env("TMUX_TMPDIR", &tmux_dir)
                .env_remove("TMUX")
                .args([
                    "new-session",
                    "-d",
                    "-s",
                    &format!("agent_{id}"),
                    "sleep 600",
                ])
                .status()
                .unwrap()
                .success();
            assert!(ok);
        }
    }
    let (took, summary) = timed(reaper(root.path(), &base));
    rows.push((
        "40 finished agents, 4 tasks, sessions alive".to_string(),
        took,
        summary,
    ));
    let _ = Command::new("tmux")
        .env("TMUX_TMPDIR", &tmux_dir)
        .arg("kill-server")
        .status();

    println!("\n{:<48} {:>10}  summary", "scenario", "seconds");
    for (name, took, summary) in rows {
        println!("{name:<48} {:>10.3}  {summary}", took.as_secs_f64());
    }
}
