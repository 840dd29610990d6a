//! Stopping processes: pidfd-verified SIGTERM, escalating waits, rescans for newcomers, SIGKILL for survivors.

use super::table::{ProcKey, ProcTable, StatFields, read_stat};
use crate::model::AgentId;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct StopPolicy {
    /// Waits after SIGTERM before SIGKILL (0.5 s, 1 s, 2 s by default).
    pub term_steps: Vec<Duration>,
}

impl Default for StopPolicy {
    fn default() -> Self {
        StopPolicy {
            term_steps: [500, 1000, 2000].map(Duration::from_millis).to_vec(),
        }
    }
}

/// How long to wait for SIGKILLed processes to disappear.
const KILL_WAIT: Duration = Duration::from_secs(2);
/// How long a defunct process may take to be reaped by its (new) parent before it is reported.
const REAP_WAIT: Duration = Duration::from_millis(500);
/// Rescans for processes that joined a set while it was being stopped (forks, double forks,
/// new writers of the logs), after the SIGTERMs and again after the SIGKILLs. A forker
/// outrunning this many rounds is SIGKILLed; what it forks after that is a survivor.
const MAX_ROUNDS: usize = 3;

#[derive(Debug, Clone)]
pub struct StopRequest {
    pub agent: AgentId,
    pub processes: Vec<ProcKey>,
    /// cgroups that hold this agent's processes and nothing else: `cgroup.kill` stops them.
    pub cgroups: Vec<PathBuf>,
}

impl StopRequest {
    pub fn new(agent: AgentId, processes: Vec<ProcKey>) -> Self {
        StopRequest {
            agent,
            processes,
            cgroups: Vec::new(),
        }
    }
}

/// A fresh look while stopping: a new process table and every request's set in it (same
/// order as the requests). `None` when /proc cannot be read: no newcomers then.
pub type Rescan<'a> = dyn FnMut() -> Option<(ProcTable, Vec<Vec<ProcKey>>)> + 'a;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct StopReport {
    pub signalled: Vec<ProcKey>,
    pub escalated_to_sigkill: bool,
    /// Still alive after SIGKILL (should not happen).
    pub survivors: Vec<ProcKey>,
    /// Defunct processes, with the parent that has to reap them: `(pid, ppid)`.
    pub defunct: Vec<(i32, i32)>,
    /// Processes left alone, with why (pid reused, protected, another user's, ...).
    pub refused: Vec<(ProcKey, String)>,
    /// Processes that joined the set while it was being stopped (found by a rescan).
    pub joined: usize,
    /// cgroups stopped with `cgroup.kill`.
    pub cgroups_killed: Vec<PathBuf>,
    /// `cgroup.kill` failures (the processes were then signalled one by one).
    pub cgroup_errors: Vec<String>,
}

impl StopReport {
    /// Nothing of the agent still runs. A defunct process left to init (ppid 1) does not
    /// count: init reaps it (and where it does not, nobody else can); one whose living parent
    /// must reap it does.
    pub fn verified_no_zombies(&self) -> bool {
        self.survivors.is_empty() && self.defunct.iter().all(|(_, ppid)| *ppid <= 1)
    }
}

/// The signals the stopper sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sig {
    Term,
    Kill,
    Cont,
}

/// The OS calls behind `stop_all`, so tests can inject races (pid reuse) without real processes.
pub trait ProcessOps {
    type Handle;
    /// A handle that stays bound to the process even if its pid is reused (a pidfd).
    fn open(&self, pid: i32) -> std::io::Result<Self::Handle>;
    /// A fresh read of `/proc/<pid>/stat`; `None` when the pid is gone.
    fn stat(&self, pid: i32) -> Option<StatFields>;
    fn signal(&self, handle: &Self::Handle, sig: Sig) -> std::io::Result<()>;
    /// Waits up to `timeout` until at least one handle reports exit; returns, for every
    /// handle, whether its process has exited (a zombie counts as exited).
    fn wait_any(&self, handles: &[&Self::Handle], timeout: Duration) -> Vec<bool>;
    /// Writes `1` to the cgroup's `cgroup.kill`.
    fn kill_cgroup(&self, dir: &Path) -> std::io::Result<()>;
}

/// The real thing: pidfd_open / pidfd_send_signal / poll(2).
#[derive(Debug, Clone, Copy, Default)]
pub struct RealOps;

impl ProcessOps for RealOps {
    type Handle = OwnedFd;

