//! Test doubles for the process source and the tmux runner: scripted processes and sessions,
//! shared by clones so a test keeps a handle on what the pass it drives did to them.
//!
//! Fake pids start above the kernel's largest `pid_max` (2^22): no real process can have
//! one, so nothing a fake lists is ever a real process, even if some code read /proc.

use super::environ::{EnvCache, EnvIndex, PaneTag};
use super::openfiles::DevIno;
use super::source::ProcessSource;
use super::stop::{ProcessOps, Rescan, Sig, StopPolicy, StopReport, StopRequest, stop_all_with};
use super::table::{ProcInfo, ProcKey, ProcTable, StatFields};
use super::tmux::{KillSession, PaneInfo, SessionInfo, Tmux, TmuxError, TmuxSnapshot};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// The first pid a fake process gets: beyond any real `pid_max`.
pub(crate) const FIRST_FAKE_PID: i32 = 1 << 23;

#[derive(Debug, Default)]
struct ProcWorld {
    procs: BTreeMap<i32, ProcInfo>,
    writers: HashMap<DevIno, Vec<i32>>,
    env: HashMap<i32, PaneTag>,
    next_pid: i32,
    /// Every signal sent, in order.
    signals: Vec<(i32, Sig)>,
    /// When set, `scan` fails as an unreadable /proc would.
    unreadable: bool,
    /// Processes that ignore SIGTERM (SIGKILL still ends them).
    ignore_term: Vec<i32>,
}

/// A scripted process table: processes exit at once on SIGKILL, and on SIGTERM unless
/// told to ignore it.
#[derive(Debug, Clone, Default)]
pub(crate) struct FakeProcesses(Arc<Mutex<ProcWorld>>);

impl FakeProcesses {
    fn world(&self) -> MutexGuard<'_, ProcWorld> {
        self.0.lock().expect("fake processes lock")
    }

    /// Starts a process of ours (the daemon's uid) under `parent` (0: none); its own group
    /// and session unless `parent` is given, then its parent's.
    pub(crate) fn spawn(&self, parent: i32, argv: &[&str]) -> ProcKey {
        let mut w = self.world();
        let pid = FIRST_FAKE_PID + w.next_pid;
        w.next_pid += 1;
        let (pgid, sid) = match w.procs.get(&parent) {
            Some(p) => (p.pgid, p.sid),
            None => (pid, pid),
        };
        let info = ProcInfo {
            pid,
            ppid: parent,
            pgid,
            sid,
            state: 'S',
            start_time: 1000 + pid as u64,
            uid: nix::unistd::geteuid().as_raw(),
            cmdline: argv.iter().map(|a| a.to_string()).collect(),
        };
        let key = info.key();
        w.procs.insert(pid, info);
        key
    }

    /// `pid` holds `file` open for writing.
    pub(crate) fn open_for_writing(&self, pid: i32, file: DevIno) {
        self.world().writers.entry(file).or_default().push(pid);
    }

    pub(crate) fn is_alive(&self, pid: i32) -> bool {
        self.world().procs.contains_key(&pid)
    }

    /// The pids sent a signal, in order, each once.
    pub(crate) fn signalled(&self) -> Vec<i32> {
        let mut out: Vec<i32> = Vec::new();
        for (pid, _) in &self.world().signals {
            if !out.contains(pid) {
                out.push(*pid);
            }
        }
        out
    }

    /// `pid` ignores SIGTERM, as a process with a handler that does not exit would.
    pub(crate) fn ignore_term(&self, pid: i32) {
        self.world().ignore_term.push(pid);
    }

    /// The signals sent to `pid`, in order.
    pub(crate) fn signals_to(&self, pid: i32) -> Vec<Sig> {
        let w = self.world();
        w.signals
            .iter()
            .filter(|(p, _)| *p == pid)
            .map(|(_, s)| *s)
            .collect()
    }

    pub(crate) fn set_unreadable(&self, unreadable: bool) {
        self.world().unreadable = unreadable;
    }

    fn exit(&self, pid: i32) {
        let mut w = self.world();
        w.procs.remove(&pid);
        for pids in w.writers.values_mut() {
            pids.retain(|p| *p != pid);
        }
        w.writers.retain(|_, pids| !pids.is_empty());
        w.env.remove(&pid);
    }
}

impl ProcessSource for FakeProcesses {
    fn scan(&self) -> std::io::Result<ProcTable> {
        let w = self.world();
        if w.unreadable {
            return Err(std::io::Error::other("fake /proc unreadable"));
        }
        Ok(ProcTable::from_procs(w.procs.values().cloned().collect()))
    }

    fn writers_of(&self, candidates: &HashSet<DevIno>) -> HashMap<DevIno, Vec<i32>> {
        self.world()
            .writers
            .iter()
            .filter(|(id, _)| candidates.contains(id))
            .map(|(id, pids)| (*id, pids.clone()))
            .collect()
    }

