//! procs against real tmux servers (private sockets) and real processes.

use agent_reaper::model::AgentId;
use agent_reaper::procs::openfiles::{file_id, writers_of};
use agent_reaper::procs::{
    KillSession, ProcTable, StopPolicy, StopRequest, Tmux, TmuxClient, TmuxSocket, agent_processes,
    stop_all,
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

/// Alive = present and not a zombie (a zombie is dead; pid 1 here may never reap it).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| agent_reaper::procs::table::parse_stat(&s))
        .is_some_and(|s| s.state != 'Z')
}

/// SIGKILLs whatever test processes (and their descendants) are still alive when a test
/// ends, even on panic: a leaked `sleep` would hold the test harness's stdout open.
#[derive(Default)]
struct Pids(Vec<i32>);

impl Drop for Pids {
    fn drop(&mut self) {
        let table = ProcTable::scan().unwrap_or_default();
        for pid in table.descendants_and_self(self.0.iter().copied()) {
            if alive(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
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
    let _guard = Pids(vec![pid]);
    // Reap it as it dies, like its real parent would; otherwise it lingers as our zombie.
    let reaper = std::thread::spawn(move || child.wait());
    wait_for("trap installed", 10, || ready.exists());

    let table = ProcTable::scan().unwrap();
    let set = agent_processes(&table, &[pid], None, &id("ign-1"));
    assert!(set.iter().any(|k| k.pid == pid));
    let t = Instant::now();
    let reports = stop_all(
        &[StopRequest {
            agent: id("ign-1"),
            processes: set,
        }],
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
    let _pids = Pids::default();
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
    let _pids = Pids(tree.clone());

    let set = agent_processes(&table, &[pane], None, &id("tree-1"));
    assert_eq!(set.iter().map(|k| k.pid).collect::<Vec<_>>(), tree);
    let r = &stop_all(
        &[StopRequest {
            agent: id("tree-1"),
            processes: set,
        }],
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

/// Processes naming `needle`, leaving out tmux itself: the server's argv is the first
/// session's command, which names the log too (and is never part of an agent's set).
fn pids_naming(table: &ProcTable, needle: &str) -> Vec<i32> {
    let is_tmux = |p: &agent_reaper::procs::ProcInfo| {
        p.cmdline
            .first()
            .is_some_and(|a| a.rsplit('/').next().is_some_and(|n| n.starts_with("tmux")))
    };
    let mut v: Vec<i32> = table
        .iter()
        .filter(|p| p.state != 'Z' && !is_tmux(p) && p.cmdline.iter().any(|a| a.contains(needle)))
        .map(|p| p.pid)
        .collect();
    v.sort();
    v
}

#[test]
fn double_forked_process_naming_the_log_is_found_and_stopped() {
    let srv = Server::new();
    let dir = tempfile::tempdir().unwrap();
    let log: PathBuf = dir.path().join("logs/fork-1_stream.jsonl");
    // Escapes the pane's tree: a subshell starts a setsid'd sh in the background and exits,
    // so the sh is reparented away from tmux. Its argv ($0) names the stream log.
    let cmd = format!(
        "(setsid sh -c 'sleep 300; :' '{}' </dev/null >/dev/null 2>&1 &); sleep 300; :",
        log.display()
    );
    srv.new_session("agent_fork-1", &cmd);
    let pane = srv.pane_pids("agent_fork-1")[0];
    let needle = log.to_string_lossy().into_owned();
    let mut table = ProcTable::scan().unwrap();
    // The pane's own shell names the log too; the escapee is the one outside its tree.
    let escapee = |table: &ProcTable| {
        let inside = descendants(table, pane);
        pids_naming(table, &needle)
            .into_iter()
            .find(|p| *p != pane && !inside.contains(p))
    };
    wait_for("the escaped process and its sleep", 10, || {
        table = ProcTable::scan().unwrap();
        escapee(&table).is_some_and(|p| !table.children_of(p).is_empty())
    });
    let escaped = escapee(&table).unwrap();
    let escaped_child = table.children_of(escaped)[0];
    let _pids = Pids(vec![escaped, escaped_child, pane]);
    assert!(!descendants(&table, pane).contains(&escaped));

    let set = agent_processes(&table, &[pane], Some(&log), &id("fork-1"));
    let pids: Vec<i32> = set.iter().map(|k| k.pid).collect();
    assert!(
        pids.contains(&escaped) && pids.contains(&escaped_child),
        "{pids:?}"
    );
    let r = &stop_all(
        &[StopRequest {
            agent: id("fork-1"),
            processes: set,
        }],
        &table,
        &quick_policy(),
    )[0];
    assert!(r.survivors.is_empty(), "{r:?}");
    for p in [escaped, escaped_child, pane] {
        assert!(!alive(p), "pid {p} survived");
    }
    // An orphan whose new parent never reaps it stays defunct and is reported with that parent.
    for (pid, ppid) in &r.defunct {
        assert!(pids.contains(pid));
        assert!(*ppid > 0);
    }
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
    let _pids = Pids(all.clone());
    let mut table = ProcTable::scan().unwrap();
    wait_for("the three shells to start their sleeps", 10, || {
        table = ProcTable::scan().unwrap();
        all.iter().all(|&p| !table.children_of(p).is_empty())
    });

    let set = agent_processes(&table, &[], None, &id(target));
    let pids: Vec<i32> = set.iter().map(|k| k.pid).collect();
    assert!(pids.contains(&all[0]));
    assert!(
        !pids.contains(&all[1]) && !pids.contains(&all[2]),
        "{pids:?}"
    );
    let r = &stop_all(
        &[StopRequest {
            agent: id(target),
            processes: set,
        }],
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
    let _pids = Pids(vec![writer.id() as i32, reader.id() as i32]);
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
