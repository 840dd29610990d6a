//! The hook runner: a few worker threads, one run at a time per task, outcomes kept in the pending store.

use super::exec::{self, RunEnd, Stream};
use super::pending::{PendingError, PendingRun, PendingStore, RunKey};
use crate::config::hooks::HookSpec;
use std::collections::{HashSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

/// How one run ended, for reports.
#[derive(Debug, Clone)]
pub struct Finished {
    pub run: PendingRun,
    pub attempt: u32,
    pub ok: bool,
    pub outcome: String,
    /// `max_attempts` reached: dropped from the store.
    pub gave_up: bool,
}

struct State {
    specs: Vec<HookSpec>,
    store: PendingStore,
    /// Runs waiting for a worker, in arrival order.
    queue: VecDeque<RunKey>,
    /// Runs queued or running (never queued twice).
    busy: HashSet<RunKey>,
    /// Tasks with a run in progress: runs for one task never overlap (hooks change the
    /// orchestrator's per-task state, as its own detector does, one step after another).
    running_tasks: HashSet<String>,
    finished: Vec<Finished>,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct Runner {
    shared: Arc<Shared>,
    _workers: Vec<JoinHandle<()>>,
}

impl Runner {
    /// Loads the pending runs of `state_dir` and starts `workers` threads. A corrupt store
    /// is moved aside and reported in the second value.
    pub fn start(
        state_dir: &Path,
        specs: Vec<HookSpec>,
        workers: usize,
    ) -> Result<(Runner, Option<PendingError>), PendingError> {
        let (store, warning) = PendingStore::load(state_dir)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                specs,
                store,
                queue: VecDeque::new(),
                busy: HashSet::new(),
                running_tasks: HashSet::new(),
                finished: Vec::new(),
                shutdown: false,
            }),
            changed: Condvar::new(),
        });
        let workers = (0..workers.max(1))
            .map(|i| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("hook-{i}"))
                    .spawn(move || worker(&shared))
                    .expect("spawning a hook worker")
            })
            .collect();
        Ok((
            Runner {
                shared,
                _workers: workers,
            },
            warning,
        ))
    }

    /// Applies a reloaded configuration: later runs use the new specs (by name). True when
    /// they changed.
    pub fn set_specs(&self, specs: &[HookSpec]) -> bool {
        let mut st = self.shared.lock();
        if st.specs == specs {
            return false;
        }
        tracing::info!("hooks reloaded: {}", names(specs));
        st.specs = specs.to_vec();
        true
    }

    /// Remembers `runs` (durably, before any starts), then queues them and every earlier
    /// run whose retry time has come. Returns the runs queued and an error if the store
    /// could not be saved (the runs still run; a crash before they succeed loses them).
    pub fn submit(
        &self,
        runs: Vec<PendingRun>,
        now: SystemTime,
    ) -> (Vec<PendingRun>, Option<PendingError>) {
        let mut st = self.shared.lock();
        let mut added = false;
        for run in runs {
            added |= st.store.add(run);
        }
        let error = if added { st.store.save().err() } else { None };
        let now = crate::model::epoch_secs(now);
        let due: Vec<PendingRun> = st
            .store
            .runs
            .iter()
            .filter(|r| r.not_before <= now && !st.busy.contains(&r.key()))
            .cloned()
            .collect();
        for run in &due {
            st.busy.insert(run.key());
            st.queue.push_back(run.key());
        }
        drop(st);
        self.shared.changed.notify_all();
        (due, error)
    }

    /// Waits until no run is queued or running; returns what finished since the last call.
    pub fn wait_idle(&self) -> Vec<Finished> {
        let mut st = self.shared.lock();
        while !st.busy.is_empty() {
            st = self
                .shared
                .changed
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
        std::mem::take(&mut st.finished)
    }

    /// What finished since the last call (the daemon does not wait).
    pub fn take_finished(&self) -> Vec<Finished> {
        std::mem::take(&mut self.shared.lock().finished)
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        // Workers finish the run in hand (bounded by its timeout) and stop; what did not
        // succeed stays in the store for the next start.
        self.shared.lock().shutdown = true;
        self.shared.changed.notify_all();
    }
}

