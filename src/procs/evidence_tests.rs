//! Unit tests of the process-set rules on synthetic process tables.

use super::*;
use crate::procs::environ::PaneTag;
use crate::procs::tmux::{PaneInfo, SessionInfo};

fn uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

fn p(pid: i32, ppid: i32, pgid: i32, sid: i32, cmd: &[&str]) -> ProcInfo {
    ProcInfo {
        pid,
        ppid,
        pgid,
        sid,
        state: 'S',
        start_time: 1000 + pid as u64,
        uid: uid(),
        cmdline: cmd.iter().map(|s| s.to_string()).collect(),
    }
}

fn key(pid: i32) -> ProcKey {
    ProcKey {
        pid,
        start_time: 1000 + pid as u64,
    }
}

fn pids(keys: &[ProcKey]) -> Vec<i32> {
    keys.iter().map(|k| k.pid).collect()
}

fn server() -> TmuxServer {
    TmuxServer {
        socket: "/tmp/sock".into(),
        pid: 10,
    }
}

fn snapshot(sessions: &[(&str, u32, &[i32])]) -> TmuxSnapshot {
    let mut s = TmuxSnapshot {
        server: Some(server()),
        ..Default::default()
    };
    for (name, id, panes) in sessions {
        s.sessions.insert(
            name.to_string(),
            SessionInfo {
                name: name.to_string(),
                id: Some(*id),
                created: None,
                activity: None,
                panes: panes
                    .iter()
                    .map(|&pid| PaneInfo {
                        pid: Some(pid),
                        id: Some(pid as u32),
                        dead: false,
                        window_activity: None,
                    })
                    .collect(),
            },
        );
    }
    s
}

const B: &str = "impl-120000-abcdef";

/// B's pane (20) with claude (21), node (22), tee (23) and a forked child (24) that left
/// for its own group; bystanders around it.
fn world() -> ProcTable {
    ProcTable::from_procs(vec![
        p(1, 0, 1, 1, &["init"]),
        p(
            10,
            1,
            10,
            10,
            &[
                "tmux",
                "new-session",
                "-d",
                "claude | tee /w/logs/B_stream.jsonl",
            ],
        ),
        p(
            20,
            10,
            20,
            20,
            &["bash", "-c", "claude | tee /w/logs/B_stream.jsonl"],
        ),
        p(21, 20, 20, 20, &["claude"]),
        p(22, 21, 20, 20, &["node"]),
        p(23, 20, 20, 20, &["tee", "/w/logs/B_stream.jsonl"]),
        p(24, 21, 24, 20, &["mcp-server"]),
        // Orphaned to init but still in the pane's session.
        p(25, 1, 25, 20, &["helper"]),
        // A child agent in its own live session whose prompt quotes B's log and id.
        p(
            30,
            10,
            30,
            30,
            &[
                "claude",
                "-p",
                &format!("Parent log /w/logs/B_stream.jsonl\nAgent ID: {B}"),
            ],
        ),
        // Prompts naming B as someone else's parent.
        p(
            40,
            1,
            40,
            40,
            &["claude", "-p", &format!("spawned by Agent ID: {B}")],
        ),
        p(
            41,
            1,
            41,
            41,
            &["claude", "-p", &format!("PARENT Agent ID: {B}")],
        ),
        p(42, 1, 42, 42, &["claude", "-p", &format!("Agent ID: {B}x")]),
        // A pager and a reader of B's log, a reader of its .bak.
        p(50, 1, 50, 50, &["less", "/w/logs/B_stream.jsonl"]),
        p(51, 1, 51, 51, &["tail", "-f", "/w/logs/B_stream.jsonl"]),
        p(52, 1, 52, 52, &["cat", "/w/logs/B_stream.jsonl.bak"]),
        // Old orchestrator: the prompt in argv, token bounded on both sides.
        p(
            60,
            1,
            60,
            60,
            &["claude", "-p", &format!("You are... - Agent ID: {B}\nGo")],
        ),
        p(61, 60, 60, 60, &["sleep"]),
        // An unrelated process in another pane of the same server.
        p(70, 10, 70, 70, &["vim"]),
    ])
}

#[test]
fn bystanders_stay_out_and_own_processes_are_in() {
    let table = world();
    let snap = snapshot(&[
        (&format!("agent_{B}"), 1, &[20]),
        ("agent_child", 2, &[30]),
        ("user", 3, &[70]),
    ]);
    let writers = HashMap::new();
    let ctx = SetContext::new(&table, Some(&snap), &writers);
    let mut ev = Evidence::new(AgentId::parse(B).unwrap());
    ev.panes = vec![
        key(20),
        ProcKey {
            pid: 70,
            start_time: 1,
        },
    ];
    assert_eq!(
        pids(&agent_set(&ctx, &ev, None)),
        vec![20, 21, 22, 23, 24, 25, 60, 61]
    );
}

