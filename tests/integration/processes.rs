//! `once` against real tmux sessions and real processes: exactly the agent's processes stop, bystanders live.

/// Process identity (issue 10): bystanders, ambiguous ids, forkers, orphaned helpers.
mod identity;

use crate::common::*;
use serde_json::{Value, json};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

const TASK: &str = "TASK-20261127-130000-0000bbbb";

fn quick_config(s: &Sandbox, extra: &str) {
    s.write_config(&format!(
        "settle = \"200ms\"\nterm_grace = [\"200ms\", \"400ms\"]\n{extra}"
    ));
}

fn stream_log(s: &Sandbox, id: &str) -> PathBuf {
    s.task(TASK).join(format!("logs/{id}_stream.jsonl"))
}

/// A finished agent whose stream log already holds its result line.
fn finished(s: &Sandbox, id: &str) {
    write_task(&s.base(), TASK, json!([agent_entry(id, "completed")]));
    fs::write(
        stream_log(s, id),
        "{\"type\":\"system\"}\n{\"type\":\"result\",\"is_error\":false}\n",
    )
    .unwrap();
}

fn read_pids(path: &Path) -> Vec<i32> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn agent(s: &Sandbox, i: usize) -> Value {
    read_json(&s.task(TASK).join("AGENT_REGISTRY.json"))["agents"][i].clone()
}

/// Kills a spawned helper process, and the process group it leads (its `sleep` children),
/// when the test ends, passed or not.
struct Reap(Child);
impl Drop for Reap {
    fn drop(&mut self) {
        // ESRCH when it leads no group: then only the process itself.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_process_ignoring_sigterm_is_killed_with_escalation() {
    let s = Sandbox::new();
    quick_config(&s, "");
    let id = "stubborn-130000-aaaaaa";
    finished(&s, id);
    let pidfile = s.dir.path().join("pids");
    s.start_session(
        &format!("agent_{id}"),
        &format!(
            "trap '' TERM; echo $$ > {}; while :; do sleep 0.05; done",
            pidfile.display()
        ),
    );
    assert!(wait_until(Duration::from_secs(5), || !read_pids(&pidfile).is_empty()));
    let pid = read_pids(&pidfile)[0];
    s.run_ok(&["once"]);
    assert!(!alive(pid), "pid {pid} survived");
    assert!(!s.session_exists(&format!("agent_{id}")));
    let record = &agent(&s, 0)["auto_cleanup_result"];
    assert_eq!(record["escalated_to_sigkill"], true, "{record:#}");
    assert_eq!(record["verified_no_zombies"], true, "{record:#}");
    assert_eq!(record["success"], true, "{record:#}");
}

#[test]
fn a_three_level_tree_is_gone_and_a_lookalike_session_survives() {
    let s = Sandbox::new();
    quick_config(&s, "");
    let id = "tree-130000-bbbbbb";
    finished(&s, id);
    let pidfile = s.dir.path().join("pids");
    let p = pidfile.display();
    // pane shell -> sh -> sh -> sleep, each level noting its pid.
    s.start_session(
        &format!("agent_{id}"),
        &format!(
            "echo $$ >> {p}; sh -c 'echo $$ >> {p}; sh -c \"echo \\$\\$ >> {p}; sleep 600\" & wait' & wait"
        ),
    );
    let lookalike = format!("agent_{id}x");
    s.start_session(&lookalike, "sleep 600");
    assert!(wait_until(Duration::from_secs(5), || read_pids(&pidfile)
        .len()
        == 3));
    let pids = read_pids(&pidfile);
    let out = s.run_ok(&["once"]);
    for pid in &pids {
        assert!(!alive(*pid), "pid {pid} of the tree survived");
    }
    assert!(!s.session_exists(&format!("agent_{id}")));
    assert!(s.session_exists(&lookalike), "agent_<id>x was stopped too");
    assert!(
        out.contains(&lookalike),
        "the lookalike is reported as orphan: {out}"
    );
    let record = &agent(&s, 0)["auto_cleanup_result"];
    let parents: Vec<String> = record["defunct_processes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| {
            d.as_str()?
                .split("parent ")
                .nth(1)?
                .strip_suffix(')')
                .map(String::from)
        })
        .map(|ppid| {
            let cmd = fs::read(format!("/proc/{ppid}/cmdline")).unwrap_or_default();
            format!(
                "{ppid}: {}",
                String::from_utf8_lossy(&cmd).replace('\0', " ")
            )
        })
        .collect();
    assert_eq!(record["success"], true, "{record:#} parents: {parents:?}");
}

