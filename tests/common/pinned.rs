//! Test processes pinned when a test learns their pids, so that its cleanup signals only
//! those very processes. A pid noted earlier and signalled later can by then be another
//! test's process (CI machines run with pid_max 32768, and a test run spawns thousands).
//! The likely cause of a rehearsal's one red test: its `once` ended by a SIGTERM that none of
//! its own processes sent.

use agent_reaper::procs::ProcTable;
use agent_reaper::procs::table::read_stat;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use rustix::fd::{AsFd, OwnedFd};
use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};

/// One process as it was when pinned: its pidfd keeps naming it whatever its pid becomes.
pub struct Pinned {
    pub pid: i32,
    fd: Option<OwnedFd>,
}

impl Pinned {
    /// `pid` now; `None` inside when it has already gone (signals then go nowhere).
    pub fn new(pid: i32) -> Pinned {
        let fd = Pid::from_raw(pid).and_then(|p| pidfd_open(p, PidfdFlags::empty()).ok());
        Pinned { pid, fd }
    }

    /// Whether the pinned process still runs (a pidfd turns readable when it exits).
    pub fn is_running(&self) -> bool {
        let Some(fd) = &self.fd else { return false };
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0))
    }

    /// SIGKILL to the pinned process, if it still runs; never to whoever has its pid now.
    pub fn kill(&self) {
        if let Some(fd) = &self.fd {
            let _ = pidfd_send_signal(fd, Signal::KILL);
        }
    }
}

/// SIGKILLs, when dropped (a test's end, passed or not), the pinned processes still running
/// and their descendants: a leaked `sleep` would hold the test harness's stdout open.
#[derive(Default)]
pub struct KillOnDrop(Vec<Pinned>);

impl KillOnDrop {
    pub fn new(pids: impl IntoIterator<Item = i32>) -> KillOnDrop {
        KillOnDrop(pids.into_iter().map(Pinned::new).collect())
    }

    pub fn push(&mut self, pid: i32) {
        self.0.push(Pinned::new(pid));
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let running: Vec<&Pinned> = self.0.iter().filter(|p| p.is_running()).collect();
        if running.is_empty() {
            return;
        }
        // Descendants of a process still running are its own: each is pinned, and signalled
        // only if its start time is still the one the scan saw (its pid was not reused).
        let table = ProcTable::scan().unwrap_or_default();
        let roots: Vec<i32> = running.iter().map(|p| p.pid).collect();
        for pid in table.descendants_and_self(roots.iter().copied()) {
            if roots.contains(&pid) {
                continue;
            }
            let pinned = Pinned::new(pid);
            let seen = table.get(pid).map(|p| p.start_time);
            if seen.is_some() && read_stat(pid).map(|s| s.start_time) == seen {
                pinned.kill();
            }
        }
        for p in running {
            p.kill();
        }
    }
}

/// `sig` to a child this test spawned, while its pid is still its own: running, or exited
/// but not yet reaped (a zombie keeps its pid). Once reaped (`try_wait`, `wait`), its pid
/// may be another process's, and nothing is sent. Whether it was sent.
pub fn signal_child(child: &std::process::Child, sig: nix::sys::signal::Signal) -> bool {
    use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::Pid(pid), flags) {
        Ok(WaitStatus::StillAlive) => nix::sys::signal::kill(pid, sig).is_ok(),
        _ => false,
    }
}