fn names(specs: &[HookSpec]) -> String {
    if specs.is_empty() {
        return "none".into();
    }
    specs
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn worker(shared: &Shared) {
    loop {
        let (run, spec) = {
            let mut st = shared.lock();
            loop {
                if st.shutdown {
                    return;
                }
                let (next, dropped) = next_job(&mut st);
                if dropped {
                    // Runs left `busy` without running: whoever waits for idle must look.
                    shared.changed.notify_all();
                }
                if let Some(next) = next {
                    break next;
                }
                st = shared.changed.wait(st).unwrap_or_else(|p| p.into_inner());
            }
        };
        let attempt = run.attempts + 1;
        let end = execute(&spec, &run, attempt);
        let mut st = shared.lock();
        let key = run.key();
        let outcome = end.describe(spec.timeout);
        let ok = end.success();
        let mut gave_up = false;
        if ok {
            st.store.remove(&key);
        } else if let Some(pending) = st.store.get_mut(&key) {
            pending.attempts = attempt;
            pending.last_error = Some(outcome.clone());
            pending.not_before = crate::model::epoch_secs(SystemTime::now() + spec.retry_after);
            if spec.max_attempts > 0 && attempt >= spec.max_attempts {
                st.store.remove(&key);
                gave_up = true;
            }
        }
        let fields = (&run.values.agent_id, &run.values.task_id, &spec.name);
        if ok {
            tracing::info!(agent_id = %fields.0, task_id = %fields.1, action = "hook", hook = %fields.2,
                "{}/{}: hook {} succeeded (attempt {attempt})", fields.1, fields.0, fields.2);
        } else if gave_up {
            tracing::error!(agent_id = %fields.0, task_id = %fields.1, action = "hook", hook = %fields.2,
                "{}/{}: hook {} failed: {outcome}; attempt {attempt} of max_attempts {}: given up",
                fields.1, fields.0, fields.2, spec.max_attempts);
        } else {
            tracing::warn!(agent_id = %fields.0, task_id = %fields.1, action = "hook", hook = %fields.2,
                "{}/{}: hook {} failed: {outcome} (attempt {attempt}); retried on a pass after {} s",
                fields.1, fields.0, fields.2, spec.retry_after.as_secs());
        }
        if let Err(e) = st.store.save() {
            tracing::error!("{e}");
        }
        st.running_tasks.remove(&key.task_id);
        st.busy.remove(&key);
        st.finished.push(Finished {
            run,
            attempt,
            ok,
            outcome,
            gave_up,
        });
        drop(st);
        shared.changed.notify_all();
    }
}

/// The first queued run whose task has none running, with its hook's current spec. Runs of
/// a hook no longer configured are dropped from the store (the flag says some were).
fn next_job(st: &mut State) -> (Option<(PendingRun, HookSpec)>, bool) {
    let mut dropped = false;
    loop {
        let Some(pos) = st
            .queue
            .iter()
            .position(|k| !st.running_tasks.contains(&k.task_id))
        else {
            return (None, dropped);
        };
        let key = st.queue.remove(pos).expect("position is in range");
        let run = st.store.runs.iter().find(|r| r.key() == key).cloned();
        let spec = st.specs.iter().find(|s| s.name == key.hook).cloned();
        match (run, spec) {
            (Some(run), Some(spec)) => {
                st.running_tasks.insert(key.task_id.clone());
                return (Some((run, spec)), dropped);
            }
            (Some(_), None) => {
                tracing::warn!(
                    agent_id = %key.agent_id, task_id = %key.task_id,
                    "{}/{}: hook {:?} is no longer configured; its pending run is dropped",
                    key.task_id, key.agent_id, key.hook
                );
                st.store.remove(&key);
                if let Err(e) = st.store.save() {
                    tracing::error!("{e}");
                }
                st.busy.remove(&key);
                dropped = true;
            }
            (None, _) => {
                st.busy.remove(&key);
                dropped = true;
            }
        }
    }
}

/// One attempt, its output logged with the agent's journald fields.
fn execute(spec: &HookSpec, run: &PendingRun, attempt: u32) -> RunEnd {
    let v = &run.values;
    let argv = spec.argv(v);
    let env = spec.env_for(v, attempt);
    tracing::info!(agent_id = %v.agent_id, task_id = %v.task_id, action = "hook", hook = %spec.name,
        reason = %v.reason, "{}/{}: hook {} runs for {} (attempt {attempt}): {argv:?}",
        v.task_id, v.agent_id, spec.name, v.status);
    let on_line = |stream: Stream, line: &str| {
        tracing::info!(agent_id = %v.agent_id, task_id = %v.task_id, action = "hook",
            hook = %spec.name, stream = stream.name(), "{}/{}: hook {} {}: {line}",
            v.task_id, v.agent_id, spec.name, stream.name());
    };
    exec::run(&argv, &env, spec.timeout, |_| {}, &on_line)
}

/// How long until `run` may be tried again (zero: now).
pub fn retry_in(run: &PendingRun, now: SystemTime) -> Duration {
    Duration::from_secs(run.not_before.saturating_sub(crate::model::epoch_secs(now)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::hooks::{Template, Values};
    use std::collections::BTreeMap;

    fn spec(name: &str, script: &str, retry_after: Duration) -> HookSpec {
        HookSpec {
            name: name.into(),
            on: vec!["failed".into()],
            command: ["/bin/sh", "-c", script, "hook", "{task_id}", "{agent_id}"]
                .iter()
                .map(|a| Template::parse(a).unwrap())
                .collect(),
            timeout: Duration::from_secs(20),
            retry_after,
            max_attempts: 0,
            env: BTreeMap::new(),
        }
    }

    fn run(hook: &str, task: &str, agent: &str) -> PendingRun {
        PendingRun::new(
            hook,
            Values {
                task_id: task.into(),
                agent_id: agent.into(),
                status: "failed".into(),
                reason: "session_not_found".into(),
                workspace_base: "/ws".into(),
            },
        )
    }

    #[test]
    fn a_failed_run_stays_pending_across_restarts_until_it_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("ok");
        let script = format!("test -e {}", flag.display());
        let s = spec("h", &script, Duration::ZERO);
        let (runner, _) = Runner::start(dir.path(), vec![s.clone()], 2).unwrap();
        runner.submit(vec![run("h", "T1", "a-1-aaaaaa")], SystemTime::now());
        let done = runner.wait_idle();
        assert_eq!(done.len(), 1);
        assert!(!done[0].ok, "{:?}", done[0]);
        drop(runner);
        // A new runner (a restart) finds it and retries it on its first pass.
        let (runner, _) = Runner::start(dir.path(), vec![s], 2).unwrap();
        std::fs::write(&flag, "").unwrap();
        let (queued, _) = runner.submit(vec![], SystemTime::now());
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].attempts, 1);
        let done = runner.wait_idle();
        assert!(done[0].ok && done[0].attempt == 2, "{:?}", done[0]);
        assert!(PendingStore::peek(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn runs_of_one_task_never_overlap_and_other_tasks_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        // Each run writes start and end lines; within a task they must not interleave.
        let script = format!(
            "echo \"start $1 $2\" >> {log}; sleep 0.2; echo \"end $1 $2\" >> {log}",
            log = log.display()
        );
        let (runner, _) =
            Runner::start(dir.path(), vec![spec("h", &script, Duration::ZERO)], 4).unwrap();
        runner.submit(
            vec![
                run("h", "T1", "a-1-aaaaaa"),
                run("h", "T1", "b-1-bbbbbb"),
                run("h", "T2", "c-1-cccccc"),
            ],
            SystemTime::now(),
        );
        let done = runner.wait_idle();
        assert!(done.iter().all(|d| d.ok), "{done:?}");
        let text = std::fs::read_to_string(&log).unwrap();
        let t1: Vec<&str> = text.lines().filter(|l| l.contains(" T1 ")).collect();
        assert_eq!(t1.len(), 4, "{text}");
        assert!(
            t1[0].starts_with("start") && t1[1].starts_with("end"),
            "{text}"
        );
        assert!(
            t1[2].starts_with("start") && t1[3].starts_with("end"),
            "{text}"
        );
    }

    #[test]
    fn a_retry_waits_for_retry_after_and_max_attempts_gives_up() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec("h", "exit 1", Duration::from_secs(3600));
        s.max_attempts = 2;
        let (runner, _) = Runner::start(dir.path(), vec![s], 1).unwrap();
        runner.submit(vec![run("h", "T1", "a-1-aaaaaa")], SystemTime::now());
        assert!(!runner.wait_idle()[0].gave_up);
        let (queued, _) = runner.submit(vec![], SystemTime::now());
        assert!(queued.is_empty(), "not due before retry_after");
        let later = SystemTime::now() + Duration::from_secs(7200);
        let pending = PendingStore::peek(dir.path()).unwrap();
        assert!(retry_in(&pending[0], SystemTime::now()) > Duration::from_secs(3000));
        let (queued, _) = runner.submit(vec![], later);
        assert_eq!(queued.len(), 1);
        let done = runner.wait_idle();
        assert!(done[0].gave_up, "{done:?}");
        assert!(PendingStore::peek(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn a_run_of_a_removed_hook_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (runner, _) =
            Runner::start(dir.path(), vec![spec("h", "exit 1", Duration::ZERO)], 1).unwrap();
        runner.submit(vec![run("h", "T1", "a-1-aaaaaa")], SystemTime::now());
        runner.wait_idle();
        runner.set_specs(&[spec("other", "exit 0", Duration::ZERO)]);
        runner.submit(vec![], SystemTime::now());
        assert!(runner.wait_idle().is_empty());
        assert!(PendingStore::peek(dir.path()).unwrap().is_empty());
    }
}