#[test]
fn writers_of_own_logs_and_environment_are_evidence() {
    let mut procs = vec![
        p(1, 0, 1, 1, &["init"]),
        p(10, 1, 10, 10, &["tmux"]),
        // setsid double-forker holding the log, and one holding only the environment.
        p(80, 1, 80, 80, &["python3", "hold"]),
        p(81, 1, 81, 81, &["mcp"]),
        p(82, 81, 81, 81, &["mcp-child"]),
        // Same session number, other server: a stranger.
        p(83, 1, 83, 83, &["other"]),
        // Cleared its environment, holds nothing: not found.
        p(84, 1, 84, 84, &["cleared"]),
        // Writer of B's log inside another live session's pane: that session's.
        p(90, 10, 90, 90, &["sh"]),
        p(91, 90, 90, 90, &["cat"]),
    ];
    let mut other_user = p(85, 1, 85, 85, &["root-thing"]);
    other_user.uid = uid() + 1;
    procs.push(other_user);
    let table = ProcTable::from_procs(procs);
    let snap = snapshot(&[("agent_C", 5, &[90])]);
    let log = (1u64, 2u64);
    let writers = HashMap::from([(log, vec![80, 91])]);
    let mut env = EnvIndex::default();
    let tag = |server: TmuxServer, pane| PaneTag {
        server,
        session: 1,
        pane,
    };
    env.insert(81, tag(server(), Some(3)));
    env.insert(82, tag(server(), None));
    env.insert(
        83,
        tag(
            TmuxServer {
                socket: "/tmp/sock".into(),
                pid: 11,
            },
            Some(3),
        ),
    );
    env.insert(85, tag(server(), Some(3)));
    let ctx = SetContext::new(&table, Some(&snap), &writers);
    let mut ev = Evidence::new(AgentId::parse(B).unwrap());
    ev.logs = vec![log];
    ev.sessions = vec![SessionIdentity {
        server: server(),
        session_id: 1,
        pane_ids: vec![3],
        panes: vec![key(20)],
    }];
    let expected = if uid() == 0 {
        vec![80, 81, 82, 85]
    } else {
        vec![80, 81, 82]
    };
    assert_eq!(pids(&agent_set(&ctx, &ev, Some(&env))), expected);
    // Without the environment read, only the writer.
    assert_eq!(pids(&agent_set(&ctx, &ev, None)), vec![80]);
}

#[test]
fn remembered_pane_groups_count_only_while_the_pid_is_not_reused() {
    let table = ProcTable::from_procs(vec![
        p(1, 0, 1, 1, &["init"]),
        // The pane 20 died; its session lives on in 26.
        p(26, 1, 26, 20, &["helper"]),
        // pid 30 was a pane once, now reused by a stranger leading its own session.
        p(30, 1, 30, 30, &["stranger"]),
        p(31, 1, 31, 30, &["strangers-child"]),
    ]);
    let writers = HashMap::new();
    let ctx = SetContext::new(&table, None, &writers);
    let mut ev = Evidence::new(AgentId::parse(B).unwrap());
    ev.sessions = vec![SessionIdentity {
        server: server(),
        session_id: 1,
        pane_ids: vec![],
        panes: vec![
            key(20),
            ProcKey {
                pid: 30,
                start_time: 5,
            },
        ],
    }];
    assert_eq!(pids(&agent_set(&ctx, &ev, None)), vec![26]);
}

#[test]
fn agent_id_token_boundaries() {
    assert!(names_agent_id("Agent ID: a-1", "a-1"));
    assert!(names_agent_id("x.\nAgent ID: a-1, y", "a-1"));
    assert!(names_agent_id("- Agent ID: a-1\n", "a-1"));
    assert!(names_agent_id("(Agent ID: a-1)", "a-1"));
    assert!(!names_agent_id("Agent ID: a-1x Agent ID: a-1\n", "a-1"));
    assert!(names_agent_id("Agent ID: a-1x\n- Agent ID: a-1\n", "a-1"));
    assert!(!names_agent_id("Agent ID: a-1x", "a-1"));
    assert!(!names_agent_id("Agent ID: a-1_", "a-1"));
    assert!(!names_agent_id("Agent ID: a-1.2", "a-1"));
    assert!(!names_agent_id("Parent Agent: a-1", "a-1"));
    assert!(!names_agent_id("agent id: a-1", "a-1"));
    assert!(!names_agent_id("Parent Agent ID: a-1", "a-1"));
    assert!(!names_agent_id("PARENT Agent ID: a-1", "a-1"));
    assert!(!names_agent_id("spawned by Agent ID: a-1", "a-1"));
    assert!(!names_agent_id("spawned by\tAgent ID: a-1", "a-1"));
    assert!(!names_agent_id("père Agent ID: a-1", "a-1"));
}

/// A record made after the stopping says what the search looked at as the evidence did:
/// the panes once each (remembered ones too), the sessions only when their environment was
/// read, the logs' count and the id.
#[test]
fn what_a_record_keeps_of_the_search_says_what_the_evidence_said() {
    let mut ev = Evidence::new(AgentId::parse("agent-4").unwrap());
    ev.panes = vec![key(20), key(21)];
    ev.logs = vec![(1, 2), (1, 3), (1, 4)];
    ev.sessions = vec![SessionIdentity {
        server: server(),
        session_id: 7,
        pane_ids: vec![3],
        panes: vec![key(20), key(22)],
    }];
    for env_read in [true, false] {
        let said = ev.checked(env_read);
        assert_eq!(
            ev.clone().searched(env_read).checked(&ev.id),
            said,
            "env_read {env_read}"
        );
        assert_eq!(
            said[0],
            "pane tree, process groups and sessions of 3 pane(s)"
        );
        assert_eq!(said.len(), if env_read { 4 } else { 3 }, "{said:?}");
    }
}
