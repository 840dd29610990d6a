//! procs against real tmux servers (private sockets) and real processes.

use crate::common::alive;
use crate::common::pinned::KillOnDrop;
use agent_reaper::model::AgentId;
use agent_reaper::procs::evidence::fresh_sets;
use agent_reaper::procs::openfiles::{file_id, writers_of};
use agent_reaper::procs::{
    Evidence, KillSession, ProcTable, SessionIdentity, SetContext, StopPolicy, StopRequest, Tmux,
    TmuxClient, TmuxSocket, agent_processes, agent_set, stop_all,
};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Polls `f` until it is true or `secs` pass; panics naming `what` on timeout.
fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A private tmux server on a socket in a temp dir; killed on drop.
struct Server {
    dir: tempfile::TempDir,
    client: TmuxClient,
}

impl Server {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let client = TmuxClient::new(
            "tmux",
            Some(TmuxSocket::Path(dir.path().join("sock"))),
            Duration::from_secs(5),
        );
        Server { dir, client }
    }

    fn tmux(&self) -> Command {
        let mut c = Command::new("tmux");
        c.env_remove("TMUX")
            .arg("-S")
            .arg(self.dir.path().join("sock"))
            .stdin(Stdio::null());
        c
    }

    fn new_session(&self, name: &str, cmd: &str) {
        let st = self
            .tmux()
            .args(["new-session", "-d", "-s", name, cmd])
            .status()
            .unwrap();
        assert!(st.success(), "tmux new-session {name}");
    }

    fn pane_pids(&self, name: &str) -> Vec<i32> {
        let snap = self.client.snapshot().unwrap();
        snap.sessions[name].live_pane_pids()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self
            .tmux()
            .arg("kill-server")
            .stderr(Stdio::null())
            .status();
    }
}

fn id(s: &str) -> AgentId {
    AgentId::parse(s).unwrap()
}

fn quick_policy() -> StopPolicy {
    StopPolicy {
        term_steps: vec![Duration::from_millis(200), Duration::from_millis(300)],
    }
}

fn descendants(table: &ProcTable, pid: i32) -> Vec<i32> {
    let mut v: Vec<i32> = table.descendants_and_self([pid]).into_iter().collect();
    v.sort();
    v
}

#[test]
fn tmux_kill_is_exact_and_snapshot_sees_panes() {
    let srv = Server::new();
    // No server yet: a definite "nothing there".
    assert!(srv.client.snapshot().unwrap().sessions.is_empty());
    assert_eq!(
        srv.client.kill_session("agent_x").unwrap(),
        KillSession::AlreadyGone
    );
    srv.new_session("agent_x", "sleep 300");
    srv.new_session("agent_xy", "sleep 300");
    let snap = srv.client.snapshot().unwrap();
    assert_eq!(
        snap.sessions.keys().collect::<Vec<_>>(),
        vec!["agent_x", "agent_xy"]
    );
    for s in snap.sessions.values() {
        assert_eq!(s.panes.len(), 1);
        assert!(s.created.is_some() && s.last_activity().is_some());
        assert!(alive(s.live_pane_pids()[0]));
    }
    assert_eq!(
        srv.client.kill_session("agent_x").unwrap(),
        KillSession::Killed
    );
    let snap = srv.client.snapshot().unwrap();
    assert_eq!(snap.sessions.keys().collect::<Vec<_>>(), vec!["agent_xy"]);
    // Neither a prefix nor a missing session is "killed".
    assert_eq!(
        srv.client.kill_session("agent_").unwrap(),
        KillSession::AlreadyGone
    );
    assert_eq!(
        srv.client.kill_session("agent_x").unwrap(),
        KillSession::AlreadyGone
    );
    assert!(
        srv.client
            .snapshot()
            .unwrap()
            .sessions
            .contains_key("agent_xy")
    );
}

#[test]
fn term_ignoring_process_is_sigkilled() {
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("trap '' TERM; : > \"$0\"; while :; do sleep 0.1; done")
        .arg(&ready)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let _guard = KillOnDrop::new([pid]);
    // Reap it as it dies, like its real parent would; otherwise it lingers as our zombie.
    let reaper = std::thread::spawn(move || child.wait());
    wait_for("trap installed", 10, || ready.exists());

    let table = ProcTable::scan().unwrap();
    let set = agent_processes(&table, &[pid], &id("ign-1"));
    assert!(set.iter().any(|k| k.pid == pid));
    let t = Instant::now();
    let reports = stop_all(
        &[StopRequest::new(id("ign-1"), set)],
        &table,
        &quick_policy(),
    );
    let r = &reports[0];
    assert!(r.escalated_to_sigkill, "{r:?}");
    assert!(r.survivors.is_empty(), "{r:?}");
    assert!(r.refused.is_empty(), "{r:?}");
    assert!(t.elapsed() >= Duration::from_millis(500));
    reaper.join().unwrap().unwrap();
    assert!(!alive(pid));
}

