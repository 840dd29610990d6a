//! An agent's process set, from provable evidence only (DESIGN.md §3 "Processes").
//!
//! Evidence: its own panes and their descendants, their process groups and sessions;
//! processes whose environment names its tmux session or panes (now or remembered);
//! writers of its own logs; an argv holding `Agent ID: <id>` bounded on both sides.
//! Never: a process inside another session's pane tree, tmux itself, pid 1, the daemon and
//! its ancestors, another user's process. A path in argv is no evidence at all.

use super::environ::{EnvCache, EnvIndex};
use super::openfiles::DevIno;
use super::source::{LiveProcesses, ProcessSource};
use super::table::{ID_MARKER, ProcInfo, ProcKey, ProcTable};
use super::tmux::{TmuxServer, TmuxSnapshot};
use crate::model::AgentId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, HashSet};

/// One tmux session an agent ran in, as seen while it was alive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionIdentity {
    pub server: TmuxServer,
    /// `#{session_id}` without `$`.
    pub session_id: u32,
    /// `#{pane_id}`s without `%`.
    pub pane_ids: Vec<u32>,
    /// Pane processes seen (pid, start time): their groups and sessions outlive them.
    pub panes: Vec<ProcKey>,
}

/// What ties processes to one agent.
#[derive(Debug, Clone)]
pub struct Evidence {
    pub id: AgentId,
    /// Its live pane processes this round (pid + start time: a pid reused later is not it).
    pub panes: Vec<ProcKey>,
    /// The sessions it ran in, now or remembered from earlier passes.
    pub sessions: Vec<SessionIdentity>,
    /// Its own logs, `(st_dev, st_ino)`.
    pub logs: Vec<DevIno>,
}

impl Evidence {
    pub fn new(id: AgentId) -> Self {
        Evidence {
            id,
            panes: Vec::new(),
            sessions: Vec::new(),
            logs: Vec::new(),
        }
    }

    /// Whether the environment could tell anything about this agent.
    pub fn has_sessions(&self) -> bool {
        !self.sessions.is_empty()
    }

    /// What a search for this agent's processes looks at, for the record.
    pub fn checked(&self, env_read: bool) -> Vec<String> {
        checked_lines(
            self.pane_count(),
            if env_read { &self.sessions } else { &[] },
            self.logs.len(),
            &self.id,
        )
    }

    /// Its pane processes, now or remembered, each once.
    fn pane_count(&self) -> usize {
        let panes: HashSet<i32> = self
            .panes
            .iter()
            .chain(self.sessions.iter().flat_map(|s| &s.panes))
            .map(|k| k.pid)
            .collect();
        panes.len()
    }

    /// What a record needs of it once the stopping is over (see [`Searched`]).
    pub fn searched(self, env_read: bool) -> Searched {
        Searched {
            panes: self.pane_count() as u32,
            logs: self.logs.len() as u32,
            sessions: if env_read {
                self.sessions.into_boxed_slice()
            } else {
                Box::default()
            },
        }
    }
}

/// What a search for one agent's processes looked at, for its record's
/// `processes_checked`: counts, and the sessions whose environment was read. The evidence
/// itself (log identities, pane keys) served the stopping: 40,000 agents' evidence held
/// through the registry edit was 7 MB.
#[derive(Debug, Clone, Default)]
pub struct Searched {
    panes: u32,
    logs: u32,
    sessions: Box<[SessionIdentity]>,
}

impl Searched {
    /// As [`Evidence::checked`] said it, for the agent `id`.
    pub fn checked(&self, id: &AgentId) -> Vec<String> {
        checked_lines(self.panes as usize, &self.sessions, self.logs as usize, id)
    }
}

/// The lines of a record's `processes_checked`.
fn checked_lines(
    panes: usize,
    sessions: &[SessionIdentity],
    logs: usize,
    id: &AgentId,
) -> Vec<String> {
    let mut out = vec![format!(
        "pane tree, process groups and sessions of {panes} pane(s)"
    )];
    for s in sessions {
        out.push(format!(
            "environment naming tmux server {} (pid {}) session ${}",
            s.server.socket.display(),
            s.server.pid,
            s.session_id
        ));
    }
    out.push(format!("writers of {logs} log(s)"));
    out.push(format!("argv holding \"Agent ID: {id}\""));
    out
}

