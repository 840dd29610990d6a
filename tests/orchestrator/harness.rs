//! The real-client harness: the orchestrator's own Python code next to the real binary, one private world per test.
#![allow(dead_code)]

use crate::common::{Sandbox, orchestrator_src, shared_or_skip};
use serde_json::Value;
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a test waits for a condition the daemon or a client should reach.
pub const WAIT: Duration = Duration::from_secs(30);

/// The orchestrator generations kept in `../shared/orchestrator` (see its README).
#[derive(Clone, Copy, Debug)]
pub enum Generation {
    /// `2025-10/`: JSON registries, `real_mcp_server.py` holds the registry code.
    Json2025,
    /// `2026-04/`: the SQLite state DB, `orchestrator/state_db.py`.
    Sqlite2026,
}

impl Generation {
    fn folder(self) -> &'static str {
        match self {
            Generation::Json2025 => "2025-10",
            Generation::Sqlite2026 => "2026-04",
        }
    }
}

/// A stand-in for the `fastmcp` package: `FastMCP(...).tool`/`.resource`/`.prompt` hand the
/// function back unchanged, so `real_mcp_server.py` imports and its tools are plain functions.
/// The version and submodule satisfy the 2026 `assert_fastmcp_compatible` check.
const FASTMCP_STUB: &str = r#""""Test stub of fastmcp written by agent-reaper's test harness."""
__version__ = "3.0.0"


def _decorator(*args, **kwargs):
    if len(args) == 1 and callable(args[0]) and not kwargs:
        return args[0]
    return lambda fn: fn


class FastMCP:
    def __init__(self, *args, **kwargs):
        self.name = args[0] if args else kwargs.get("name", "stub")

    tool = staticmethod(_decorator)
    resource = staticmethod(_decorator)
    prompt = staticmethod(_decorator)

    def run(self, *args, **kwargs):
        raise SystemExit("fastmcp stub: run() is not available in tests")
"#;

/// One test's private world: HOME, workspace base, tmux server, state dir, config, the
/// orchestrator generation on `sys.path` behind the `fastmcp` stub.
pub struct World {
    pub sandbox: Sandbox,
    pub code: PathBuf,
    pub generation: Generation,
}

impl World {
    /// `None` (after printing the one skip line) when the orchestrator's code is absent.
    pub fn new(generation: Generation) -> Option<World> {
        let root = shared_or_skip("orchestrator", orchestrator_src())?;
        let code = root.join(generation.folder());
        let code = shared_or_skip("orchestrator", code)?;
        let sandbox = Sandbox::new();
        let world = World {
            sandbox,
            code,
            generation,
        };
        fs::create_dir_all(world.home()).unwrap();
        let stub = world.pystub().join("fastmcp");
        for pkg in ["", "server", "server/tasks"] {
            fs::create_dir_all(stub.join(pkg)).unwrap();
        }
        fs::write(stub.join("__init__.py"), FASTMCP_STUB).unwrap();
        fs::write(stub.join("server/__init__.py"), "").unwrap();
        fs::write(stub.join("server/tasks/__init__.py"), "").unwrap();
        fs::write(stub.join("server/tasks/routing.py"), "").unwrap();
        Some(world)
    }

    pub fn base(&self) -> PathBuf {
        self.sandbox.base()
    }

    pub fn task(&self, id: &str) -> PathBuf {
        self.sandbox.task(id)
    }

    pub fn home(&self) -> PathBuf {
        self.sandbox.dir.path().join("home")
    }

    pub fn pystub(&self) -> PathBuf {
        self.sandbox.dir.path().join("pystub")
    }

    pub fn write_config(&self, text: &str) {
        self.sandbox.write_config(text);
    }

