//! `agent-reaper demo`: a throwaway workspace with three fake agents, the daemon cleaning up after them.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TASK: &str = "TASK-20261127-120000-de3040aa";
const FINISHER: &str = "finisher-120001-aaaaaa";
const CRASHER: &str = "crasher-120002-bbbbbb";
const HANGER: &str = "hanger-120003-cccccc";

const CONFIG: &str = r#"# Short timings so the demo takes seconds, not hours.
settle = "500ms"
zombie_grace = "1s"
terminal_grace = "2s"
max_inactivity = "6s"
session_poll_interval = "1s"
reconcile_interval = "5s"
term_grace = ["300ms", "600ms"]
"#;

/// Everything the demo made, removed on drop even when it fails halfway.
struct Playground {
    dir: tempfile::TempDir,
    daemon: Option<Child>,
}

impl Playground {
    fn base(&self) -> PathBuf {
        self.dir.path().join("workspace")
    }
    fn task(&self) -> PathBuf {
        self.base().join(TASK)
    }
    fn tmux(&self) -> Command {
        let mut cmd = Command::new("tmux");
        cmd.env("TMUX_TMPDIR", self.dir.path().join("tmux"))
            .env_remove("TMUX")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }
}

impl Drop for Playground {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(d.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = d.wait();
        }
        let _ = self.tmux().arg("kill-server").status();
    }
}

fn agent(id: &str) -> Value {
    json!({
        "id": id,
        "type": id.split('-').next().unwrap_or("agent"),
        "tmux_session": format!("agent_{id}"),
        "parent": "orchestrator",
        "depth": 1,
        "status": "working",
        "started_at": crate::model::format_timestamp(std::time::SystemTime::now()),
        "progress": 10,
        "last_update": crate::model::format_timestamp(std::time::SystemTime::now()),
        "prompt": "demo agent"
    })
}

fn write_registry(path: &Path, root: &Value) -> Result<()> {
    let text = crate::registry::pyjson::to_python_json(root);
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn statuses(path: &Path) -> Vec<(String, String, String)> {
    let Ok(bytes) = fs::read(path) else {
        return Vec::new();
    };
    let root: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    root["agents"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            (
                a["id"].as_str().unwrap_or("").to_string(),
                a["status"].as_str().unwrap_or("").to_string(),
                a["termination_reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn cleaned(path: &Path) -> bool {
    let Ok(bytes) = fs::read(path) else {
        return false;
    };
    let root: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    root["agents"].as_array().is_some_and(|agents| {
        agents
            .iter()
            .all(|a| a["auto_cleanup_result"]["success"] == true)
    })
}

pub fn run() -> Result<()> {
    if Command::new("tmux").arg("-V").output().is_err() {
        bail!("the demo needs tmux on PATH (apt-get install tmux)");
    }
    let pg = Playground {
        dir: tempfile::Builder::new()
            .prefix("agent-reaper-demo-")
            .tempdir()?,
        daemon: None,
    };
    let mut pg = pg;
    let task = pg.task();
    for sub in ["logs", "progress", "findings"] {
        fs::create_dir_all(task.join(sub))?;
    }
    fs::create_dir_all(pg.dir.path().join("tmux"))?;
    fs::write(pg.dir.path().join("demo.toml"), CONFIG)?;
    let registry = task.join("AGENT_REGISTRY.json");
    let mut root = json!({
        "task_id": TASK,
        "task_description": "agent-reaper demo",
        "agents": [agent(FINISHER), agent(CRASHER), agent(HANGER)],
        "total_spawned": 3,
        "active_count": 3,
        "completed_count": 0
    });
    write_registry(&registry, &root)?;
    for id in [FINISHER, CRASHER, HANGER] {
        fs::write(
            task.join(format!("agent_prompt_{id}.txt")),
            "You are a demo agent.\n",
        )?;
    }
    let progress = |id: &str| task.join(format!("progress/{id}_progress.jsonl"));
    let stream = |id: &str| task.join(format!("logs/{id}_stream.jsonl"));
    // The finisher works, writes its result line, and keeps its session (claude's pane lingers).
    let finisher = format!(
        "for i in 1 2 3; do echo '{{\"progress\":'$i'0}}' >> {p}; sleep 0.5; done; \
         echo '{{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":false}}' >> {s}; sleep 600",
        p = progress(FINISHER).display(),
        s = stream(FINISHER).display()
    );
    // The crasher writes a line, then its process dies and takes the session with it.
    let crasher = format!(
        "echo '{{\"progress\":20}}' >> {p}; sleep 2; exit 1",
        p = progress(CRASHER).display()
    );
    // The hanger prints nothing and never returns.
    let hanger = "sleep 600".to_string();
    for (id, cmd) in [(FINISHER, finisher), (CRASHER, crasher), (HANGER, hanger)] {
        let ok = pg
            .tmux()
            .args(["new-session", "-d", "-s", &format!("agent_{id}"), &cmd])
            .status()?
            .success();
        if !ok {
            bail!("tmux new-session agent_{id} failed");
        }
    }
    println!("demo workspace: {}", pg.base().display());
    println!("  {FINISHER}: works for 2 s, writes its result line, is marked completed");
    println!(
        "  {CRASHER}: its process exits after 2 s (session gone, registry still says working)"
    );
    println!("  {HANGER}: prints nothing; max_inactivity is 6 s in this demo");
    println!("starting `agent-reaper run`; its log follows.\n");
    let exe = std::env::current_exe()?;
    pg.daemon = Some(
        Command::new(exe)
            .arg("run")
            .arg("--config")
            .arg(pg.dir.path().join("demo.toml"))
            .arg("--workspace-base")
            .arg(pg.base())
            .arg("--state-dir")
            .arg(pg.dir.path().join("state"))
            .env("TMUX_TMPDIR", pg.dir.path().join("tmux"))
            .env_remove("TMUX")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .spawn()
            .context("starting the daemon")?,
    );
    // The orchestrator marks the finisher completed when it reports in.
    std::thread::sleep(Duration::from_secs(2));
    root["agents"][0]["status"] = json!("completed");
    root["agents"][0]["progress"] = json!(100);
    root["agents"][0]["completed_at"] =
        json!(crate::model::format_timestamp(std::time::SystemTime::now()));
    write_registry(&registry, &root)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cleaned(&registry) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    // Let the last log lines out before stopping the daemon.
    std::thread::sleep(Duration::from_millis(300));
    drop(pg.daemon.take().map(|mut d| {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(d.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        d.wait()
    }));
    println!("\nregistry afterwards:");
    for (id, status, reason) in statuses(&registry) {
        println!("  {id:<26} {status:<11} {reason}");
    }
    let archived: Vec<String> = fs::read_dir(task.join("archive"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    println!("archive/: {}", archived.join(", "));
    if !cleaned(&registry) {
        bail!("the demo did not finish within 30 s; see the log above");
    }
    println!("\ndemo done; the workspace and tmux server are removed.");
    Ok(())
}
