//! `once` against real tmux sessions and real processes: exactly the agent's processes stop, bystanders live.

mod common;

use common::*;
use serde_json::{Value, json};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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

fn alive(pid: i32) -> bool {
    // Gone, or a zombie nobody reaped yet (PID 1 in a container may never reap): not running.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        }
        Err(_) => false,
    }
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

/// Kills a spawned helper process when the test ends, passed or not.
struct Reap(Child);
impl Drop for Reap {
    fn drop(&mut self) {
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

/// Pids of live processes whose session id is `sid` (a pane's session, forks included).
fn session_members(sid: i32) -> Vec<i32> {
    let table = agent_reaper::procs::ProcTable::scan().unwrap();
    table
        .iter()
        .filter(|p| p.sid == sid && p.state != 'Z')
        .map(|p| p.pid)
        .collect()
}

/// Spawns `sh -c 'sleep 600; :' <label>`: a process whose argv says `label`.
fn labelled(label: &str) -> Reap {
    Reap(
        Command::new("sh")
            .arg("-c")
            .arg("sleep 600; :")
            .arg(label)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn spawn(args: &[&str]) -> Reap {
    Reap(
        Command::new(args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn wait_pid(path: &Path) -> i32 {
    assert!(
        wait_until(Duration::from_secs(10), || !read_pids(path).is_empty()),
        "no pid in {}",
        path.display()
    );
    read_pids(path)[0]
}

/// SIGKILLs what a test started through tmux or setsid (outside any `Reap`), even on panic.
struct KillOnDrop(Vec<i32>);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if alive(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

#[test]
fn every_bystander_survives_while_the_agents_own_processes_stop() {
    let s = Sandbox::new();
    quick_config(&s, "");
    let b = "impl-130000-bbbbbb";
    let child = "child-130000-cccccc";
    write_task(
        &s.base(),
        TASK,
        json!([agent_entry(b, "completed"), agent_entry(child, "working")]),
    );
    let log = stream_log(&s, b);
    fs::write(&log, "{\"type\":\"result\",\"is_error\":false}\n").unwrap();
    let logs = log.display().to_string();
    let bak = format!("{logs}.bak");
    fs::write(&bak, "old\n").unwrap();
    let dir = s.dir.path();
    let (pane_f, child_f, tee_f) = (dir.join("pane"), dir.join("child"), dir.join("tee"));
    // B's pane: a forked child, and the stream piped through `tee` into its log.
    s.start_session(
        &format!("agent_{b}"),
        &format!(
            "echo $$ > {}; sleep 600 & echo $! > {}; sleep 600 | tee -a {logs} > /dev/null & echo $! > {}; wait",
            pane_f.display(),
            child_f.display(),
            tee_f.display()
        ),
    );
    // A child agent in its own live session whose prompt quotes B's stream log and id.
    s.start_session(
        &format!("agent_{child}"),
        &format!("exec sh -c 'sleep 600; :' 'Parent log: {logs}\nParent Agent ID: {b}'"),
    );
    let bystanders = [
        labelled(&format!("You are a helper, spawned by Agent ID: {b}")),
        labelled(&format!("PARENT Agent ID: {b}\nAgent ID: other-1")),
        labelled(&format!("Agent ID: {b}x")),
        spawn(&["tail", "-f", &logs]),
        spawn(&["tail", "-f", &bak]),
    ];
    let own: Vec<i32> = [&pane_f, &child_f, &tee_f]
        .iter()
        .map(|f| wait_pid(f))
        .collect();
    let _guard = KillOnDrop(own.clone());
    s.run_ok(&["once"]);
    for pid in &own {
        assert!(!alive(*pid), "B's process {pid} survived");
    }
    for by in &bystanders {
        assert!(
            alive(by.0.id() as i32),
            "bystander {:?} was stopped",
            by.0.id()
        );
    }
    assert!(
        s.session_exists(&format!("agent_{child}")),
        "the child agent's session was killed"
    );
    let a = agent(&s, 0);
    let record = &a["auto_cleanup_result"];
    assert_eq!(record["success"], true, "{a:#}");
    assert_eq!(record["verified_no_zombies"], true, "{a:#}");
    assert_eq!(agent(&s, 1)["status"], "working");
}

#[test]
fn cross_task_and_duplicate_ids_stop_nothing() {
    let s = Sandbox::new();
    quick_config(&s, "");
    let shared = "shared-130000-aaaaaa";
    let twice = "twice-130000-bbbbbb";
    // Task 1 runs `shared`; task 2 wrongly lists it as completed, and lists `twice` twice.
    write_task(&s.base(), TASK, json!([agent_entry(shared, "working")]));
    let other = "TASK-20261127-130000-0000cccc";
    write_task(
        &s.base(),
        other,
        json!([
            agent_entry(shared, "completed"),
            agent_entry(twice, "completed"),
            agent_entry(twice, "completed")
        ]),
    );
    for id in [shared, twice] {
        fs::write(
            s.task(other).join(format!("logs/{id}_stream.jsonl")),
            "{\"type\":\"result\",\"is_error\":false}\n",
        )
        .unwrap();
        s.start_session(&format!("agent_{id}"), "sleep 600");
    }
    age_files(&s.base());
    let before = snapshot_tree(&s.base());
    let out = s.run_ok(&["once"]);
    assert!(out.contains("ambiguous"), "{out}");
    for id in [shared, twice] {
        assert!(
            s.session_exists(&format!("agent_{id}")),
            "{id}'s session was killed"
        );
    }
    assert_eq!(
        snapshot_tree(&s.base()),
        before,
        "a registry or log changed"
    );
}

#[test]
fn a_dotted_id_runs_unharmed_and_is_cleaned_after_it_finishes() {
    let s = Sandbox::new();
    quick_config(&s, "");
    let id = "api.v2-130000-dddddd";
    write_task(&s.base(), TASK, json!([agent_entry(id, "working")]));
    let log = stream_log(&s, id);
    fs::write(&log, "{\"type\":\"system\"}\n").unwrap();
    // Started under the name the orchestrator asks for; tmux stores it with `_`.
    s.start_session(
        &format!("agent_{id}"),
        &format!("sleep 600 | tee -a {} > /dev/null", log.display()),
    );
    let stored = "agent_api_v2-130000-dddddd";
    assert!(s.session_exists(stored), "tmux did not rename the session");
    assert!(!s.session_exists(&format!("agent_{id}")));
    let out = s.run_ok(&["once"]);
    let a = agent(&s, 0);
    assert_eq!(a["status"], "working", "{a:#}\n{out}");
    assert!(s.session_exists(stored));
    assert!(log.exists(), "the log was archived while tee wrote it");
    let plan: Value = serde_json::from_str(&s.run_ok(&["plan", "--json"])).unwrap();
    assert_eq!(plan["tasks"][0]["agents"][0]["class"], "active", "{plan:#}");
    assert!(
        plan["orphans"].as_array().is_none_or(|o| o.is_empty()),
        "its session is reported as an orphan: {plan:#}"
    );
    // It finishes: result line, registry says completed.
    fs::write(
        &log,
        "{\"type\":\"system\"}\n{\"type\":\"result\",\"is_error\":false}\n",
    )
    .unwrap();
    write_task(&s.base(), TASK, json!([agent_entry(id, "completed")]));
    s.run_ok(&["once"]);
    assert!(!s.session_exists(stored));
    let a = agent(&s, 0);
    assert_eq!(a["auto_cleanup_result"]["success"], true, "{a:#}");
    assert!(!log.exists(), "the log was not archived");
}

#[test]
fn a_continuous_forker_is_stopped_with_every_fork() {
    let s = Sandbox::new();
    quick_config(&s, "");
    let id = "forker-130000-eeeeee";
    finished(&s, id);
    let pane_f = s.dir.path().join("pane");
    // Ignores SIGTERM and forks a detached `sleep` every 20 ms: each fork is reparented
    // away from the pane at once, but stays in the pane's session.
    s.start_session(
        &format!("agent_{id}"),
        &format!(
            "echo $$ > {}; trap '' TERM; while :; do (sleep 600 &); sleep 0.02; done",
            pane_f.display()
        ),
    );
    let pane = wait_pid(&pane_f);
    assert!(wait_until(Duration::from_secs(10), || session_members(
        pane
    )
    .len()
        > 5));
    let _guard = KillOnDrop(session_members(pane));
    s.run_ok(&["once"]);
    let left = session_members(pane);
    let _guard2 = KillOnDrop(left.clone());
    assert!(left.is_empty(), "left behind: {left:?}");
    let record = &agent(&s, 0)["auto_cleanup_result"];
    assert_eq!(record["verified_no_zombies"], true, "{record:#}");
    assert_eq!(record["success"], true, "{record:#}");
}

#[test]
fn a_setsid_double_forker_holding_the_log_is_stopped() {
    let s = Sandbox::new();
    quick_config(&s, "");
    let id = "holder-130000-ffffff";
    finished(&s, id);
    let log = stream_log(&s, id);
    let pid_f = s.dir.path().join("holder");
    // Out of the pane's tree and session, with an empty environment: only the open log
    // ties it to the agent.
    s.start_session(
        &format!("agent_{id}"),
        &format!(
            "(env -i $(command -v setsid) sh -c 'exec 3>>\"$0\"; echo $$ > \"$1\"; exec sleep 600' {} {} </dev/null >/dev/null 2>&1 &); sleep 600",
            log.display(),
            pid_f.display()
        ),
    );
    let holder = wait_pid(&pid_f);
    let _guard = KillOnDrop(vec![holder]);
    s.run_ok(&["once"]);
    assert!(!alive(holder), "the process holding the log survived");
    let record = &agent(&s, 0)["auto_cleanup_result"];
    assert_eq!(record["success"], true, "{record:#}");
    assert!(
        !log.exists(),
        "the log was not archived once its writer was gone"
    );
}

#[test]
fn a_helper_orphaned_before_the_cleaning_pass_is_found_by_its_environment() {
    let s = Sandbox::new();
    quick_config(&s, "");
    let id = "mcp-130000-abcdef";
    write_task(&s.base(), TASK, json!([agent_entry(id, "working")]));
    let (kept_f, cleared_f) = (s.dir.path().join("kept"), s.dir.path().join("cleared"));
    // Two MCP-server-like helpers, setsid + double fork, holding nothing of the agent's:
    // one keeps the pane's environment, one starts from an empty one.
    s.start_session(
        &format!("agent_{id}"),
        &format!(
            "(setsid sh -c 'echo $$ > \"$0\"; exec sleep 600' {} </dev/null >/dev/null 2>&1 &); \
             (env -i $(command -v setsid) sh -c 'echo $$ > \"$0\"; exec sleep 600' {} </dev/null >/dev/null 2>&1 &); \
             sleep 600",
            kept_f.display(),
            cleared_f.display()
        ),
    );
    // An unrelated process in another pane of the same tmux server.
    let work_f = s.dir.path().join("work");
    s.start_session(
        "work",
        &format!("echo $$ > {}; sleep 600", work_f.display()),
    );
    let (kept, cleared, work) = (wait_pid(&kept_f), wait_pid(&cleared_f), wait_pid(&work_f));
    let _guard = KillOnDrop(vec![kept, cleared, work]);
    // A pass while it runs: the reaper remembers its session.
    s.run_ok(&["once"]);
    assert_eq!(agent(&s, 0)["status"], "working");
    // The session ends (the pane dies); the helpers live on, reparented away.
    let ok = s
        .tmux()
        .args(["kill-session", "-t", &format!("=agent_{id}")])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    // The orchestrator marks it completed afterwards.
    fs::write(
        stream_log(&s, id),
        "{\"type\":\"result\",\"is_error\":false}\n",
    )
    .unwrap();
    write_task(&s.base(), TASK, json!([agent_entry(id, "completed")]));
    s.run_ok(&["once"]);
    assert!(
        !alive(kept),
        "the helper carrying the pane's environment survived"
    );
    assert!(
        alive(cleared),
        "a process with a cleared environment was stopped"
    );
    assert!(alive(work), "a process of another pane was stopped");
    let record = &agent(&s, 0)["auto_cleanup_result"];
    assert_eq!(record["success"], true, "{record:#}");
    assert_eq!(record["verified_no_zombies"], true, "{record:#}");
    // The record says what was checked, and nothing more.
    let checked = record["processes_checked"].to_string();
    assert!(
        checked.contains("environment naming tmux server"),
        "{record:#}"
    );
    assert!(checked.contains("writers of"), "{record:#}");
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