/// What holds for every agent of one round: the table and who may never be in a set.
pub struct SetContext<'a> {
    pub table: &'a ProcTable,
    /// pid 1, tmux servers and other pane ancestors, the daemon and its ancestors.
    pub protected: HashSet<i32>,
    /// Process groups and sessions of protected processes: never evidence.
    pub protected_groups: HashSet<i32>,
    /// For each process inside some session's pane tree, that session's name.
    pub pane_owner: HashMap<i32, String>,
    /// Only processes of this uid (`None` as root: any).
    pub uid: Option<u32>,
    pub writers: &'a HashMap<DevIno, Vec<i32>>,
    /// The round's sessions (name, pane pids) and tmux server, to rebuild this on a fresh table.
    sessions: Vec<(String, Vec<i32>)>,
    server: Option<i32>,
}

impl<'a> SetContext<'a> {
    /// The context for `table`, with the pane trees of every session in `snapshot`.
    pub fn new(
        table: &'a ProcTable,
        snapshot: Option<&TmuxSnapshot>,
        writers: &'a HashMap<DevIno, Vec<i32>>,
    ) -> Self {
        let sessions: Vec<(String, Vec<i32>)> = snapshot
            .into_iter()
            .flat_map(|s| s.sessions.values())
            .map(|s| {
                (
                    s.name.clone(),
                    s.panes.iter().filter_map(|p| p.pid).collect(),
                )
            })
            .collect();
        let server = snapshot.and_then(|s| s.server.as_ref()).map(|s| s.pid);
        Self::build(table, sessions, server, writers)
    }

    /// The same round's sessions against a fresh table (rescans while stopping).
    pub fn refreshed<'b>(
        &self,
        table: &'b ProcTable,
        writers: &'b HashMap<DevIno, Vec<i32>>,
    ) -> SetContext<'b> {
        SetContext::build(table, self.sessions.clone(), self.server, writers)
    }

    /// Every pane pid of the round, of every session.
    pub fn all_panes(&self) -> impl Iterator<Item = (&str, i32)> {
        self.sessions
            .iter()
            .flat_map(|(name, panes)| panes.iter().map(move |p| (name.as_str(), *p)))
    }

    fn build(
        table: &'a ProcTable,
        sessions: Vec<(String, Vec<i32>)>,
        server: Option<i32>,
        writers: &'a HashMap<DevIno, Vec<i32>>,
    ) -> Self {
        let mut protected = pane_ancestors(table, sessions.iter().flat_map(|(_, p)| p.clone()));
        protected.extend(table.ancestors_and_self(std::process::id() as i32));
        protected.extend(server);
        protected.insert(1);
        let protected_groups = protected
            .iter()
            .filter_map(|p| table.get(*p))
            .flat_map(|p| [p.pgid, p.sid])
            .chain([0, 1])
            .collect();
        let mut pane_owner = HashMap::new();
        let all_panes: HashSet<i32> = sessions.iter().flat_map(|(_, p)| p.clone()).collect();
        for (name, panes) in &sessions {
            // Stop at another pane: its tree is that session's.
            let mut stack: Vec<i32> = panes.iter().copied().filter(|p| *p > 1).collect();
            while let Some(pid) = stack.pop() {
                if pane_owner.insert(pid, name.to_string()).is_none() {
                    stack.extend(
                        table
                            .children_of(pid)
                            .iter()
                            .filter(|c| !all_panes.contains(c)),
                    );
                }
            }
        }
        let euid = nix::unistd::geteuid().as_raw();
        SetContext {
            table,
            protected,
            protected_groups,
            pane_owner,
            uid: (euid != 0).then_some(euid),
            writers,
            sessions,
            server,
        }
    }

    /// Whether `p` may be in the set of the agent whose session is `own_session`.
    fn admissible(&self, p: &ProcInfo, own_session: &str) -> bool {
        p.pid > 1
            && !self.protected.contains(&p.pid)
            && self.uid.is_none_or(|u| p.uid == u)
            && !is_tmux(p)
            && self
                .pane_owner
                .get(&p.pid)
                .is_none_or(|owner| owner == own_session)
    }

    /// Every process that could carry a pane's environment: the ones worth reading.
    pub fn env_candidate(&self, pid: i32) -> bool {
        self.table.get(pid).is_some_and(|p| {
            p.pid > 1
                && !self.protected.contains(&pid)
                && !is_tmux(p)
                && self.uid.is_none_or(|u| p.uid == u)
                && !self.pane_owner.contains_key(&pid)
        })
    }

    /// Reads the environments worth reading (see [`SetContext::env_candidate`]).
    pub fn read_environments(&self) -> EnvIndex {
        self.read_environments_from(&LiveProcesses)
    }

    /// [`SetContext::read_environments`] through `source`.
    pub fn read_environments_from(&self, source: &dyn ProcessSource) -> EnvIndex {
        source.environments(self.table, &|pid| self.env_candidate(pid), None)
    }
}

