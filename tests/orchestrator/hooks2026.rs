//! Transition hooks with the 2026 orchestrator's own code: the phase goes to review, dead reviewers are retried, failing and hanging hooks.

use crate::common::{Sandbox, alive, wait_until};
use crate::harness::{Generation, World as Harness};
use serde_json::Value;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// The contrib hook under test.
fn contrib_hook() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/orchestrator2026_hook.py")
}

/// The harness's world plus a stand-in agent CLI (`CLAUDE_EXECUTABLE`) that logs each start.
struct World {
    h: Harness,
    sandbox_dir: PathBuf,
    code: PathBuf,
}

impl World {
    fn new() -> Option<World> {
        let h = Harness::new(Generation::Sqlite2026)?;
        let w = World {
            sandbox_dir: h.sandbox.dir.path().to_path_buf(),
            code: h.code.clone(),
            h,
        };
        // The stand-in `claude`: records what it was started as (the orchestrator's prompt
        // says), prints an init line, then works until its session is killed.
        let standin = format!(
            "#!/bin/sh\nprompt=$(cat)\ncase \"$prompt\" in\n  *\"INDEPENDENT REVIEWER AGENT\"*) kind=reviewer ;;\n  *\"CRITIQUE AGENT\"*) kind=critique ;;\n  *) kind=worker ;;\nesac\necho \"$kind $$\" >> {}\necho '{{\"type\":\"system\",\"subtype\":\"init\"}}'\nexec sleep 3600\n",
            w.spawn_log().display()
        );
        write_exe(&w.standin(), &standin);
        Some(w)
    }

    fn dir(&self) -> &Path {
        &self.sandbox_dir
    }
    fn sandbox(&self) -> &Sandbox {
        &self.h.sandbox
    }
    fn stub(&self) -> PathBuf {
        self.h.pystub()
    }
    fn standin(&self) -> PathBuf {
        self.dir().join("claude")
    }
    fn spawn_log(&self) -> PathBuf {
        self.dir().join("spawns.log")
    }
    fn base(&self) -> PathBuf {
        self.h.base()
    }

    /// Waits until the stand-in logged `n` starts of `kind` (it logs a moment after its
    /// session starts), then says how many it logged.
    fn spawned_at_least(&self, kind: &str, n: usize) -> usize {
        wait_until(WAIT, || self.spawned(kind) >= n);
        self.spawned(kind)
    }

    /// Agent starts the stand-in saw, by kind.
    fn spawned(&self, kind: &str) -> usize {
        fs::read_to_string(self.spawn_log())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.split(' ').next() == Some(kind))
            .count()
    }

    /// What the orchestrator needs besides the harness's environment to start agents: the
    /// stand-in CLI, and a shell that knows `set -o pipefail` for its tmux command line.
    fn orchestrator_env(&self, cmd: &mut Command) {
        cmd.env("HOME", self.h.home())
            .env("PYTHONPATH", self.stub())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("CLAUDE_ORCHESTRATOR_WORKSPACE", self.base())
            .env("CLAUDE_EXECUTABLE", self.standin())
            .env("SHELL", "/bin/bash")
            .env("TMUX_TMPDIR", self.sandbox().tmux_tmpdir())
            .env_remove("TMUX");
    }

    /// The harness's `python3 -c`, plus the agent environment; stdout's last line as JSON.
    fn python(&self, script: &str, args: &[&str]) -> Value {
        let mut cmd = self.h.python_cmd(&format!("import json\n{script}"), args);
        self.orchestrator_env(&mut cmd);
        let out = cmd.output().expect("python3 on PATH");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "python failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            stdout
        );
        serde_json::from_str(stdout.lines().last().unwrap_or_default())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
    }

    fn reaper(&self, args: &[&str]) -> Command {
        let mut cmd = self.h.reaper(args);
        cmd.env("SHELL", "/bin/bash");
        cmd
    }

    fn reaper_run(&self, args: &[&str]) -> Output {
        let out = self.reaper(args).output().unwrap();
        eprintln!(
            "$ agent-reaper {}\n--- stdout\n{}--- stderr\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "agent-reaper {args:?} failed");
        out
    }

    fn once_json(&self) -> Value {
        serde_json::from_slice(&self.reaper_run(&["once", "--json"]).stdout).unwrap()
    }

    /// A config with one hook running `command` (TOML array text) on every terminal status.
    fn config_with_hook(&self, command: &str, extra: &str) {
        self.h.write_config(&format!(
            "settle = \"0s\"\nzombie_grace = \"0s\"\nsession_poll_interval = \"500ms\"\n\n[[hooks]]\nname = \"orchestrator\"\n\
             on = [\"completed\", \"failed\", \"terminated\"]\ncommand = {command}\n{extra}\n\
             env = {{ PYTHONPATH = {:?}, CLAUDE_EXECUTABLE = {:?} }}\n",
            self.stub().to_string_lossy(),
            self.standin().to_string_lossy(),
        ));
    }

    /// The contrib hook's command line, as a TOML array.
    fn contrib_command(&self) -> String {
        format!(
            "[\"python3\", {:?}, \"--orchestrator\", {:?}, \"{{workspace_base}}\", \"{{task_id}}\", \"{{agent_id}}\", \"{{status}}\"]",
            contrib_hook().to_string_lossy(),
            self.code.to_string_lossy()
        )
    }

    fn kill_session(&self, agent: &str) {
        let status = self
            .sandbox()
            .tmux()
            .args(["kill-session", "-t", &format!("=agent_{agent}")])
            .status()
            .unwrap();
        assert!(status.success(), "kill-session agent_{agent}");
    }
}