    fn open(&self, pid: i32) -> std::io::Result<OwnedFd> {
        let pid = rustix::process::Pid::from_raw(pid)
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ESRCH))?;
        Ok(rustix::process::pidfd_open(
            pid,
            rustix::process::PidfdFlags::empty(),
        )?)
    }

    fn stat(&self, pid: i32) -> Option<StatFields> {
        read_stat(pid)
    }

    fn signal(&self, handle: &OwnedFd, sig: Sig) -> std::io::Result<()> {
        let sig = match sig {
            Sig::Term => rustix::process::Signal::TERM,
            Sig::Kill => rustix::process::Signal::KILL,
            Sig::Cont => rustix::process::Signal::CONT,
        };
        Ok(rustix::process::pidfd_send_signal(handle, sig)?)
    }

    fn kill_cgroup(&self, dir: &Path) -> std::io::Result<()> {
        super::cgroup::kill(dir)
    }

    fn wait_any(&self, handles: &[&OwnedFd], timeout: Duration) -> Vec<bool> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let mut fds: Vec<PollFd> = handles
            .iter()
            .map(|h| PollFd::new(h.as_fd(), PollFlags::POLLIN))
            .collect();
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let t = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, t) {
                Err(nix::errno::Errno::EINTR) if !left.is_zero() => continue,
                // A pidfd reports POLLIN (or POLLHUP/ERR) once its process has exited.
                _ => {
                    return fds
                        .iter()
                        .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                        .collect();
                }
            }
        }
    }
}

/// Stops every request's processes at once (never one agent after another), one report each.
pub fn stop_all(
    requests: &[StopRequest],
    table: &ProcTable,
    policy: &StopPolicy,
) -> Vec<StopReport> {
    stop_all_with(&RealOps, requests, table, policy, &mut || None)
}

/// [`stop_all`], rescanning for processes that join the sets meanwhile.
pub fn stop_all_rescanning(
    requests: &[StopRequest],
    table: &ProcTable,
    policy: &StopPolicy,
    rescan: &mut Rescan<'_>,
) -> Vec<StopReport> {
    stop_all_with(&RealOps, requests, table, policy, rescan)
}

/// Why a process must not be signalled, if it must not. The uid rule: only processes of the
/// daemon's effective uid; as root (euid 0) any uid, since a root daemon cleans up agents
/// run by any user on the box (the set was still built from that agent's tmux panes and argv).
fn refusal(key: &ProcKey, table: &ProcTable, protected: &[i32], euid: u32) -> Option<String> {
    if key.pid <= 1 {
        return Some("pid 1 or invalid pid".into());
    }
    if protected.contains(&key.pid) {
        return Some("the daemon itself or one of its ancestors".into());
    }
    let Some(info) = table.get(key.pid) else {
        return Some("not in the process table".into());
    };
    if info.start_time != key.start_time {
        return Some("pid reused (start time differs from the table)".into());
    }
    if euid != 0 && info.uid != euid {
        return Some(format!("owned by uid {}, not ours ({euid})", info.uid));
    }
    None
}

/// One process being stopped, shared by every request that lists it.
struct Target<H> {
    key: ProcKey,
    handle: H,
    exited: bool,
}

/// The processes being stopped, which requests own them, and the reports so far.
struct Stopper<'r, O: ProcessOps> {
    ops: &'r O,
    protected: Vec<i32>,
    euid: u32,
    targets: Vec<Target<O::Handle>>,
    /// Target index of each process, so one process listed by two agents is signalled once.
    index: HashMap<ProcKey, Option<usize>>,
    /// Per request, the target indices it owns.
    owned: Vec<Vec<usize>>,
    reports: Vec<StopReport>,
}

