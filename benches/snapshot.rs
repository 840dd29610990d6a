//! Costs of one round's process truth: /proc scan, tmux snapshot, open-file scan, stopping
//! many agents at once. `cargo bench --bench snapshot` (prints a table).

use agent_reaper::model::AgentId;
use agent_reaper::procs::evidence::fresh_sets;
use agent_reaper::procs::openfiles::{file_id, writers_of};
use agent_reaper::procs::stop::stop_all_rescanning;
use agent_reaper::procs::{
    Evidence, ProcTable, SessionIdentity, SetContext, StopPolicy, StopRequest, Tmux, TmuxClient,
    TmuxSocket, agent_processes, agent_set, stop_all,
};
use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const EXTRA_PROCS: usize = 1000;
const SESSIONS: usize = 200;
const AGENTS: usize = 50;
/// Each stop figure is the median of this many runs (fresh sessions each time).
const STOP_RUNS: usize = 3;

/// Kills and reaps the spawned sleeps and the private tmux servers, even on panic.
struct Cleanup {
    children: Vec<Child>,
    sockets: Vec<std::path::PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
        for s in &self.sockets {
            let _ = tmux(s).arg("kill-server").stderr(Stdio::null()).status();
        }
    }
}

fn tmux(sock: &std::path::Path) -> Command {
    let mut c = Command::new("tmux");
    c.env_remove("TMUX")
        .arg("-S")
        .arg(sock)
        .stdin(Stdio::null());
    c
}

/// Creates sessions `prefix0..prefixN` running `cmd`, in batches of chained tmux commands.
fn new_sessions(sock: &std::path::Path, prefix: &str, n: usize, cmd: &str) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
        let mut c = tmux(sock);
        for (k, i) in chunk.iter().enumerate() {
            if k > 0 {
                c.arg(";");
            }
            c.args(["new-session", "-d", "-s", &format!("{prefix}{i}"), cmd]);
        }
        assert!(c.status().unwrap().success(), "tmux new-session batch");
    }
}

/// min / median / max of `runs` timed calls.
fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, Duration, Duration) {
    let mut v: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed()
        })
        .collect();
    v.sort();
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

