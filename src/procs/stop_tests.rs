//! Unit tests of the stopper against a scripted world (races without real processes).

use super::*;
use crate::procs::table::ProcInfo;
use std::cell::RefCell;

/// A scripted world: per pid, the start time seen on re-read, whether it exits on TERM.
#[derive(Default)]
struct Fake {
    now_start: HashMap<i32, u64>,
    ignores_term: Vec<i32>,
    zombie_after_exit: Vec<i32>,
    cgroup_members: Vec<i32>,
    sent: RefCell<Vec<(i32, Sig)>>,
    dead: RefCell<Vec<i32>>,
    cgroup_kills: RefCell<Vec<PathBuf>>,
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
    fn kill_cgroup(&self, dir: &Path) -> std::io::Result<()> {
        self.cgroup_kills.borrow_mut().push(dir.to_path_buf());
        // The kernel kills every member at once.
        self.dead
            .borrow_mut()
            .extend(self.cgroup_members.iter().copied());
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
    StopRequest::new(
        AgentId::parse("a-1").unwrap(),
        pids.iter().map(|&p| key(p)).collect(),
    )
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
    let r = &stop_all_with(&fake, &[req(&[1000, 1001])], &table, &quick(), &mut || None)[0];
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
    let r = &stop_all_with(
        &fake,
        &[req(&[1, 1000, me, 2000, 3000])],
        &table,
        &quick(),
        &mut || None,
    )[0];
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
    let reports = stop_all_with(
        &fake,
        &[req(&[1000]), req(&[1001, 1002])],
        &table,
        &quick(),
        &mut || None,
    );
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
    let reports = stop_all_with(
        &fake,
        &[req(&[1000]), req(&[1000])],
        &table,
        &quick(),
        &mut || None,
    );
    assert_eq!(fake.sent.borrow().len(), 1);
    assert_eq!(reports[0].signalled, reports[1].signalled);
}

#[test]
fn newcomers_found_by_a_rescan_are_stopped_the_same_way() {
    let table = ProcTable::from_procs(vec![info(1000, uid())]);
    let fresh = ProcTable::from_procs(vec![info(1000, uid()), info(1001, uid())]);
    let fake = Fake {
        now_start: HashMap::from([(1000, 100), (1001, 100)]),
        ..Default::default()
    };
    let mut scans = 0;
    let mut rescan = || {
        scans += 1;
        // A child forked after the first scan shows up once; then nothing new.
        Some((fresh.clone(), vec![vec![key(1000), key(1001)]]))
    };
    let r = &stop_all_with(&fake, &[req(&[1000])], &table, &quick(), &mut rescan)[0];
    assert_eq!(scans, 2);
    assert_eq!(r.joined, 1);
    assert_eq!(r.signalled, vec![key(1000), key(1001)]);
    assert_eq!(
        *fake.sent.borrow(),
        vec![(1000, Sig::Term), (1001, Sig::Term)]
    );
    assert!(!r.escalated_to_sigkill);
}

#[test]
fn a_forker_outrunning_the_rounds_is_killed_and_its_last_fork_is_a_survivor() {
    // Every scan finds a new child that ignores TERM and KILL alike (never dies).
    let all: Vec<i32> = (1000..1020).collect();
    let table = ProcTable::from_procs(all.iter().map(|&p| info(p, uid())).collect());
    let fake = Fake {
        now_start: all.iter().map(|&p| (p, 100)).collect(),
        ignores_term: all.clone(),
        ..Default::default()
    };
    let mut next = 1000;
    let mut rescan = || {
        next += 1;
        Some((table.clone(), vec![(1000..=next).map(key).collect()]))
    };
    let r = &stop_all_with(&fake, &[req(&[1000])], &table, &quick(), &mut rescan)[0];
    assert!(r.escalated_to_sigkill);
    // 3 TERM rounds, then 3 KILL rounds of newcomers, each signalled.
    assert_eq!(r.joined, 2 * MAX_ROUNDS);
    let sent = fake.sent.borrow();
    assert!(sent.contains(&(1000, Sig::Kill)));
    assert!(sent.contains(&(1000 + 2 * MAX_ROUNDS as i32, Sig::Kill)));
    assert!(r.survivors.is_empty(), "{r:?}");
}

#[test]
fn an_agent_in_its_own_cgroup_is_stopped_by_cgroup_kill_without_signals() {
    let table = ProcTable::from_procs(vec![info(1000, uid()), info(1001, uid())]);
    let fake = Fake {
        now_start: HashMap::from([(1000, 100), (1001, 100)]),
        ignores_term: vec![1000, 1001],
        cgroup_members: vec![1000, 1001],
        ..Default::default()
    };
    let mut request = req(&[1000, 1001]);
    request.cgroups = vec![PathBuf::from("/sys/fs/cgroup/agent-b.scope")];
    let r = &stop_all_with(&fake, &[request], &table, &quick(), &mut || None)[0];
    assert_eq!(
        *fake.cgroup_kills.borrow(),
        vec![PathBuf::from("/sys/fs/cgroup/agent-b.scope")]
    );
    assert!(fake.sent.borrow().is_empty(), "{:?}", fake.sent.borrow());
    assert_eq!(r.cgroups_killed.len(), 1);
    assert!(r.survivors.is_empty() && !r.escalated_to_sigkill);
}
