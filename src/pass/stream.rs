//! Tasks one at a time: each is read (lean), observed, decided and, when nothing in it waits
//! on other tasks (stops, a settle wait), acted on and reduced to its report before the
//! next. Agents with nothing to do leave only a count, so a pass holds its largest task,
//! not the sum of all history.

use super::cache::{CleanTask, session_hash};
use super::read::{FileKey, read_lean};
use super::reports::{TaskReport, Totals, fill_task};
use super::writers::Writers;
use super::{Mode, first_status};
use crate::act::{self, Outcome};
use crate::config::Config;
use crate::decide::{Action, AgentClass, Decision, FileState, Policy, decide};
use crate::journal::Journal;
use crate::model::StatusClass;
use crate::observe::{AgentView, Backend, TaskView, World, agent_view, empty_view, pending_agent};
use crate::registry::{ReadOptions, UpdateOptions, recover_sidecar};
use crate::workspace::TaskDir;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::SystemTime;

/// Registries at least this large are parsed one at a time, so two big ones do not add up.
const BIG_REGISTRY: u64 = 4 << 20;

/// One task to look at this pass.
pub struct Job<'a> {
    pub task: TaskDir,
    /// Its agent rows when the base's state DB owns it.
    pub rows: Option<&'a [Value]>,
}

/// What the pass shares with the task workers.
pub struct Shared<'a> {
    pub world: World<'a>,
    pub writers: &'a Writers,
    pub policy: Policy,
    pub mode: Mode,
    pub config: &'a Config,
    pub read: ReadOptions,
    pub update: UpdateOptions,
    pub journal: Option<&'a Mutex<Journal>>,
    /// `agent_*` sessions tmux lists (empty when tmux did not answer).
    pub live_sessions: &'a HashSet<String>,
    /// Sessions first seen gone in earlier passes.
    pub old_gone: &'a HashMap<String, SystemTime>,
    pub big_read: Mutex<()>,
    pub found: Mutex<Found>,
}

/// What the tasks told about sessions, collected while they stream by.
#[derive(Default)]
pub struct Found {
    /// Live sessions some registry names (the rest are orphans).
    pub known_sessions: HashSet<String>,
    /// Active agents whose session is gone, with since when.
    pub gone: HashMap<String, SystemTime>,
    /// Names of `old_gone` that some agent of this pass carries.
    pub seen_gone: HashSet<String>,
    /// Some registry could not be read (then no session counts as an orphan).
    pub unread: bool,
    pub errors: Vec<String>,
}

/// A task after its look: finished (acted on when it could be) or held for the
/// cross-task steps.
pub enum Step {
    Done {
        report: TaskReport,
        totals: Totals,
        /// (id, status written) for the global registry.
        transitions: Vec<(String, String)>,
        clean: Option<CleanTask>,
    },
    Held {
        view: TaskView,
        decisions: Vec<Decision>,
        quiet: usize,
    },
}

/// Reads, observes and decides one task; acts on it at once unless it must wait for the
/// cross-task steps (stops, the settle wait of `once`, a DB transaction).
pub fn one_task(shared: &Shared<'_>, job: Job<'_>) -> Step {
    let Job { task, rows } = job;
    let backend = if rows.is_some() {
        Backend::Sqlite
    } else {
        Backend::Json
    };
    let mut view = empty_view(&task, backend);
    let execute = matches!(shared.mode, Mode::Execute { .. });
    if execute
        && backend == Backend::Json
        && let Err(e) = recover_sidecar(&task.registry(), &shared.update)
    {
        lock(&shared.found).errors.push(e.to_string());
    }
    let (lean, key) = match rows {
        Some(rows) => (super::lean::from_rows(rows), None),
        None => {
            let path = task.registry();
            let big = super::read::registry_key(&path).is_some_and(|k| k.size >= BIG_REGISTRY);
            let _one_at_a_time = big.then(|| lock(&shared.big_read));
            match read_lean(&path, &shared.read) {
                Ok(read) => read,
                Err(e) => {
                    view.error = Some(e);
                    lock(&shared.found).unread = true;
                    return finish(shared, view, Vec::new(), 0, None, false);
                }
            }
        }
    };
    view.active_count = lean.active_count;
    view.expected_active = lean.expected_active();
    let agents = lean.agents.unwrap_or_default();
    let listed = id_counts(&agents);
    let mut dir_ok = HashMap::new();
    let mut decisions = Vec::new();
    let mut quiet = 0;
    let mut all_cleaned = true;
    let mut sessions = Vec::new();
    let no_writers = HashMap::new();
    let now = shared.world.now;
    for (lean_agent, n) in agents.into_iter().zip(listed) {
        let n = usize::from(n);
        let pending = match pending_agent(&task, backend, lean_agent.into_entry(), n, &mut dir_ok) {
            Ok(p) => p,
            Err(warning) => {
                view.warnings.push(warning);
                continue;
            }
        };
        let writers = if pending.file_ids().next().is_some() {
            shared.writers.get()
        } else {
            &no_writers
        };
        let agent = agent_view(pending, &shared.world, writers);
        let decision = decide(&agent.facts, &shared.policy, now);
        note_session(shared, &agent);
        let cleaned = decision.class == AgentClass::Cleaned
            && decision.actions.is_empty()
            && decision.waiting.is_none()
            && agent.warnings.is_empty();
        all_cleaned &= cleaned;
        if execute && is_quiet(&agent, &decision) {
            quiet += 1;
            sessions.push(session_hash(&agent.session_name()));
            continue;
        }
        view.agents.push(agent);
        decisions.push(decision);
    }
    let must_hold = backend == Backend::Sqlite
        || decisions
            .iter()
            .any(|d| d.actions.iter().any(|a| matches!(a, Action::Stop { .. })))
        || matches!(
            shared.mode,
            Mode::Execute {
                wait_for_settle: true
            }
        ) && view.agents.iter().zip(&decisions).any(|(a, d)| {
            d.waiting.is_some()
                && a.facts
                    .logs
                    .iter()
                    .any(|l| matches!(l.state, FileState::Recent(_)))
        });
    if execute && must_hold {
        return Step::Held {
            view,
            decisions,
            quiet,
        };
    }
    let clean = (all_cleaned && view.warnings.is_empty() && view.error.is_none())
        .then_some(key)
        .flatten()
        .map(|key: FileKey| CleanTask {
            key,
            agents: quiet,
            sessions,
        });
    finish(shared, view, decisions, quiet, clean, execute)
}

