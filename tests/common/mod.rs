//! Test support: temp workspaces in the orchestrator's format, the real binary, a private tmux server.
#![allow(dead_code)]

pub mod guard;

use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub mod moto;
pub mod pinned;
pub mod shared;
#[allow(unused_imports)]
pub use shared::{fixture_workspace, fixtures_dir, orchestrator_src, shared_or_skip};

pub const FIXTURE_TASK_ZOMBIE: &str = "TASK-20251017-215604-df6a3cbd";
pub const FIXTURE_ZOMBIE_ID: &str = "jsonl_architecture_planner-215640-c3f469";

/// Copies a tree, making everything writable (shared/ is read-only).
pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    fs::set_permissions(to, fs::Permissions::from_mode(0o755)).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            fs::copy(entry.path(), &dest).unwrap();
            fs::set_permissions(&dest, fs::Permissions::from_mode(0o644)).unwrap();
            // Keep the times: a real workspace's files are as old as their last write.
            let mtime = entry.metadata().unwrap().modified().unwrap();
            fs::File::options()
                .append(true)
                .open(&dest)
                .unwrap()
                .set_modified(mtime)
                .unwrap();
        }
    }
}

/// A throwaway home for one test: a workspace base, a private tmux server, a config.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("reaper-test-")
            .tempdir()
            .unwrap();
        fs::create_dir_all(dir.path().join("ws")).unwrap();
        fs::create_dir_all(dir.path().join("tmux")).unwrap();
        fs::create_dir_all(dir.path().join("state")).unwrap();
        let s = Sandbox { dir };
        s.write_config("settle = \"300ms\"\n");
        s
    }

    /// A sandbox whose workspace is a copy of the October 2025 orchestrator fixture; `None`
    /// (after the skip line) when the fixture is absent.
    pub fn with_fixture() -> Option<Self> {
        let fixture = fixture_workspace()?;
        let s = Sandbox::new();
        copy_tree(&fixture, &s.base());
        Some(s)
    }

    pub fn base(&self) -> PathBuf {
        self.dir.path().join("ws")
    }

    pub fn task(&self, id: &str) -> PathBuf {
        self.base().join(id)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("agent-reaper.toml")
    }

    pub fn write_config(&self, text: &str) {
        fs::write(self.config_path(), text).unwrap();
    }

    pub fn tmux_tmpdir(&self) -> PathBuf {
        self.dir.path().join("tmux")
    }

    /// The real binary, pointed at this sandbox only.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_agent-reaper"));
        cmd.args(args)
            .arg("--config")
            .arg(self.config_path())
            .arg("--workspace-base")
            .arg(self.base())
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .env("TMUX_TMPDIR", self.tmux_tmpdir())
            .env_remove("TMUX")
            .env_remove("CLAUDE_ORCHESTRATOR_WORKSPACE")
            .env_remove("AGENT_REAPER_CONFIG")
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET");
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        run_logged(self.cmd(args), args)
    }

    pub fn run_ok(&self, args: &[&str]) -> String {
        stdout_of_success(self.run(args), args)
    }

    pub fn tmux(&self) -> Command {
        let mut cmd = Command::new("tmux");
        cmd.env("TMUX_TMPDIR", self.tmux_tmpdir())
            .env_remove("TMUX");
        cmd
    }

    /// Starts `agent_<id>` (or any name) running `shell_command` on the private server.
    pub fn start_session(&self, name: &str, shell_command: &str) {
        let status = self
            .tmux()
            .args(["new-session", "-d", "-s", name, "-x", "80", "-y", "20"])
            .arg(shell_command)
            .status()
            .unwrap();
        assert!(status.success(), "tmux new-session {name}");
    }

    pub fn session_exists(&self, name: &str) -> bool {
        self.tmux()
            .args(["has-session", "-t", &format!("={name}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self
            .tmux()
            .arg("kill-server")
            .stderr(std::process::Stdio::null())
            .status();
    }
}

pub fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

/// Every file under `root` with its bytes, for before/after comparisons. The reapers' own
/// base lock (`registry/.agent-reaper.lock`, created by the first `once`) is left out: it is
/// no workspace content.
pub fn snapshot_tree(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let ft = entry.file_type().unwrap();
            if ft.is_dir() {
                walk(&path, root, out);
            } else if ft.is_file() {
                if path.ends_with("registry/.agent-reaper.lock") {
                    continue;
                }
                out.insert(
                    path.strip_prefix(root).unwrap().to_path_buf(),
                    fs::read(&path).unwrap(),
                );
            }
        }
    }
    walk(root, root, &mut out);
    out
}

/// Whether `pid` is running: gone, or a zombie nobody reaped yet (PID 1 in a container may
/// never reap one), is not. Read from `/proc` directly, not through the crate's parser.
pub fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        }
        Err(_) => false,
    }
}

/// Polls `cond` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// Writes a task registry in the orchestrator's shape (`json.dump(indent=2)`).
pub fn write_task(base: &Path, task_id: &str, agents: Value) -> PathBuf {
    let dir = base.join(task_id);
    for sub in ["logs", "progress", "findings"] {
        fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let n = agents.as_array().map(Vec::len).unwrap_or(0);
    let active = agents
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| {
            matches!(
                a["status"].as_str(),
                Some("running" | "working" | "blocked" | "reviewing")
            )
        })
        .count();
    let root = serde_json::json!({
        "task_id": task_id,
        "task_description": "test task",
        "created_at": "2025-10-29T23:02:51.838962",
        "workspace": dir.to_string_lossy(),
        "status": "INITIALIZED",
        "agents": agents,
        "total_spawned": n,
        "active_count": active,
        "completed_count": n - active,
    });
    let path = dir.join("AGENT_REGISTRY.json");
    fs::write(&path, serde_json::to_string_pretty(&root).unwrap()).unwrap();
    path
}

/// An agent entry as the orchestrator writes it.
pub fn agent_entry(id: &str, status: &str) -> Value {
    serde_json::json!({
        "id": id,
        "type": id.split('-').next().unwrap_or("agent"),
        "tmux_session": format!("agent_{id}"),
        "parent": "orchestrator",
        "depth": 1,
        "status": status,
        "started_at": "2025-10-29T22:00:00.000001",
        "progress": 50,
        "last_update": "2025-10-29T23:02:51.838962",
        "prompt": "You are a test agent."
    })
}

/// Makes every file under `dir` look written an hour ago, so it counts as settled at once.
pub fn age_files(dir: &Path) {
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            age_files(&entry.path());
        } else {
            let f = fs::File::options().append(true).open(entry.path()).unwrap();
            f.set_modified(old).unwrap();
        }
    }
}

/// Runs the real binary (`cmd`, built with `args`) to completion, printing what it said.
pub fn run_logged(mut cmd: Command, args: &[&str]) -> Output {
    let out = cmd.output().unwrap();
    eprintln!(
        "$ agent-reaper {}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Its stdout, after asserting that it succeeded.
pub fn stdout_of_success(out: Output, args: &[&str]) -> String {
    assert!(out.status.success(), "agent-reaper {args:?} failed");
    String::from_utf8(out.stdout).unwrap()
}
