//! Stopping processes: pidfd-verified SIGTERM, escalating waits, SIGKILL for survivors.

use super::table::{ProcKey, ProcTable, StatFields, read_stat};
use crate::model::AgentId;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
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

#[derive(Debug, Clone)]
pub struct StopRequest {
    pub agent: AgentId,
    pub processes: Vec<ProcKey>,
}

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
    stop_all_with(&RealOps, requests, table, policy)
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

/// `stop_all` over injected OS calls.
pub fn stop_all_with<O: ProcessOps>(
    ops: &O,
    requests: &[StopRequest],
    table: &ProcTable,
    policy: &StopPolicy,
) -> Vec<StopReport> {
    let protected = table.ancestors_and_self(std::process::id() as i32);
    let euid = nix::unistd::geteuid().as_raw();
    let mut reports = vec![StopReport::default(); requests.len()];
    let mut targets: Vec<Target<O::Handle>> = Vec::new();
    // Target index of each process, so one process listed by two agents is signalled once.
    let mut index: HashMap<ProcKey, Option<usize>> = HashMap::new();
    // Per request, the target indices it owns.
    let mut owned: Vec<Vec<usize>> = vec![Vec::new(); requests.len()];

    for (ri, req) in requests.iter().enumerate() {
        for key in &req.processes {
            if let Some(known) = index.get(key) {
                if let Some(ti) = *known {
                    owned[ri].push(ti);
                    reports[ri].signalled.push(*key);
                }
                continue;
            }
            let slot = prepare(ops, key, table, &protected, euid, &mut reports[ri]).map(|handle| {
                targets.push(Target {
                    key: *key,
                    handle,
                    exited: false,
                });
                targets.len() - 1
            });
            if let Some(ti) = slot {
                owned[ri].push(ti);
                reports[ri].signalled.push(*key);
            }
            index.insert(*key, slot);
        }
    }

    // Every SIGTERM goes out before any waiting, so N agents cost one grace period.
    for t in &mut targets {
        if ops.signal(&t.handle, Sig::Term).is_err() {
            // ESRCH: gone between open and signal. Anything else is found out by waiting.
            t.exited = ops
                .stat(t.key.pid)
                .is_none_or(|s| s.start_time != t.key.start_time);
        }
        // A stopped process only acts on SIGTERM once continued.
        if table
            .get(t.key.pid)
            .is_some_and(|p| matches!(p.state, 'T' | 't'))
        {
            let _ = ops.signal(&t.handle, Sig::Cont);
        }
    }

    let start = Instant::now();
    let mut deadline = start;
    for step in &policy.term_steps {
        deadline += *step;
        wait_until(ops, &mut targets, deadline);
    }

    let mut escalated = vec![false; targets.len()];
    for (ti, t) in targets.iter().enumerate() {
        if !t.exited {
            escalated[ti] = true;
            let _ = ops.signal(&t.handle, Sig::Kill);
        }
    }
    if escalated.iter().any(|&e| e) {
        wait_until(ops, &mut targets, Instant::now() + KILL_WAIT);
    }

    // Exited ones that are still zombies: nobody can kill them, their parent must reap.
    // A zombie whose parent we just stopped is reparented and reaped moments later, so
    // only what is still defunct after a short while is reported.
    // One whose parent is itself being stopped here is not reported: once that parent is
    // gone it belongs to init, which reaps it.
    let stopped: HashSet<i32> = targets.iter().map(|t| t.key.pid).collect();
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
    let mut defunct = zombies(&targets);
    // Only a living parent can still reap one; init's are not waited for.
    while defunct.values().any(|(_, ppid)| *ppid > 1) && Instant::now() < reap_deadline {
        std::thread::sleep(Duration::from_millis(10));
        defunct = zombies(&targets);
    }

    for (ri, report) in reports.iter_mut().enumerate() {
        for &ti in &owned[ri] {
            report.escalated_to_sigkill |= escalated[ti];
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
mod tests {
    use super::*;
    use crate::procs::table::ProcInfo;
    use std::cell::RefCell;

    /// A scripted world: per pid, the start time seen on re-read, whether it exits on TERM.
    #[derive(Default)]
    struct Fake {
        now_start: HashMap<i32, u64>,
        ignores_term: Vec<i32>,
        zombie_after_exit: Vec<i32>,
        sent: RefCell<Vec<(i32, Sig)>>,
        dead: RefCell<Vec<i32>>,
    }

    impl ProcessOps for Fake {
        type Handle = i32;
        fn open(&self, pid: i32) -> std::io::Result<i32> {
            Ok(pid)
        }
        fn stat(&self, pid: i32) -> Option<StatFields> {
            let dead = self.dead.borrow().contains(&pid);
            if dead && !self.zombie_after_exit.contains(&pid) {
                return None;
            }
            Some(StatFields {
                pid,
                state: if dead { 'Z' } else { 'S' },
                ppid: 1,
                pgid: pid,
                sid: pid,
                start_time: *self.now_start.get(&pid)?,
            })
        }
        fn signal(&self, h: &i32, sig: Sig) -> std::io::Result<()> {
            self.sent.borrow_mut().push((*h, sig));
            if sig == Sig::Kill || (sig == Sig::Term && !self.ignores_term.contains(h)) {
                self.dead.borrow_mut().push(*h);
            }
            Ok(())
        }
        fn wait_any(&self, handles: &[&i32], _timeout: Duration) -> Vec<bool> {
            let dead = self.dead.borrow();
            handles.iter().map(|h| dead.contains(h)).collect()
        }
    }

    fn info(pid: i32, uid: u32) -> ProcInfo {
        ProcInfo {
            pid,
            ppid: 1,
            pgid: pid,
            sid: pid,
            state: 'S',
            start_time: 100,
            uid,
            cmdline: vec![],
        }
    }

    fn key(pid: i32) -> ProcKey {
        ProcKey {
            pid,
            start_time: 100,
        }
    }

    fn req(pids: &[i32]) -> StopRequest {
        StopRequest {
            agent: AgentId::parse("a-1").unwrap(),
            processes: pids.iter().map(|&p| key(p)).collect(),
        }
    }

    fn quick() -> StopPolicy {
        StopPolicy {
            term_steps: vec![Duration::from_millis(1)],
        }
    }

    fn uid() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    #[test]
    fn pid_reused_after_the_scan_is_not_signalled() {
        let table = ProcTable::from_procs(vec![info(1000, uid()), info(1001, uid())]);
        let fake = Fake {
            // 1001 exited and its pid went to a new process after the table was read.
            now_start: HashMap::from([(1000, 100), (1001, 555)]),
            ..Default::default()
        };
        let r = &stop_all_with(&fake, &[req(&[1000, 1001])], &table, &quick())[0];
        assert_eq!(*fake.sent.borrow(), vec![(1000, Sig::Term)]);
        assert_eq!(r.signalled, vec![key(1000)]);
        assert_eq!(r.refused.len(), 1);
        assert_eq!(r.refused[0].0, key(1001));
        assert!(r.refused[0].1.contains("reused"));
        assert!(!r.escalated_to_sigkill);
        assert!(r.verified_no_zombies());
    }

    #[test]
    fn protected_foreign_and_unknown_pids_are_refused() {
        let me = std::process::id() as i32;
        let mut mine = info(me, uid());
        mine.ppid = 1000;
        let table = ProcTable::from_procs(vec![
            info(1, 0),
            info(1000, uid()),
            mine,
            info(2000, uid() + 1),
        ]);
        let fake = Fake {
            now_start: HashMap::from([(1, 100), (1000, 100), (me, 100), (2000, 100)]),
            ..Default::default()
        };
        let r = &stop_all_with(&fake, &[req(&[1, 1000, me, 2000, 3000])], &table, &quick())[0];
        let refused: Vec<i32> = r.refused.iter().map(|(k, _)| k.pid).collect();
        // uid rule does not apply as root.
        let expected: Vec<i32> = if uid() == 0 {
            vec![1, 1000, me, 3000]
        } else {
            vec![1, 1000, me, 2000, 3000]
        };
        assert_eq!(refused, expected);
        let signalled: Vec<i32> = r.signalled.iter().map(|k| k.pid).collect();
        assert_eq!(signalled, if uid() == 0 { vec![2000] } else { vec![] });
    }

    #[test]
    fn term_ignorers_get_sigkill_and_zombies_are_reported() {
        let table = ProcTable::from_procs(vec![
            info(1000, uid()),
            info(1001, uid()),
            info(1002, uid()),
        ]);
        let fake = Fake {
            now_start: HashMap::from([(1000, 100), (1001, 100), (1002, 100)]),
            ignores_term: vec![1001],
            zombie_after_exit: vec![1002],
            ..Default::default()
        };
        let reports = stop_all_with(&fake, &[req(&[1000]), req(&[1001, 1002])], &table, &quick());
        assert!(!reports[0].escalated_to_sigkill);
        assert!(reports[1].escalated_to_sigkill);
        assert_eq!(reports[1].defunct, vec![(1002, 1)]);
        // Reported, but left to init: nothing of the agent runs.
        assert!(reports[1].verified_no_zombies());
        let waiting_on_parent = StopReport {
            defunct: vec![(1002, 999)],
            ..Default::default()
        };
        assert!(!waiting_on_parent.verified_no_zombies());
        assert!(reports[0].verified_no_zombies());
        let sent = fake.sent.borrow();
        // All TERMs before any KILL.
        assert_eq!(
            *sent,
            vec![
                (1000, Sig::Term),
                (1001, Sig::Term),
                (1002, Sig::Term),
                (1001, Sig::Kill)
            ]
        );
    }

    #[test]
    fn a_process_shared_by_two_agents_is_signalled_once() {
        let table = ProcTable::from_procs(vec![info(1000, uid())]);
        let fake = Fake {
            now_start: HashMap::from([(1000, 100)]),
            ..Default::default()
        };
        let reports = stop_all_with(&fake, &[req(&[1000]), req(&[1000])], &table, &quick());
        assert_eq!(fake.sent.borrow().len(), 1);
        assert_eq!(reports[0].signalled, reports[1].signalled);
    }
}