/// Per entry, how many entries carry its id (0: none, 2: two or more), without a copy of
/// the ids: one sort of their indexes.
fn id_counts(agents: &[super::lean::LeanAgent]) -> Vec<u8> {
    let id = |i: u32| agents[i as usize].id.as_deref();
    let mut order: Vec<u32> = (0..agents.len() as u32)
        .filter(|&i| id(i).is_some())
        .collect();
    order.sort_unstable_by(|&a, &b| id(a).cmp(&id(b)));
    let mut counts = vec![0u8; agents.len()];
    for run in order.chunk_by(|&a, &b| id(a) == id(b)) {
        let n = if run.len() > 1 { 2 } else { 1 };
        for &i in run {
            counts[i as usize] = n;
        }
    }
    counts
}

/// Acts on a task that waits for nobody (when executing) and reduces it to its report.
fn finish(
    shared: &Shared<'_>,
    view: TaskView,
    decisions: Vec<Decision>,
    quiet: usize,
    mut clean: Option<CleanTask>,
    execute: bool,
) -> Step {
    let mut outcomes = vec![Outcome::default(); view.agents.len()];
    let mut written = false;
    if execute && view.error.is_none() {
        match act::apply_task(
            &view,
            &decisions,
            &mut outcomes,
            shared.config,
            &shared.update,
            shared.journal,
            shared.world.now,
        ) {
            Ok(w) => written = w,
            Err(e) => lock(&shared.found).errors.push(e),
        }
    }
    if written {
        // Its key changed with the write; the next pass reads it again.
        clean = None;
    }
    let transitions = transitions(&view, &outcomes);
    let mut totals = Totals::default();
    let report = fill_task(
        &mut totals,
        &view,
        &decisions,
        execute.then_some(outcomes.as_slice()),
        written,
        quiet,
    );
    Step::Done {
        report,
        totals,
        transitions,
        clean,
    }
}

/// (id, status written) of the agents whose status this pass changed.
pub fn transitions(view: &TaskView, outcomes: &[Outcome]) -> Vec<(String, String)> {
    view.agents
        .iter()
        .zip(outcomes)
        .filter_map(|(a, o)| Some((a.id.to_string(), o.status_applied.clone()?)))
        .collect()
}

/// An agent with nothing to do, say or wait for, and not live: only counted.
fn is_quiet(agent: &AgentView, d: &Decision) -> bool {
    d.actions.is_empty()
        && d.waiting.is_none()
        && d.recheck.is_none()
        && agent.warnings.is_empty()
        && first_status(d).is_none()
        && !matches!(
            d.class,
            AgentClass::Active | AgentClass::Settling | AgentClass::Zombie | AgentClass::Stale
        )
}

/// Which live sessions the registries know, and which active agents lost theirs.
fn note_session(shared: &Shared<'_>, agent: &AgentView) {
    let Ok(snapshot) = shared.world.tmux else {
        return;
    };
    let name = agent.session_name();
    let live = shared.live_sessions.contains(&name);
    let was_gone = shared.old_gone.contains_key(&name);
    let lost = agent.facts.class == StatusClass::Active && !snapshot.sessions.contains_key(&name);
    if !live && !was_gone && !lost {
        return;
    }
    let mut found = lock(&shared.found);
    if live {
        found.known_sessions.insert(name.clone());
    }
    if was_gone {
        found.seen_gone.insert(name.clone());
    }
    if lost {
        let since = shared
            .old_gone
            .get(&name)
            .copied()
            .unwrap_or(shared.world.now);
        found.gone.insert(name, since);
    }
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `one_task` over `jobs` on `threads` workers; steps in job order. `progress` is
/// told (tasks done, total) as they finish.
pub fn run_all<'a>(
    shared: &Shared<'_>,
    jobs: Vec<Job<'a>>,
    threads: usize,
    progress: &Mutex<Option<Box<dyn FnMut(usize, usize) + Send>>>,
) -> Vec<Step> {
    let total = jobs.len();
    let queue = Mutex::new(jobs.into_iter().enumerate());
    let done = Mutex::new(0usize);
    let mut steps: Vec<(usize, Step)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.clamp(1, total.max(1)))
            .map(|_| {
                scope.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let next = lock(&queue).next();
                        let Some((i, job)) = next else { break };
                        out.push((i, one_task(shared, job)));
                        let n = {
                            let mut d = lock(&done);
                            *d += 1;
                            *d
                        };
                        if let Some(f) = lock(progress).as_mut() {
                            f(n, total);
                        }
                    }
                    out
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("task worker panicked"))
            .collect()
    });
    steps.sort_by_key(|(i, _)| *i);
    steps.into_iter().map(|(_, s)| s).collect()
}