    fn environments(
        &self,
        table: &ProcTable,
        wanted: &dyn Fn(i32) -> bool,
        _cache: Option<&mut EnvCache>,
    ) -> EnvIndex {
        let w = self.world();
        let mut index = EnvIndex::default();
        for (pid, tag) in &w.env {
            if table.get(*pid).is_some() && wanted(*pid) {
                index.read += 1;
                index.insert(*pid, tag.clone());
            }
        }
        index
    }

    fn agent_cgroups(&self, _: &[i32], _: &HashSet<i32>, _: &[i32]) -> Vec<PathBuf> {
        Vec::new()
    }

    fn stop(
        &self,
        requests: &[StopRequest],
        table: &ProcTable,
        policy: &StopPolicy,
        rescan: &mut Rescan<'_>,
    ) -> Vec<StopReport> {
        stop_all_with(self, requests, table, policy, rescan)
    }
}

/// The stopper's OS calls against the scripted table: a pidfd is the pid itself.
impl ProcessOps for FakeProcesses {
    type Handle = i32;

    fn open(&self, pid: i32) -> std::io::Result<i32> {
        if self.is_alive(pid) {
            Ok(pid)
        } else {
            Err(std::io::Error::from_raw_os_error(libc::ESRCH))
        }
    }

    fn stat(&self, pid: i32) -> Option<StatFields> {
        self.world().procs.get(&pid).map(|p| StatFields {
            pid,
            state: p.state,
            ppid: p.ppid,
            pgid: p.pgid,
            sid: p.sid,
            start_time: p.start_time,
        })
    }

    fn signal(&self, handle: &i32, sig: Sig) -> std::io::Result<()> {
        if !self.is_alive(*handle) {
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
        let ends = {
            let mut w = self.world();
            w.signals.push((*handle, sig));
            sig == Sig::Kill || (sig == Sig::Term && !w.ignore_term.contains(handle))
        };
        if ends {
            self.exit(*handle);
        }
        Ok(())
    }

    fn wait_any(&self, handles: &[&i32], _timeout: Duration) -> Vec<bool> {
        handles.iter().map(|h| !self.is_alive(**h)).collect()
    }

    fn kill_cgroup(&self, dir: &Path) -> std::io::Result<()> {
        Err(std::io::Error::other(format!(
            "fake: no cgroup {}",
            dir.display()
        )))
    }
}

#[derive(Debug, Default)]
struct TmuxWorld {
    sessions: BTreeMap<String, SessionInfo>,
    killed: Vec<String>,
    /// When set, every call fails as a hung tmux would.
    down: bool,
    next_id: u32,
}

/// A scripted tmux server: sessions are listed until killed.
#[derive(Debug, Clone, Default)]
pub(crate) struct FakeTmux(Arc<Mutex<TmuxWorld>>);

impl FakeTmux {
    fn world(&self) -> MutexGuard<'_, TmuxWorld> {
        self.0.lock().expect("fake tmux lock")
    }

    /// A session `name` whose panes run `pane_pids`, last active at `activity`.
    pub(crate) fn add_session(&self, name: &str, pane_pids: &[i32], activity: SystemTime) {
        let mut w = self.world();
        w.next_id += 1;
        let id = w.next_id;
        let panes = pane_pids
            .iter()
            .enumerate()
            .map(|(i, pid)| PaneInfo {
                pid: Some(*pid),
                id: Some(id * 100 + i as u32),
                dead: false,
                window_activity: Some(activity),
            })
            .collect();
        w.sessions.insert(
            name.to_string(),
            SessionInfo {
                name: name.to_string(),
                id: Some(id),
                created: Some(activity),
                activity: Some(activity),
                panes,
            },
        );
    }

    pub(crate) fn has_session(&self, name: &str) -> bool {
        self.world().sessions.contains_key(name)
    }

    /// The sessions `kill-session` was asked for, in order.
    pub(crate) fn killed(&self) -> Vec<String> {
        self.world().killed.clone()
    }

    pub(crate) fn set_down(&self, down: bool) {
        self.world().down = down;
    }
}

impl Tmux for FakeTmux {
    fn snapshot(&self) -> Result<TmuxSnapshot, TmuxError> {
        let w = self.world();
        if w.down {
            return Err(TmuxError::Timeout(Duration::from_secs(5)));
        }
        Ok(TmuxSnapshot {
            sessions: w.sessions.clone(),
            server: None,
        })
    }

    fn kill_session(&self, name: &str) -> Result<KillSession, TmuxError> {
        let mut w = self.world();
        if w.down {
            return Err(TmuxError::Timeout(Duration::from_secs(5)));
        }
        w.killed.push(name.to_string());
        Ok(match w.sessions.remove(name) {
            Some(_) => KillSession::Killed,
            None => KillSession::AlreadyGone,
        })
    }
}