#[test]
fn without_tmux_nothing_is_marked_zombie_or_killed() {
    for fake in ["missing", "hanging"] {
        let s = Sandbox::new();
        let fake_tmux = s.dir.path().join("fake-tmux");
        if fake == "hanging" {
            fs::write(&fake_tmux, "#!/bin/sh\nexec sleep 30\n").unwrap();
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&fake_tmux, fs::Permissions::from_mode(0o755)).unwrap();
        }
        quick_config(
            &s,
            &format!(
                "tmux_binary = \"{}\"\ntmux_timeout = \"300ms\"\n",
                fake_tmux.display()
            ),
        );
        let working = "busy-130000-dddddd";
        let done = "done-130000-eeeeee";
        write_task(
            &s.base(),
            TASK,
            json!([
                agent_entry(working, "working"),
                agent_entry(done, "completed")
            ]),
        );
        s.start_session(&format!("agent_{done}"), "sleep 600");
        age_files(&s.task(TASK));
        let before = snapshot_tree(&s.base());
        let out = s.run_ok(&["once"]);
        assert!(out.contains("tmux"), "{fake}: {out}");
        assert_eq!(
            snapshot_tree(&s.base()),
            before,
            "{fake}: something changed"
        );
        assert!(
            s.session_exists(&format!("agent_{done}")),
            "{fake}: session killed"
        );
        assert_eq!(agent(&s, 0)["status"], "working");
    }
}

#[test]
fn a_terminal_agent_keeps_its_session_until_the_result_line_or_grace() {
    let s = Sandbox::new();
    quick_config(&s, "terminal_grace = \"1h\"\n");
    let id = "writing-130000-ffffff";
    let mut entry = agent_entry(id, "completed");
    entry["completed_at"] = json!(chrono_now());
    write_task(&s.base(), TASK, json!([entry]));
    fs::write(stream_log(&s, id), "{\"type\":\"assistant\"}\n").unwrap();
    s.start_session(&format!("agent_{id}"), "sleep 600");
    let out = s.run_ok(&["once"]);
    assert!(out.contains("terminal_grace"), "{out}");
    assert!(s.session_exists(&format!("agent_{id}")));
    // The final line arrives: now it is stopped.
    fs::write(
        stream_log(&s, id),
        "{\"type\":\"assistant\"}\n{\"type\":\"result\",\"is_error\":false}\n",
    )
    .unwrap();
    s.run_ok(&["once"]);
    assert!(!s.session_exists(&format!("agent_{id}")));
}