    /// `python3 -c <script> args...` with the stub, then the orchestrator, first on `sys.path`.
    /// The script sees `BASE` (the workspace base) and `CODE` (the generation's folder) as
    /// globals, and runs with cwd = the sandbox, its own HOME and tmux server.
    pub fn python_cmd(&self, script: &str, args: &[&str]) -> Command {
        let prelude = format!(
            "import sys, os\nsys.path[0:0] = [{stub:?}, {code:?}]\nBASE = {base:?}\nCODE = {code:?}\n",
            stub = self.pystub().to_string_lossy(),
            code = self.code.to_string_lossy(),
            base = self.base().to_string_lossy(),
        );
        let mut cmd = Command::new("python3");
        cmd.arg("-c")
            .arg(format!("{prelude}{script}"))
            .args(args)
            .current_dir(self.sandbox.dir.path())
            .env("HOME", self.home())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("CLAUDE_ORCHESTRATOR_WORKSPACE", self.base())
            .env("TMUX_TMPDIR", self.sandbox.tmux_tmpdir())
            .env_remove("TMUX")
            .env_remove("PYTHONPATH")
            .env_remove("PYTHONHOME");
        cmd
    }

    pub fn python(&self, script: &str, args: &[&str]) -> Output {
        self.python_cmd(script, args)
            .output()
            .expect("python3 on PATH")
    }

    /// Runs the script, fails the test with its stderr when it fails; returns stdout.
    pub fn python_ok(&self, script: &str, args: &[&str]) -> String {
        let out = self.python(script, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "python failed ({}):\n{stderr}\n--- script\n{script}",
            out.status
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs the script and parses the last stdout line as JSON (`print(json.dumps(...))`).
    pub fn python_json(&self, script: &str, args: &[&str]) -> Value {
        let out = self.python_ok(script, args);
        let last = out.lines().last().unwrap_or_default();
        serde_json::from_str(last).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }

    /// The real binary on this world (config, base, state dir, tmux server, HOME).
    pub fn reaper(&self, args: &[&str]) -> Command {
        let mut cmd = self.sandbox.cmd(args);
        cmd.env("HOME", self.home());
        cmd
    }

    /// The real binary on this world's base with another state directory (a second
    /// reaper: the system service beside an admin's shell).
    pub fn reaper_with_state_dir(&self, state_dir: &std::path::Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_agent-reaper"));
        cmd.args(args)
            .arg("--config")
            .arg(self.sandbox.config_path())
            .arg("--workspace-base")
            .arg(self.base())
            .arg("--state-dir")
            .arg(state_dir)
            .env("HOME", self.home())
            .env("TMUX_TMPDIR", self.sandbox.tmux_tmpdir())
            .env_remove("TMUX")
            .env_remove("CLAUDE_ORCHESTRATOR_WORKSPACE")
            .env_remove("AGENT_REAPER_CONFIG")
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET");
        cmd
    }

    /// Runs the real binary to completion, printing what it said.
    pub fn reaper_run(&self, args: &[&str]) -> Output {
        crate::common::run_logged(self.reaper(args), args)
    }

    pub fn reaper_ok(&self, args: &[&str]) -> String {
        crate::common::stdout_of_success(self.reaper_run(args), args)
    }

    /// `agent-reaper run` in the background, stderr to a log file; killed on drop.
    pub fn spawn_daemon(&self, tweak: impl FnOnce(&mut Command)) -> Daemon {
        let log = self.sandbox.dir.path().join(format!(
            "daemon-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let mut cmd = self.reaper(&["run"]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap());
        tweak(&mut cmd);
        Daemon {
            child: cmd.spawn().unwrap(),
            log,
        }
    }

    /// Starts `name` running `shell_command` on this world's private tmux server.
    pub fn start_session(&self, name: &str, shell_command: &str) {
        self.sandbox.start_session(name, shell_command);
    }

    pub fn session_exists(&self, name: &str) -> bool {
        self.sandbox.session_exists(name)
    }
}

/// A background `agent-reaper run`, killed (and its log printed) when dropped.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn wait_log(&self, needle: &str) -> bool {
        wait_until(WAIT, || self.log_text().contains(needle))
    }

    /// `sig` to the daemon, which must still run (a reaped child's pid may be another
    /// process's by now: see `common::pinned`).
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        assert!(
            crate::common::pinned::signal_child(&self.child, sig),
            "the daemon exited before {sig}\n{}",
            self.log_text()
        );
    }

    /// SIGTERM, then waits for the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not stop\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("--- daemon log\n{}", self.log_text());
    }
}

pub use crate::common::wait_until;