impl<O: ProcessOps> Stopper<'_, O> {
    /// Opens (pidfd, start time verified) the processes of `sets` not seen before; returns
    /// the new targets. Zombies are skipped: they are dead already.
    fn add(&mut self, sets: &[Vec<ProcKey>], table: &ProcTable, joined: bool) -> Vec<usize> {
        let mut new = Vec::new();
        for (ri, set) in sets.iter().enumerate() {
            for key in set {
                if let Some(known) = self.index.get(key) {
                    if let Some(ti) = *known
                        && !self.owned[ri].contains(&ti)
                    {
                        self.owned[ri].push(ti);
                        self.reports[ri].signalled.push(*key);
                    }
                    continue;
                }
                if table.get(key.pid).is_some_and(|p| p.state == 'Z') {
                    continue;
                }
                let report = &mut self.reports[ri];
                let slot = prepare(self.ops, key, table, &self.protected, self.euid, report).map(
                    |handle| {
                        self.targets.push(Target {
                            key: *key,
                            handle,
                            exited: false,
                        });
                        self.targets.len() - 1
                    },
                );
                if let Some(ti) = slot {
                    self.owned[ri].push(ti);
                    report.signalled.push(*key);
                    report.joined += usize::from(joined);
                    new.push(ti);
                }
                self.index.insert(*key, slot);
            }
        }
        new
    }

    fn signal(&mut self, which: &[usize], sig: Sig, table: &ProcTable) {
        for &ti in which {
            let t = &mut self.targets[ti];
            if t.exited {
                continue;
            }
            if self.ops.signal(&t.handle, sig).is_err() {
                // ESRCH: gone between open and signal. Anything else is found out by waiting.
                t.exited = self
                    .ops
                    .stat(t.key.pid)
                    .is_none_or(|s| s.start_time != t.key.start_time);
            }
            // A stopped process only acts on SIGTERM once continued.
            if sig == Sig::Term
                && table
                    .get(t.key.pid)
                    .is_some_and(|p| matches!(p.state, 'T' | 't'))
            {
                let _ = self.ops.signal(&t.handle, Sig::Cont);
            }
        }
    }

    /// Waits through `steps` (each a longer wait), ending early once every target exited.
    fn wait_steps(&mut self, steps: &[Duration]) {
        let mut deadline = Instant::now();
        for step in steps {
            deadline += *step;
            wait_until(self.ops, &mut self.targets, deadline);
        }
    }

    fn pending(&self) -> Vec<usize> {
        (0..self.targets.len())
            .filter(|&i| !self.targets[i].exited)
            .collect()
    }

    /// Marks the requests owning any of `which` as escalated.
    fn escalated(&mut self, which: &[usize]) {
        for (ri, owned) in self.owned.iter().enumerate() {
            if owned.iter().any(|t| which.contains(t)) {
                self.reports[ri].escalated_to_sigkill = true;
            }
        }
    }
}

/// `stop_all` over injected OS calls.
pub fn stop_all_with<O: ProcessOps>(
    ops: &O,
    requests: &[StopRequest],
    table: &ProcTable,
    policy: &StopPolicy,
    rescan: &mut Rescan<'_>,
) -> Vec<StopReport> {
    let mut st = Stopper {
        ops,
        protected: table.ancestors_and_self(std::process::id() as i32),
        euid: nix::unistd::geteuid().as_raw(),
        targets: Vec::new(),
        index: HashMap::new(),
        owned: vec![Vec::new(); requests.len()],
        reports: vec![StopReport::default(); requests.len()],
    };
    let sets: Vec<Vec<ProcKey>> = requests.iter().map(|r| r.processes.clone()).collect();
    let first = st.add(&sets, table, false);
    // An agent in its own cgroup is stopped whole by the kernel: nothing forks past it.
    let mut by_cgroup: HashSet<usize> = HashSet::new();
    for (ri, req) in requests.iter().enumerate() {
        let mut killed = false;
        for dir in &req.cgroups {
            match ops.kill_cgroup(dir) {
                Ok(()) => {
                    killed = true;
                    st.reports[ri].cgroups_killed.push(dir.clone());
                }
                Err(e) => st.reports[ri]
                    .cgroup_errors
                    .push(format!("{}: {e}", dir.join("cgroup.kill").display())),
            }
        }
        if killed {
            by_cgroup.extend(st.owned[ri].iter().copied());
        }
    }
    // Every SIGTERM goes out before any waiting, so N agents cost one grace period.
    let term: Vec<usize> = first
        .iter()
        .copied()
        .filter(|t| !by_cgroup.contains(t))
        .collect();
    st.signal(&term, Sig::Term, table);
    st.wait_steps(&policy.term_steps);

    // Newcomers get the same treatment; later rounds wait the first step only, so a
    // continuous forker cannot stretch the stop round after round.
    let first_step: Vec<Duration> = policy.term_steps.iter().take(1).copied().collect();
    for _ in 0..MAX_ROUNDS {
        let Some((fresh, sets)) = rescan() else { break };
        let new = st.add(&sets, &fresh, true);
        if new.is_empty() {
            break;
        }
        st.signal(&new, Sig::Term, &fresh);
        st.wait_steps(&first_step);
    }

    let survivors = st.pending();
    if !survivors.is_empty() {
        st.escalated(&survivors);
        st.signal(&survivors, Sig::Kill, table);
        wait_until(ops, &mut st.targets, Instant::now() + KILL_WAIT);
        // What forked between the last scan and its SIGKILL.
        for _ in 0..MAX_ROUNDS {
            let Some((fresh, sets)) = rescan() else { break };
            let new = st.add(&sets, &fresh, true);
            if new.is_empty() {
                break;
            }
            st.escalated(&new);
            st.signal(&new, Sig::Kill, &fresh);
            wait_until(ops, &mut st.targets, Instant::now() + KILL_WAIT);
        }
    }

    // Exited ones that are still zombies: nobody can kill them, their parent must reap.
    // A zombie whose parent we just stopped is reparented and reaped moments later, so
    // only what is still defunct after a short while is reported.
    // One whose parent is itself being stopped here is not reported: once that parent is
    // gone it belongs to init, which reaps it.
    let stopped: HashSet<i32> = st.targets.iter().map(|t| t.key.pid).collect();
    let zombies = |targets: &[Target<O::Handle>]| {
        let mut found: BTreeMap<usize, (i32, i32)> = BTreeMap::new();
        for (ti, t) in targets.iter().enumerate() {
            if let Some(s) = ops.stat(t.key.pid)
                && s.start_time == t.key.start_time
                && s.state == 'Z'
                && !stopped.contains(&s.ppid)
            {
                found.insert(ti, (t.key.pid, s.ppid));
            }
        }
        found
    };
    let reap_deadline = Instant::now() + REAP_WAIT;
    let mut defunct = zombies(&st.targets);
    // Only a living parent can still reap one; init's are not waited for.
    while defunct.values().any(|(_, ppid)| *ppid > 1) && Instant::now() < reap_deadline {
        std::thread::sleep(Duration::from_millis(10));
        defunct = zombies(&st.targets);
    }

    let Stopper {
        targets,
        owned,
        mut reports,
        ..
    } = st;
    for (ri, report) in reports.iter_mut().enumerate() {
        for &ti in &owned[ri] {
            if !targets[ti].exited {
                report.survivors.push(targets[ti].key);
            }
            if let Some(d) = defunct.get(&ti) {
                report.defunct.push(*d);
            }
        }
    }
    reports
}