fn write_exe(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// A task made by the orchestrator's own `create_real_task`, with agents deployed by its
/// own `deploy_sonnet_agent` (the stand-in CLI in their tmux sessions).
const DEPLOY: &str = r#"
import real_mcp_server as m
n = int(sys.argv[1])
r = m.create_real_task(description="hooks test",
                       phases=json.dumps([{"name": "Build"}, {"name": "Check"}]))
assert r.get("success"), r
task = r["task_id"]
agents = []
for i in range(n):
    d = m.deploy_sonnet_agent(task_id=task, agent_type=f"builder{i}", prompt="build it", phase_index=0)
    assert d.get("success"), d
    agents.append(d["agent_id"])
print(json.dumps({"task": task, "agents": agents}))
"#;

/// The task's current phase, its reviews (with `retry_count`) and its agents, as the
/// orchestrator's state DB holds them.
const STATE: &str = r#"
import sqlite3
from orchestrator import state_db
task = sys.argv[1]
snap = state_db.load_task_snapshot(workspace_base=BASE, task_id=task)
phase = state_db.load_phase_snapshot(workspace_base=BASE, task_id=task,
                                     phase_index=snap.get("current_phase_index") or 0)
conn = sqlite3.connect(state_db.get_state_db_path(BASE))
reviews = [dict(zip(("review_id", "status", "retry_count", "reviewers"), r)) for r in conn.execute(
    "SELECT review_id, status, COALESCE(retry_count, 0), reviewer_agent_ids FROM reviews "
    "WHERE task_id=? ORDER BY created_at", (task,))]
agents = {a["agent_id"]: {"status": a["status"], "type": a["type"]}
          for a in state_db.get_agents_for_task(workspace_base=BASE, task_id=task)}
print(json.dumps({"phase": phase["status"], "reviews": reviews, "agents": agents}))
"#;

fn deploy(w: &World, agents: usize) -> (String, Vec<String>) {
    let v = w.python(DEPLOY, &[&agents.to_string()]);
    let task = v["task"].as_str().unwrap().to_string();
    let ids = v["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    (task, ids)
}

fn terminal(status: &Value) -> bool {
    // agent-reaper writes `terminated`, or `failed` as the 2026 detectors do: both are done.
    matches!(status.as_str(), Some("failed" | "terminated"))
}

#[test]
fn dead_phase_goes_to_review_and_dead_reviewers_are_retried() {
    let Some(w) = World::new() else {
        return;
    };
    let (task, agents) = deploy(&w, 2);
    assert_eq!(w.spawned_at_least("worker", 2), 2);
    w.config_with_hook(&w.contrib_command(), "timeout = \"60s\"");
    let state = w.python(STATE, &[&task]);
    assert_eq!(state["phase"], "ACTIVE", "{state}");

    // Every agent of the phase dies; agent-reaper marks them, the hook moves the phase on.
    for a in &agents {
        w.kill_session(a);
    }
    let report = w.once_json();
    let hooks = report["hooks"].as_array().expect("hooks in the report");
    assert_eq!(hooks.len(), 2, "one run per transition: {report}");
    assert!(hooks.iter().all(|h| h["state"] == "ok"), "{report}");
    let state = w.python(STATE, &[&task]);
    for a in &agents {
        assert!(terminal(&state["agents"][a]["status"]), "{state}");
    }
    assert_eq!(state["phase"], "IN_REVIEW", "{state}");
    assert_eq!(
        w.spawned_at_least("reviewer", 1),
        1,
        "exactly one reviewer requested"
    );
    let reviews = state["reviews"].as_array().unwrap();
    assert_eq!(reviews.len(), 1, "{state}");
    assert_eq!(reviews[0]["status"], "in_progress");

    // The same hook again (at-least-once delivery) asks for nothing more.
    let mut again = Command::new("python3");
    again
        .arg(contrib_hook())
        .args(["--orchestrator", w.code.to_str().unwrap()])
        .arg(w.base())
        .args([&task, &agents[0], "failed"]);
    w.orchestrator_env(&mut again);
    let out = again.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(w.spawned("reviewer"), 1, "a second run spawns no reviewer");

    // The review's reviewer dies before its verdict: the review is aborted and retried.
    let reviewer = state["agents"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(_, a)| a["type"].as_str().unwrap().starts_with("reviewer"))
        .map(|(id, _)| id.clone())
        .expect("a reviewer agent row");
    w.kill_session(&reviewer);
    let report = w.once_json();
    let ran: Vec<&Value> = report["hooks"].as_array().unwrap().iter().collect();
    assert!(
        ran.iter()
            .any(|h| h["agent_id"] == reviewer.as_str() && h["state"] == "ok"),
        "{report}"
    );
    let state = w.python(STATE, &[&task]);
    let reviews = state["reviews"].as_array().unwrap();
    assert_eq!(reviews.len(), 2, "{state}");
    assert_eq!(reviews[0]["status"], "aborted", "{state}");
    assert_eq!(reviews[0]["retry_count"], 1, "{state}");
    assert_eq!(reviews[1]["status"], "in_progress", "{state}");
    assert_eq!(state["phase"], "IN_REVIEW");
    assert_eq!(
        w.spawned_at_least("reviewer", 2),
        2,
        "one respawn requested"
    );
}

#[test]
fn a_failing_hook_is_retried_on_a_later_pass_and_cleanup_goes_on() {
    let Some(w) = World::new() else {
        return;
    };
    let (task, agents) = deploy(&w, 2);
    // Fails (exit 3) until the flag exists, then runs the contrib hook.
    let flag = w.dir().join("hook-may-succeed");
    let calls = w.dir().join("calls.log");
    let wrapper = w.dir().join("flaky-hook");
    write_exe(
        &wrapper,
        &format!(
            "#!/bin/sh\necho \"$3\" >> {calls}\nif [ ! -e {flag} ]; then echo \"orchestrator not reachable\" >&2; exit 3; fi\nexec python3 {hook} --orchestrator {code} \"$@\"\n",
            calls = calls.display(),
            flag = flag.display(),
            hook = contrib_hook().display(),
            code = w.code.display()
        ),
    );
    w.config_with_hook(
        &format!(
            "[{:?}, \"{{workspace_base}}\", \"{{task_id}}\", \"{{agent_id}}\", \"{{status}}\"]",
            wrapper.to_string_lossy()
        ),
        "retry_after = \"0s\"",
    );
    for a in &agents {
        w.kill_session(a);
    }
    let report = w.once_json();
    let hooks = report["hooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 2, "{report}");
    assert!(hooks.iter().all(|h| h["state"] == "failed"), "{report}");
    // Cleanup was not held back: both agents marked, their logs archived.
    let archive = w.base().join(&task).join("archive");
    for a in &agents {
        assert!(
            archive.join(format!("{a}_stream.jsonl")).exists(),
            "{a} archived"
        );
    }
    let pending = w.dir().join("state/hooks-pending.json");
    let owed: Value = serde_json::from_slice(&fs::read(&pending).unwrap()).unwrap();
    assert_eq!(owed["runs"].as_array().unwrap().len(), 2, "{owed}");
    assert_eq!(w.python(STATE, &[&task])["phase"], "ACTIVE");
    let plan = String::from_utf8(w.reaper_run(&["plan"]).stdout).unwrap();
    assert!(plan.contains("pending retry (attempt 2)"), "{plan}");
    assert!(
        plan.contains("orchestrator not reachable") || plan.contains("exit status: 3"),
        "{plan}"
    );

    // A later pass (a new process: the runs were remembered on disk) retries them.
    fs::write(&flag, "").unwrap();
    let report = w.once_json();
    let hooks = report["hooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 2, "{report}");
    assert!(
        hooks
            .iter()
            .all(|h| h["state"] == "ok" && h["attempt"] == 2),
        "{report}"
    );
    assert!(!pending.exists(), "nothing owed any more");
    assert_eq!(w.python(STATE, &[&task])["phase"], "IN_REVIEW");
    assert_eq!(w.spawned_at_least("reviewer", 1), 1);
    assert_eq!(fs::read_to_string(&calls).unwrap().lines().count(), 4);
}

/// Agents of a task made with the orchestrator's `state_db` (no deploy: sessions the test
/// starts), for the tests that need many quick transitions.
const QUICK_TASK: &str = r#"
from orchestrator import state_db
task, agents = sys.argv[1], sys.argv[2:]
ws = os.path.join(BASE, task)
for sub in ("progress", "logs", "findings", "output"):
    os.makedirs(os.path.join(ws, sub), exist_ok=True)
r = state_db.create_task_with_phases(workspace_base=BASE, task_id=task, workspace=ws,
    description="hooks test", phases=[{"name": "Build"}])
assert r["success"], r
for agent in agents:
    r = state_db.deploy_agent_atomic(workspace_base=BASE, task_id=task, agent_id=agent,
        agent_type=agent.split("-")[0], model="sonnet", parent="orchestrator", depth=1,
        phase_index=0, tmux_session="agent_" + agent, prompt_preview="test")
    assert r["success"], r
    log = os.path.join(ws, "logs", agent + "_stream.jsonl")
    with open(log, "w") as f:
        f.write('{"type":"system","subtype":"init"}\n')
    os.utime(log, (1, 1))
print(json.dumps({"task": task}))
"#;

const STATUS_OF: &str = r#"
from orchestrator import state_db
a = state_db.get_agent_by_id(workspace_base=BASE, task_id=sys.argv[1], agent_id=sys.argv[2])
print(json.dumps({"status": a["status"]}))
"#;

fn quick_agent(w: &World, task: &str, agent: &str) {
    w.python(QUICK_TASK, &[task, agent]);
    w.h.start_session(&format!("agent_{agent}"), "exec sleep 3600");
}

#[test]
fn a_hanging_hook_is_killed_at_its_timeout_and_blocks_no_cleanup() {
    let Some(w) = World::new() else {
        return;
    };
    const T1: &str = "TASK-20261127-150000-0000aaaa";
    const A1: &str = "builder-150001-aaaaaa";
    const T2: &str = "TASK-20261127-150100-0000bbbb";
    const A2: &str = "builder-150101-bbbbbb";
    const T3: &str = "TASK-20261127-150200-0000cccc";
    const A3: &str = "builder-150201-cccccc";
    quick_agent(&w, T1, A1);
    quick_agent(&w, T2, A2);
    quick_agent(&w, T3, A3);
    // The hook hangs, and so does a child it started in the background.
    let pids = w.dir().join("hook-pids");
    let hang = w.dir().join("hanging-hook");
    write_exe(
        &hang,
        &format!(
            "#!/bin/sh\nsleep 3600 &\necho \"$1 $$ $!\" >> {}\nwait\n",
            pids.display()
        ),
    );
    let hook_of = |agent: &str| -> Option<(i32, i32)> {
        let text = fs::read_to_string(&pids).ok()?;
        let line = text.lines().find(|l| l.starts_with(agent))?;
        let mut it = line.split(' ').skip(1).map(|p| p.parse().unwrap());
        Some((it.next()?, it.next()?))
    };
    let config = |timeout: &str, command: &Path| {
        w.config_with_hook(
            &format!("[{:?}, \"{{agent_id}}\"]", command.to_string_lossy()),
            &format!("timeout = \"{timeout}\"\nretry_after = \"1h\""),
        )
    };

    // `once`: the hang is killed at its 2 s timeout, with its background child; the agent
    // was cleaned before the hook ran.
    config("2s", &hang);
    w.kill_session(A1);
    let report = w.once_json();
    let h = &report["hooks"][0];
    assert_eq!(h["state"], "failed", "{report}");
    assert!(
        h["detail"].as_str().unwrap().contains("timeout"),
        "{report}"
    );
    let (shell, child) = hook_of(A1).expect("the hook ran");
    // SIGKILLed: each may take a moment to finish exiting.
    assert!(
        wait_until(WAIT, || !alive(shell) && !alive(child)),
        "the hook's process group was killed"
    );
    assert!(terminal(&w.python(STATUS_OF, &[T1, A1])["status"]));

    // The daemon: a hook hanging for a minute holds up no other agent's cleanup.
    config("60s", &hang);
    // Declared first, dropped last: the hook groups the daemon leaves hanging go too.
    let _hooks = KillHookGroups {
        log: pids.clone(),
        script: hang.clone(),
    };
    let daemon = w.h.spawn_daemon(|c| {
        c.env("SHELL", "/bin/bash");
    });
    let daemon_log = || daemon.log_text();
    w.kill_session(A2);
    assert!(
        wait_until(WAIT, || hook_of(A2).is_some()),
        "hook for {A2} started\n{}",
        daemon_log()
    );
    let (shell, _) = hook_of(A2).unwrap();
    w.kill_session(A3);
    assert!(
        wait_until(WAIT, || terminal(&w.python(STATUS_OF, &[T3, A3])["status"])),
        "{A3} marked while the hook for {A2} hangs\n{}",
        daemon_log()
    );
    let archived = w.base().join(T3).join(format!("archive/{A3}_stream.jsonl"));
    assert!(
        wait_until(WAIT, || archived.exists()),
        "{A3}'s log archived while the hook for {A2} hangs\n{}",
        daemon_log()
    );
    assert!(
        alive(shell),
        "the hook for {A2} is still running (its timeout is 60 s)"
    );

    // SIGHUP applies a changed hook: the next transition runs the new command.
    let recorder = w.dir().join("recorder");
    let recorded = w.dir().join("recorded");
    write_exe(
        &recorder,
        &format!("#!/bin/sh\necho \"$1\" >> {}\n", recorded.display()),
    );
    config("60s", &recorder);
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        wait_until(WAIT, || daemon_log().contains("configuration reloaded")),
        "{}",
        daemon_log()
    );
    // The hook for A3 ran (hung) under the old command; a new agent gets the new one.
    const T4: &str = "TASK-20261127-150300-0000dddd";
    const A4: &str = "builder-150301-dddddd";
    quick_agent(&w, T4, A4);
    w.kill_session(A4);
    assert!(
        wait_until(WAIT, || fs::read_to_string(&recorded)
            .is_ok_and(|t| t.lines().any(|l| l == A4))),
        "the reloaded hook ran for {A4}\n{}",
        daemon_log()
    );
    // The worker logs the outcome once the hook has exited.
    let succeeded = format!("{T4}/{A4}: hook orchestrator succeeded");
    assert!(
        wait_until(WAIT, || daemon_log().contains(&succeeded)),
        "{}",
        daemon_log()
    );
}

/// Kills the hook process groups a test left hanging (their leaders' pids, logged by the
/// hook). A group is signalled only while it still holds the hook's own processes (its
/// script, or the `sleep 3600` it started): once a group is gone, its id can be another
/// test's process group (see `common::pinned`).
struct KillHookGroups {
    log: PathBuf,
    script: PathBuf,
}

impl Drop for KillHookGroups {
    fn drop(&mut self) {
        let table = agent_reaper::procs::ProcTable::scan().unwrap_or_default();
        let script = self.script.to_string_lossy();
        for line in fs::read_to_string(&self.log).unwrap_or_default().lines() {
            if let Some(Ok(pgid)) = line.split(' ').nth(1).map(str::parse::<i32>) {
                let ours = table
                    .group_members(pgid)
                    .iter()
                    .filter_map(|&pid| table.get(pid))
                    .any(|p| p.cmdline.iter().any(|a| *a == *script || a == "3600"));
                if ours {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pgid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }
}

#[test]
fn validate_refuses_a_hook_whose_program_cannot_run() {
    // Needs no orchestrator code: `validate` only reads the configuration.
    let s = Sandbox::new();
    let script = s.dir.path().join("not-executable");
    fs::write(&script, "#!/bin/sh\n").unwrap();
    for (program, needle) in [
        ("/nonexistent/on-transition", "No such file"),
        (script.to_str().unwrap(), "not executable"),
        ("no-such-hook-program-on-path", "not found on PATH"),
    ] {
        s.write_config(&format!(
            "[[hooks]]\nname = \"h\"\ncommand = [{program:?}, \"{{task_id}}\"]\n"
        ));
        let out = s.cmd(&["validate"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{program}: validate passed");
        assert!(
            stderr.contains("hook \"h\"") && stderr.contains(needle),
            "{stderr}"
        );
    }
    s.write_config("[[hooks]]\nname = \"h\"\ncommand = [\"sh\", \"-c\", \"true\"]\n");
    let out = s.cmd(&["validate"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("hook \"h\": runs /"), "{stdout}");
}