/// tmux itself (server or a client): its argv carries agents' commands.
pub fn is_tmux(p: &ProcInfo) -> bool {
    p.cmdline.first().is_some_and(|argv0| {
        let name = argv0.rsplit('/').next().unwrap_or(argv0);
        name == "tmux" || name.starts_with("tmux:")
    })
}

/// Every ancestor of every pane (the tmux servers, init): never an agent's process, though a
/// tmux server's argv is the first `new-session` command it ran. Taken as a root, it would
/// pull in every session's panes.
pub fn pane_ancestors(
    table: &ProcTable,
    all_pane_pids: impl IntoIterator<Item = i32>,
) -> HashSet<i32> {
    let mut out = HashSet::new();
    for pane in all_pane_pids {
        let mut pid = table.get(pane).map(|p| p.ppid);
        while let Some(p) = pid {
            if p <= 0 || !out.insert(p) {
                break;
            }
            pid = table.get(p).map(|i| i.ppid);
        }
    }
    out
}

fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
}

/// True when `arg` holds `Agent ID: <id>` bounded on both sides: the id is not continued by
/// another id character (`Agent ID: abc` does not name `abcx`), and no word stands before
/// the token on its line (`Parent Agent ID:`, `spawned by Agent ID:` name someone else).
pub fn names_agent_id(arg: &str, id: &str) -> bool {
    holds_token(arg, &format!("{ID_MARKER}{id}"))
}

fn holds_token(arg: &str, needle: &str) -> bool {
    let bytes = arg.as_bytes();
    let mut from = 0;
    while let Some(off) = arg[from..].find(needle) {
        let at = from + off;
        let end = at + needle.len();
        let before = arg[..at].trim_end_matches([' ', '\t']);
        let qualified = before
            .as_bytes()
            .last()
            .is_some_and(|&b| b.is_ascii_alphanumeric() || b >= 0x80);
        if !qualified && bytes.get(end).is_none_or(|&b| !is_id_byte(b)) {
            return true;
        }
        from = at + 1;
    }
    false
}