#[test]
fn three_level_tree_in_tmux_is_stopped_and_session_killed() {
    let srv = Server::new();
    let _pids = KillOnDrop::default();
    // `; :` keeps each shell from exec'ing its last command, so the tree stays three deep.
    srv.new_session("agent_tree-1", "sh -c 'sh -c \"sleep 300; :\"; :'");
    let pane = srv.pane_pids("agent_tree-1")[0];
    let mut table = ProcTable::scan().unwrap();
    wait_for("sleep under the pane", 10, || {
        table = ProcTable::scan().unwrap();
        descendants(&table, pane).iter().any(|&p| {
            table
                .get(p)
                .is_some_and(|i| i.cmdline.first().is_some_and(|c| c == "sleep"))
        })
    });
    let tree = descendants(&table, pane);
    assert!(tree.len() >= 3, "{tree:?}");
    let _pids = KillOnDrop::new(tree.clone());

    let set = agent_processes(&table, &[pane], &id("tree-1"));
    assert_eq!(set.iter().map(|k| k.pid).collect::<Vec<_>>(), tree);
    let r = &stop_all(
        &[StopRequest::new(id("tree-1"), set)],
        &table,
        &StopPolicy::default(),
    )[0];
    assert!(!r.escalated_to_sigkill, "{r:?}");
    assert_eq!(r.signalled.len(), tree.len());
    assert!(r.survivors.is_empty());
    for p in &tree {
        assert!(!alive(*p), "pid {p} survived");
    }
    // The pane died with its process; either answer means the session is gone.
    let k = srv.client.kill_session("agent_tree-1").unwrap();
    assert!(matches!(k, KillSession::Killed | KillSession::AlreadyGone));
    assert!(
        !srv.client
            .snapshot()
            .unwrap()
            .sessions
            .contains_key("agent_tree-1")
    );
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[test]
fn a_double_forked_writer_of_the_log_is_in_the_set_and_processes_naming_it_are_not() {
    let srv = Server::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("logs")).unwrap();
    let log: PathBuf = dir.path().join("logs/fork-1_stream.jsonl");
    std::fs::write(&log, b"{}\n").unwrap();
    let escapee_pid = dir.path().join("escapee.pid");
    // Escapes the pane's tree and session: a subshell starts a setsid'd sh that holds the
    // log open for appending, and exits, so the sh is reparented away from tmux.
    let cmd = format!(
        "(setsid sh -c 'exec 3>>\"$0\"; echo $$ > \"$1\"; sleep 300; :' '{}' '{}' </dev/null >/dev/null 2>&1 &); sleep 300; :",
        log.display(),
        escapee_pid.display()
    );
    srv.new_session("agent_fork-1", &cmd);
    let pane = srv.pane_pids("agent_fork-1")[0];
    // Bystanders that only name the log: a reader of it, a process with it in argv, and a
    // reader of its `.bak`.
    let spawn = |args: &[&str]| {
        Command::new(args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let log_s = log.to_string_lossy().into_owned();
    let bak = format!("{log_s}.bak");
    std::fs::write(&bak, b"x\n").unwrap();
    let mut bystanders = [
        spawn(&["tail", "-f", &log_s]),
        spawn(&["sh", "-c", "sleep 300; :", &log_s]),
        spawn(&["tail", "-f", &bak]),
    ];
    let by: Vec<i32> = bystanders.iter().map(|c| c.id() as i32).collect();
    let mut guard = KillOnDrop::new(by.clone());
    let log_id = agent_reaper::procs::openfiles::file_id(&log).unwrap();
    let mut table = ProcTable::scan().unwrap();
    let mut writers = Default::default();
    wait_for("the escapee to hold the log", 10, || {
        table = ProcTable::scan().unwrap();
        writers = writers_of(&HashSet::from([log_id]));
        read_pid(&escapee_pid).is_some_and(|p| {
            writers
                .get(&log_id)
                .is_some_and(|w: &Vec<i32>| w.contains(&p))
                && !table.children_of(p).is_empty()
        })
    });
    let escaped = read_pid(&escapee_pid).unwrap();
    let escaped_child = table.children_of(escaped)[0];
    for pid in [escaped, escaped_child, pane] {
        guard.push(pid);
    }
    assert!(!descendants(&table, pane).contains(&escaped));

    let snap = srv.client.snapshot().unwrap();
    let ctx = SetContext::new(&table, Some(&snap), &writers);
    let mut ev = Evidence::new(id("fork-1"));
    ev.panes = vec![table.get(pane).unwrap().key()];
    ev.logs = vec![log_id];
    let set = agent_set(&ctx, &ev, None);
    let pids: Vec<i32> = set.iter().map(|k| k.pid).collect();
    assert!(
        pids.contains(&escaped) && pids.contains(&escaped_child) && pids.contains(&pane),
        "{pids:?}"
    );
    for b in &by {
        assert!(!pids.contains(b), "bystander {b} in the set {pids:?}");
    }
    let r = &stop_all(
        &[StopRequest::new(id("fork-1"), set)],
        &table,
        &quick_policy(),
    )[0];
    assert!(r.survivors.is_empty(), "{r:?}");
    for p in [escaped, escaped_child, pane] {
        assert!(!alive(p), "pid {p} survived");
    }
    for b in &by {
        assert!(alive(*b), "bystander {b} was stopped");
    }
    drop(guard);
    for b in &mut bystanders {
        let _ = b.wait();
    }
}

#[test]
fn the_environment_names_the_pane_after_its_session_ended_but_not_once_cleared() {
    let srv = Server::new();
    let dir = tempfile::tempdir().unwrap();
    let (kept, cleared) = (dir.path().join("kept.pid"), dir.path().join("cleared.pid"));
    let setsid = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v setsid"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    // Two MCP-server-like helpers, double-forked out of the pane with setsid: one keeps the
    // environment it inherited, the other starts from an empty one. Neither holds a log.
    let cmd = format!(
        "(setsid sh -c 'echo $$ > \"$0\"; exec sleep 300' '{}' </dev/null >/dev/null 2>&1 &); \
         (env -i {setsid} sh -c 'echo $$ > \"$0\"; exec sleep 300' '{}' </dev/null >/dev/null 2>&1 &); \
         sleep 300; :",
        kept.display(),
        cleared.display()
    );
    srv.new_session("agent_env-1", &cmd);
    // An unrelated process in another pane of the same server.
    srv.new_session("work", "sleep 300; :");
    wait_for("both helpers", 10, || {
        read_pid(&kept).is_some() && read_pid(&cleared).is_some()
    });
    let (kept_pid, cleared_pid) = (read_pid(&kept).unwrap(), read_pid(&cleared).unwrap());
    let other_pane = srv.pane_pids("work")[0];
    let mut guard = KillOnDrop::new([kept_pid, cleared_pid, other_pane]);
    // What the daemon remembers while the session lives.
    let snap = srv.client.snapshot().unwrap();
    let session = &snap.sessions["agent_env-1"];
    let table = ProcTable::scan().unwrap();
    let identity = SessionIdentity {
        server: snap.server.clone().unwrap(),
        session_id: session.id.unwrap(),
        pane_ids: session.panes.iter().filter_map(|p| p.id).collect(),
        panes: session
            .live_pane_pids()
            .iter()
            .filter_map(|p| table.get(*p).map(|i| i.key()))
            .collect(),
    };
    let pane = session.live_pane_pids()[0];
    guard.push(pane);
    // The session ends; the helpers are orphans now.
    assert_eq!(
        srv.client.kill_session("agent_env-1").unwrap(),
        KillSession::Killed
    );
    wait_for("the pane to exit", 10, || !alive(pane));

    let snap = srv.client.snapshot().unwrap();
    let mut ev = Evidence::new(id("env-1"));
    ev.sessions = vec![identity];
    let writers = Default::default();
    let table = ProcTable::scan().unwrap();
    let ctx = SetContext::new(&table, Some(&snap), &writers);
    let env = ctx.read_environments();
    let set = agent_set(&ctx, &ev, Some(&env));
    let pids: Vec<i32> = set.iter().map(|k| k.pid).collect();
    // (The pane's own `sleep` may still be on its way out: it is the agent's too.)
    assert!(pids.contains(&kept_pid), "{pids:?}");
    assert!(
        !pids.contains(&cleared_pid) && !pids.contains(&other_pane),
        "{pids:?}"
    );
    for p in &pids {
        assert!(
            *p == kept_pid || table.get(*p).is_some_and(|i| i.sid == pane),
            "{p} is neither the helper nor in the pane's session: {pids:?}"
        );
    }
    // The same through a rescan, as the stopper makes it; then stopped.
    let logs = HashSet::new();
    let (_, sets) = fresh_sets(&ctx, &[&ev], &logs, Some(&mut Default::default())).unwrap();
    assert!(sets[0].iter().any(|k| k.pid == kept_pid), "{:?}", sets[0]);
    assert!(
        !sets[0].iter().any(|k| k.pid == cleared_pid),
        "{:?}",
        sets[0]
    );
    let r = &stop_all(
        &[StopRequest::new(id("env-1"), set)],
        &table,
        &quick_policy(),
    )[0];
    assert!(r.survivors.is_empty(), "{r:?}");
    assert!(
        !alive(kept_pid),
        "the helper with the pane's environment survived"
    );
    assert!(
        alive(cleared_pid),
        "the helper with a cleared environment was stopped"
    );
    assert!(alive(other_pane), "another pane's process was stopped");
    drop(guard);
}

#[test]
fn parent_agent_token_is_not_in_the_set_and_survives() {
    let target = "tok-120000-abcdef";
    let spawn = |label: String| {
        Command::new("sh")
            .arg("-c")
            .arg("sleep 300; :")
            .arg(label)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut mine = spawn(format!(
        "- Agent ID: {target}\n- Parent Agent: orchestrator"
    ));
    let mut child_agent = spawn(format!("- Agent ID: other-1\n- Parent Agent: {target}"));
    let mut longer = spawn(format!("- Agent ID: {target}x"));
    let all: Vec<i32> = [&mine, &child_agent, &longer]
        .iter()
        .map(|c| c.id() as i32)
        .collect();
    let _pids = KillOnDrop::new(all.clone());
    let mut table = ProcTable::scan().unwrap();
    wait_for("the three shells to start their sleeps", 10, || {
        table = ProcTable::scan().unwrap();
        all.iter().all(|&p| !table.children_of(p).is_empty())
    });

    let set = agent_processes(&table, &[], &id(target));
    let pids: Vec<i32> = set.iter().map(|k| k.pid).collect();
    assert!(pids.contains(&all[0]));
    assert!(
        !pids.contains(&all[1]) && !pids.contains(&all[2]),
        "{pids:?}"
    );
    let r = &stop_all(
        &[StopRequest::new(id(target), set)],
        &table,
        &quick_policy(),
    )[0];
    assert!(!r.escalated_to_sigkill);
    mine.wait().unwrap();
    assert!(alive(all[1]) && alive(all[2]));
    // The guard kills them with their sleeps; only then reap.
    drop(_pids);
    let _ = child_agent.wait();
    let _ = longer.wait();
}

#[test]
fn append_holder_is_a_writer_and_reader_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let w: &Path = &dir.path().join("progress.jsonl");
    let r: &Path = &dir.path().join("findings.jsonl");
    std::fs::write(r, b"{}\n").unwrap();
    let hold = |redir: &str, file: &Path| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("exec 3{redir}\"$0\"; exec sleep 300"))
            .arg(file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut writer = hold(">>", w);
    let mut reader = hold("<", r);
    let _pids = KillOnDrop::new([writer.id() as i32, reader.id() as i32]);
    wait_for("the append open", 10, || w.exists());
    let (wid, rid) = (file_id(w).unwrap(), file_id(r).unwrap());
    let wpid = writer.id() as i32;
    let mut got = Default::default();
    wait_for("the writer's fd to show", 10, || {
        got = writers_of(&HashSet::from([wid, rid]));
        got.get(&wid).is_some_and(|v: &Vec<i32>| v.contains(&wpid))
    });
    assert!(!got.contains_key(&rid), "{got:?}");
    let _ = writer.kill();
    let _ = reader.kill();
    let _ = writer.wait();
    let _ = reader.wait();
}

/// The tests' own cleanup signals only the processes it pinned: one still running is
/// killed, and after one has exited and been reaped nothing is sent to its old pid.
#[test]
fn test_cleanup_kills_only_the_processes_it_pinned() {
    use crate::common::pinned::{Pinned, signal_child};
    use nix::sys::signal::Signal;
    use std::os::unix::process::ExitStatusExt;
    let mut running = Command::new("sleep").arg("60").spawn().unwrap();
    let pinned = Pinned::new(running.id() as i32);
    assert!(pinned.is_running());
    pinned.kill();
    assert_eq!(running.wait().unwrap().signal(), Some(9));
    assert!(!pinned.is_running(), "an exited process is not running");

    let mut done = Command::new("true").spawn().unwrap();
    let pinned = Pinned::new(done.id() as i32);
    assert!(done.wait().unwrap().success());
    assert!(!pinned.is_running());
    assert!(
        !signal_child(&done, Signal::SIGTERM),
        "a reaped child's pid is not signalled"
    );
    let mut live = Command::new("sleep").arg("60").spawn().unwrap();
    assert!(signal_child(&live, Signal::SIGTERM));
    assert_eq!(live.wait().unwrap().signal(), Some(15));
}