/// Checks and opens one process; `None` when it is refused or already gone.
fn prepare<O: ProcessOps>(
    ops: &O,
    key: &ProcKey,
    table: &ProcTable,
    protected: &[i32],
    euid: u32,
    report: &mut StopReport,
) -> Option<O::Handle> {
    if let Some(why) = refusal(key, table, protected, euid) {
        report.refused.push((*key, why));
        return None;
    }
    let handle = match ops.open(key.pid) {
        Ok(h) => h,
        // Exited since the scan: nothing to do.
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return None,
        Err(e) => {
            report
                .refused
                .push((*key, format!("pidfd_open failed: {e}")));
            return None;
        }
    };
    // The pidfd now pins this exact process; if the pid was reused between the scan and the
    // open, the start time tells, and the handle points at a stranger: drop it unsignalled.
    match ops.stat(key.pid) {
        Some(s) if s.start_time == key.start_time => Some(handle),
        Some(_) => {
            report.refused.push((
                *key,
                "pid reused (start time changed before signalling)".into(),
            ));
            None
        }
        None => None,
    }
}

/// Waits on all not-yet-exited targets together until they all exited or `deadline` passed.
fn wait_until<O: ProcessOps>(ops: &O, targets: &mut [Target<O::Handle>], deadline: Instant) {
    loop {
        let pending: Vec<usize> = (0..targets.len()).filter(|&i| !targets[i].exited).collect();
        if pending.is_empty() {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let handles: Vec<&O::Handle> = pending.iter().map(|&i| &targets[i].handle).collect();
        let done = ops.wait_any(&handles, left);
        let mut progressed = false;
        for (k, &i) in pending.iter().enumerate() {
            if done.get(k).copied().unwrap_or(false) {
                targets[i].exited = true;
                progressed = true;
            }
        }
        if left.is_zero() || (!progressed && Instant::now() >= deadline) {
            return;
        }
        if !progressed {
            // Only reachable when the wait failed early; do not spin on a failing poll.
            std::thread::sleep(left.min(Duration::from_millis(10)));
        }
    }
}

#[cfg(test)]
#[path = "stop_tests.rs"]
mod tests;
