//! Process identity against real tmux: exactly the agent's processes stop, found by provable
//! evidence (pane tree, session, environment, open logs), and every bystander lives.

use super::*;
use crate::common::pinned::KillOnDrop;
use std::os::unix::process::CommandExt;
use std::process::Stdio;

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
            .process_group(0)
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
            .process_group(0)
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
    let _guard = KillOnDrop::new(own.clone());
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
    // away from the pane at once, but stays in the pane's session. The forks ignore the
    // SIGHUP the session's end sends, like a helper that outlives its terminal.
    s.start_session(
        &format!("agent_{id}"),
        &format!(
            "echo $$ > {}; trap '' TERM; while :; do (trap '' HUP; sleep 600 &); sleep 0.02; done",
            pane_f.display()
        ),
    );
    let pane = wait_pid(&pane_f);
    assert!(wait_until(Duration::from_secs(10), || session_members(
        pane
    )
    .len()
        > 5));
    let _guard = KillOnDrop::new(session_members(pane));
    s.run_ok(&["once"]);
    let left = session_members(pane);
    let _guard2 = KillOnDrop::new(left.clone());
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
    let _guard = KillOnDrop::new([holder]);
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
    let _guard = KillOnDrop::new([kept, cleared, work]);
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
fn a_log_hard_linked_to_another_file_makes_no_writer_the_agents() {
    let s = Sandbox::new();
    quick_config(&s, "");
    let id = "linker-130000-abcdef";
    write_task(&s.base(), TASK, json!([agent_entry(id, "completed")]));
    // The agent made its log a hard link to a file some unrelated process appends to.
    let outside = s.dir.path().join("service.log");
    fs::write(&outside, "{\"type\":\"result\",\"is_error\":false}\n").unwrap();
    let log = stream_log(&s, id);
    fs::hard_link(&outside, &log).unwrap();
    let service = Reap(
        Command::new("sh")
            .arg("-c")
            .arg("exec 3>>\"$0\"; exec sleep 600")
            .arg(&outside)
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap(),
    );
    let file = agent_reaper::procs::openfiles::file_id(&outside).unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        !agent_reaper::procs::openfiles::writers_of(&std::collections::HashSet::from([file]))
            .is_empty()
    }));
    s.run_ok(&["once"]);
    assert!(
        alive(service.0.id() as i32),
        "a writer of a file the log is hard-linked to was stopped"
    );
}