fn chrono_now() -> String {
    // Naive local time, as the orchestrator writes it.
    let out = Command::new("date")
        .arg("+%Y-%m-%dT%H:%M:%S.000000")
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn a_session_whose_pane_exited_is_a_zombie() {
    let s = Sandbox::new();
    quick_config(&s, "");
    let id = "crashed-130000-abcdef";
    write_task(&s.base(), TASK, json!([agent_entry(id, "working")]));
    let name = format!("agent_{id}");
    s.start_session(&name, "sleep 600");
    let ok = s
        .tmux()
        .args([
            "set-option",
            "-w",
            "-t",
            &format!("={name}:"),
            "remain-on-exit",
            "on",
        ])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let ok = s
        .tmux()
        .args(["respawn-pane", "-k", "-t", &format!("={name}:"), "true"])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    assert!(wait_until(Duration::from_secs(5), || {
        let out = s
            .tmux()
            .args([
                "list-panes",
                "-t",
                &format!("={name}:"),
                "-F",
                "#{pane_dead}",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "1"
    }));
    s.run_ok(&["once"]);
    let a = agent(&s, 0);
    assert_eq!(a["status"], "terminated", "{a:#}");
    assert_eq!(a["termination_reason"], "process_exited");
    assert!(!s.session_exists(&name));
}

#[test]
fn an_idle_agent_past_max_inactivity_is_stale() {
    let s = Sandbox::new();
    quick_config(&s, "max_inactivity = \"1s\"\n");
    let id = "idle-130000-abcdef";
    write_task(&s.base(), TASK, json!([agent_entry(id, "working")]));
    let name = format!("agent_{id}");
    s.start_session(&name, "sleep 600");
    // Wait for the session's last output to age past max_inactivity.
    assert!(wait_until(Duration::from_secs(10), || {
        let plan: Value = serde_json::from_str(&s.run_ok(&["plan", "--json"])).unwrap();
        plan["tasks"][0]["agents"][0]["class"] == "stale"
    }));
    s.run_ok(&["once"]);
    let a = agent(&s, 0);
    assert_eq!(a["status"], "terminated", "{a:#}");
    assert_eq!(a["termination_reason"], "inactivity_timeout");
    assert!(!s.session_exists(&name));
}

#[test]
fn the_tmux_server_naming_the_first_agents_log_is_never_in_its_set() {
    // The orchestrator starts sessions with `... | tee <stream log>`: the tmux server's own
    // argv is the first session's command, so it names that agent's stream log.
    let s = Sandbox::new();
    quick_config(&s, "");
    let first = "first-130000-aaaaaa";
    let other = "other-130000-bbbbbb";
    write_task(
        &s.base(),
        TASK,
        json!([
            agent_entry(first, "completed"),
            agent_entry(other, "working")
        ]),
    );
    let log = stream_log(&s, first);
    fs::write(&log, "{\"type\":\"result\",\"is_error\":false}\n").unwrap();
    s.start_session(
        &format!("agent_{first}"),
        &format!("sleep 600 | tee -a {}", log.display()),
    );
    s.start_session(&format!("agent_{other}"), "sleep 600");
    s.run_ok(&["once"]);
    assert!(!s.session_exists(&format!("agent_{first}")));
    assert!(
        s.session_exists(&format!("agent_{other}")),
        "stopping the first agent took the tmux server and every other agent with it"
    );
    assert_eq!(agent(&s, 1)["status"], "working");
}

#[test]
fn idle_orphan_sessions_are_stopped_only_when_configured() {
    let s = Sandbox::new();
    quick_config(&s, "max_inactivity = \"1s\"\n");
    write_task(&s.base(), TASK, json!([]));
    let pidfile = s.dir.path().join("orphan.pid");
    // Ignores SIGHUP, so killing the session alone would leave its process running.
    s.start_session(
        "agent_nobody-130000-abcdef",
        &format!(
            "trap '' HUP; sleep 600 & echo $! > {}; wait",
            pidfile.display()
        ),
    );
    assert!(wait_until(Duration::from_secs(5), || !read_pids(&pidfile).is_empty()));
    let pid = read_pids(&pidfile)[0];
    // Reported, not touched, while kill_orphan_sessions is off.
    let out = s.run_ok(&["once"]);
    assert!(out.contains("agent_nobody-130000-abcdef"), "{out}");
    assert!(s.session_exists("agent_nobody-130000-abcdef"));
    quick_config(&s, "max_inactivity = \"1s\"\nkill_orphan_sessions = true\n");
    assert!(wait_until(Duration::from_secs(10), || {
        let plan: Value = serde_json::from_str(&s.run_ok(&["plan", "--json"])).unwrap();
        plan["orphans"][0]["stop"] == true
    }));
    s.run_ok(&["once"]);
    assert!(!s.session_exists("agent_nobody-130000-abcdef"));
    assert!(!alive(pid), "the orphan's process survived");
}