/// The agent's process set in `ctx.table`: sorted, each process once. `env` is the round's
/// environment read, when the agent's liveness or stop depends on it.
pub fn agent_set(ctx: &SetContext<'_>, ev: &Evidence, env: Option<&EnvIndex>) -> Vec<ProcKey> {
    let table = ctx.table;
    let own = ev.id.session_name();
    let own = own.as_str();
    let mut roots: Vec<i32> = Vec::new();
    // Process groups and sessions of the panes, now and as remembered. A remembered pane's
    // pid names its group only while that pid is unused or still the same process: the
    // kernel does not hand out a pid that is still some group's or session's id.
    let mut groups: HashSet<i32> = HashSet::new();
    for key in &ev.panes {
        if let Some(p) = table.get(key.pid)
            && p.start_time == key.start_time
        {
            roots.push(p.pid);
            groups.extend([p.pgid, p.sid]);
        }
    }
    for key in ev.sessions.iter().flat_map(|s| &s.panes) {
        match table.get(key.pid) {
            Some(p) if p.start_time != key.start_time => {}
            Some(_) => {
                groups.insert(key.pid);
                roots.push(key.pid);
            }
            None => {
                groups.insert(key.pid);
            }
        }
    }
    for g in groups.difference(&ctx.protected_groups) {
        roots.extend(table.group_members(*g));
        roots.extend(table.session_members(*g));
    }
    if let Some(env) = env {
        for s in &ev.sessions {
            roots.extend(env.naming(&s.server, s.session_id, &s.pane_ids));
        }
    }
    for log in &ev.logs {
        roots.extend(ctx.writers.get(log).into_iter().flatten());
    }
    let needle = format!("{ID_MARKER}{}", ev.id);
    roots.extend(
        table
            .naming_some_agent()
            .filter(|p| p.cmdline.iter().any(|arg| holds_token(arg, &needle)))
            .map(|p| p.pid),
    );
    let ok = |pid: &i32| table.get(*pid).is_some_and(|p| ctx.admissible(p, own));
    roots.retain(ok);
    let set: BTreeSet<ProcKey> = table
        .descendants_and_self(roots)
        .into_iter()
        .filter(ok)
        .filter_map(|pid| table.get(pid).map(ProcInfo::key))
        .collect();
    set.into_iter().collect()
}

/// The processes of each agent in a fresh look at /proc: a new table, writers of their
/// logs, and (when `env` is given: some agent has a known session) the environments not
/// read before. `None` when /proc cannot be read.
pub fn fresh_sets(
    round: &SetContext<'_>,
    evidence: &[&Evidence],
    logs: &HashSet<DevIno>,
    env: Option<&mut EnvCache>,
) -> Option<(ProcTable, Vec<Vec<ProcKey>>)> {
    fresh_sets_from(&LiveProcesses, round, evidence, logs, env)
}

/// [`fresh_sets`] through `source`.
pub fn fresh_sets_from(
    source: &dyn ProcessSource,
    round: &SetContext<'_>,
    evidence: &[&Evidence],
    logs: &HashSet<DevIno>,
    env: Option<&mut EnvCache>,
) -> Option<(ProcTable, Vec<Vec<ProcKey>>)> {
    let fresh = source.scan().ok()?;
    let writers = if logs.is_empty() {
        HashMap::new()
    } else {
        source.writers_of(logs)
    };
    let sets = {
        let ctx = round.refreshed(&fresh, &writers);
        let env = env
            .map(|cache| source.environments(&fresh, &|pid| ctx.env_candidate(pid), Some(cache)));
        evidence
            .iter()
            .map(|e| agent_set(&ctx, e, env.as_ref()))
            .collect()
    };
    Some((fresh, sets))
}

/// The set of a bare pane list (tests, benchmarks, orphan sessions): panes, their trees,
/// groups and sessions, and the argv token.
pub fn agent_processes(table: &ProcTable, pane_pids: &[i32], id: &AgentId) -> Vec<ProcKey> {
    let writers = HashMap::new();
    let mut ctx = SetContext::new(table, None, &writers);
    ctx.protected
        .extend(pane_ancestors(table, pane_pids.iter().copied()));
    ctx.protected_groups.extend(
        ctx.protected
            .iter()
            .filter_map(|p| table.get(*p))
            .flat_map(|p| [p.pgid, p.sid])
            .collect::<Vec<_>>(),
    );
    let mut ev = Evidence::new(id.clone());
    ev.panes = pane_pids
        .iter()
        .filter_map(|p| table.get(*p).map(ProcInfo::key))
        .collect();
    agent_set(&ctx, &ev, None)
}

#[cfg(test)]
#[path = "evidence_tests.rs"]
mod tests;