fn row(what: &str, (min, med, max): (Duration, Duration, Duration)) {
    println!(
        "{what:<60} {:>9.2} {:>9.2} {:>9.2}",
        min.as_secs_f64() * 1e3,
        med.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let mut cleanup = Cleanup {
        children: Vec::new(),
        sockets: Vec::new(),
    };
    let base = ProcTable::scan().unwrap().len();
    for _ in 0..EXTRA_PROCS {
        cleanup.children.push(
            Command::new("sleep")
                .arg("600")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    let big = dir.path().join("big.sock");
    cleanup.sockets.push(big.clone());
    new_sessions(&big, "agent_bench-", SESSIONS, "sleep 600");
    let client = TmuxClient::new("tmux", Some(TmuxSocket::Path(big)), Duration::from_secs(5));
    let table = ProcTable::scan().unwrap();
    println!(
        "processes in /proc: {} (base {base} + {EXTRA_PROCS} sleeps + {SESSIONS} panes); tmux sessions: {}",
        table.len(),
        client.snapshot().unwrap().sessions.len()
    );
    println!(
        "{:<60} {:>9} {:>9} {:>9}",
        "operation (ms)", "min", "median", "max"
    );
    row("ProcTable::scan()", time(20, || ProcTable::scan().unwrap()));
    row(
        &format!("TmuxClient::snapshot() ({SESSIONS} sessions)"),
        time(20, || client.snapshot().unwrap()),
    );
    let log = dir.path().join("x_stream.jsonl");
    let _held = std::fs::File::create(&log).unwrap();
    let cand = HashSet::from([file_id(&log).unwrap()]);
    row(
        "writers_of(1 candidate), all /proc/*/fd",
        time(10, || writers_of(&cand)),
    );
    let snap = client.snapshot().unwrap();
    let agents: Vec<(AgentId, Vec<i32>)> = snap
        .sessions
        .values()
        .take(AGENTS)
        .map(|s| {
            let id = AgentId::parse(s.name.trim_start_matches("agent_")).unwrap();
            (id, s.live_pane_pids())
        })
        .collect();
    row(
        "SetContext::read_environments() (every candidate)",
        time(10, || {
            let writers = Default::default();
            SetContext::new(&table, Some(&snap), &writers)
                .read_environments()
                .read
        }),
    );
    row(
        "agent_processes() x 50 agents on one table",
        time(10, || {
            agents
                .iter()
                .map(|(id, panes)| agent_processes(&table, panes, id).len())
                .sum::<usize>()
        }),
    );

    // Stopping: agents whose panes run `sh -c 'sleep 600; :'` (sh and sleep both exit on TERM).
    // `stop_all` alone (the figure before rescans existed), then the stop as `once` runs it:
    // rescans for newcomers (table, writers of each agent's log, environments) and the
    // fresh look after the last signal.
    for (n, label, full) in [
        (1usize, "stop_all(1 agent)", false),
        (AGENTS, "stop_all(50 agents at once)", false),
        (
            AGENTS,
            "stop 50 agents as once does (rescans, last look)",
            true,
        ),
    ] {
        let mut took = Vec::new();
        let mut procs = 0;
        for run in 0..STOP_RUNS {
            let (t, p) = stop_once(&dir, &mut cleanup, n, full, run);
            took.push(t);
            procs = p;
        }
        took.sort();
        row(
            &format!("{label}, {procs} procs"),
            (took[0], took[took.len() / 2], took[took.len() - 1]),
        );
    }
    println!("goal: the stop as once does it within 2x of stop_all(50 agents at once)");
}

/// Starts `n` agent sessions and stops them; returns how long the stop took and how many
/// processes it stopped.
fn stop_once(
    dir: &tempfile::TempDir,
    cleanup: &mut Cleanup,
    n: usize,
    full: bool,
    run: usize,
) -> (Duration, usize) {
    let sock = dir.path().join(format!("stop{n}{full}{run}.sock"));
    cleanup.sockets.push(sock.clone());
    new_sessions(&sock, "agent_stop-", n, "sh -c 'sleep 600; :'");
    let c = TmuxClient::new("tmux", Some(TmuxSocket::Path(sock)), Duration::from_secs(5));
    let snap = c.snapshot().unwrap();
    let mut table = ProcTable::scan().unwrap();
    wait_for("every pane to have its sleep", || {
        table = ProcTable::scan().unwrap();
        snap.sessions.values().all(|s| {
            s.live_pane_pids()
                .iter()
                .all(|&p| table.descendants_and_self([p]).len() >= 2)
        })
    });
    let writers = Default::default();
    let ctx = SetContext::new(&table, Some(&snap), &writers);
    let logs: Vec<_> = (0..n)
        .map(|i| {
            let p = dir
                .path()
                .join(format!("stop{n}{full}{run}-{i}_stream.jsonl"));
            std::fs::write(&p, b"{}\n").unwrap();
            file_id(&p).unwrap()
        })
        .collect();
    let evidence: Vec<Evidence> = snap
        .sessions
        .values()
        .zip(&logs)
        .map(|(s, log)| {
            let mut ev =
                Evidence::new(AgentId::parse(s.name.trim_start_matches("agent_")).unwrap());
            ev.panes = s
                .live_pane_pids()
                .iter()
                .filter_map(|p| table.get(*p).map(|i| i.key()))
                .collect();
            ev.sessions = vec![SessionIdentity {
                server: snap.server.clone().unwrap(),
                session_id: s.id.unwrap(),
                pane_ids: s.panes.iter().filter_map(|p| p.id).collect(),
                panes: ev.panes.clone(),
            }];
            ev.logs = vec![*log];
            ev
        })
        .collect();
    let requests: Vec<StopRequest> = evidence
        .iter()
        .map(|ev| StopRequest::new(ev.id.clone(), agent_set(&ctx, ev, None)))
        .collect();
    let procs: usize = requests.iter().map(|r| r.processes.len()).sum();
    let t = Instant::now();
    let reports = if full {
        let refs: Vec<&Evidence> = evidence.iter().collect();
        let log_set: HashSet<_> = logs.iter().copied().collect();
        let mut cache = Default::default();
        let mut rescan = || fresh_sets(&ctx, &refs, &log_set, Some(&mut cache));
        let reports = stop_all_rescanning(&requests, &table, &StopPolicy::default(), &mut rescan);
        let (fresh, sets) = rescan().unwrap();
        assert!(
            sets.iter()
                .flatten()
                .all(|k| fresh.get(k.pid).is_none_or(|p| p.state == 'Z')),
            "the last look found survivors"
        );
        reports
    } else {
        stop_all(&requests, &table, &StopPolicy::default())
    };
    let took = t.elapsed();
    assert!(
        reports
            .iter()
            .all(|r| r.survivors.is_empty() && !r.escalated_to_sigkill)
    );
    let _ = tmux(cleanup.sockets.last().unwrap())
        .arg("kill-server")
        .stderr(Stdio::null())
        .status();
    (took, procs)
}
