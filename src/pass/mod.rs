//! One reconcile pass over every workspace base: tasks streamed one at a time (observe,
//! decide, act, drop), then the live work that spans tasks (stops, settle waits).

use crate::act;
use crate::config::Config;
use crate::dbtasks::{db_task_dirs, open_base_db};
use crate::decide::{Action, Decision, Policy, decide_orphan};
use crate::observe::{self, TmuxView, World};
use crate::procs::{ProcTable, Tmux};
use crate::registry::{ReadOptions, UpdateOptions};
use crate::workspace::{discover_tasks, global_registry};
use cache::{CleanTask, session_hash};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

mod cache;
mod held;
mod lean;
mod read;
mod reports;
mod stream;
mod writers;

use reports::fill_task;
pub use reports::{AgentReport, OrphanReport, PassReport, TaskReport, Totals};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Decide and report; change nothing.
    Plan,
    /// Act. With `wait_for_settle`, logs written moments ago are waited for (up to `settle`)
    /// within the pass; without it they are left for a later pass.
    Execute { wait_for_settle: bool },
}

/// Long-lived pass state: configuration, seams, and what earlier rounds saw.
pub struct Reaper {
    pub config: Config,
    pub tmux: Box<dyn Tmux>,
    pub clock: fn() -> SystemTime,
    /// When each `agent_*` session was first seen gone (for `zombie_grace`).
    pub gone_since: HashMap<String, SystemTime>,
    /// Called with (tasks done, total) while acting.
    pub progress: Option<Box<dyn FnMut(usize, usize) + Send>>,
    /// This pass's state DBs, per base (newer orchestrators).
    pub state_dbs: HashMap<PathBuf, crate::dbtasks::BaseDb>,
    /// Journal of multi-step file operations (appends to an existing archive, copies);
    /// without one, a log whose archive already exists is left for a pass that has one.
    pub journal: Option<std::sync::Mutex<crate::journal::Journal>>,
    /// Task folders whose registries a full pass found wholly cleaned (the steady state).
    clean_tasks: HashMap<PathBuf, CleanTask>,
}

impl Reaper {
    pub fn new(config: Config, tmux: Box<dyn Tmux>) -> Self {
        Reaper {
            config,
            tmux,
            clock: SystemTime::now,
            gone_since: HashMap::new(),
            progress: None,
            journal: None,
            state_dbs: HashMap::new(),
            clean_tasks: HashMap::new(),
        }
    }

    pub fn policy(&self) -> Policy {
        let c = &self.config;
        Policy {
            settle: c.settle,
            terminal_grace: c.terminal_grace,
            zombie_grace: c.zombie_grace,
            max_inactivity: c.max_inactivity,
            delete_prompt_files: c.delete_prompt_files,
            kill_orphan_sessions: c.kill_orphan_sessions,
        }
    }

    fn update_options(&self) -> UpdateOptions {
        UpdateOptions {
            read: ReadOptions::default(),
            lock_timeout: self.config.lock_timeout,
        }
    }

    pub fn run(&mut self, mode: Mode) -> PassReport {
        self.run_scoped(mode, None)
    }

    /// A pass over the task folders in `scope` only (all when `None`). Orphan sessions are
    /// judged only in full passes: a partial view cannot tell who owns a session.
    ///
    /// Tasks stream through a few workers (see `stream`): each is read, observed, decided
    /// and, unless it holds agents to stop or logs to wait for, acted on and dropped before
    /// the next. The held ones (live work) are stopped together afterwards.
    pub fn run_scoped(&mut self, mode: Mode, scope: Option<&HashSet<PathBuf>>) -> PassReport {
        let now = (self.clock)();
        let policy = self.policy();
        let mut errors = Vec::new();
        let mut tmux: TmuxView = observe::tmux_view(self.tmux.snapshot());
        let table = match ProcTable::scan() {
            Ok(t) => t,
            Err(e) => {
                // Without /proc nobody can tell what runs: nothing destructive this round.
                tmux = Err(format!("/proc unreadable: {e}"));
                ProcTable::default()
            }
        };
        let live_sessions: HashSet<String> = match &tmux {
            Ok(snapshot) => snapshot
                .sessions
                .keys()
                .filter(|n| n.starts_with("agent_"))
                .cloned()
                .collect(),
            Err(_) => HashSet::new(),
        };
        let live_hashes: Vec<u64> = live_sessions.iter().map(|s| session_hash(s)).collect();
        // Find every task; full passes skip the ones still known clean.
        self.state_dbs.clear();
        let mut found_tasks = Vec::new();
        for base in &self.config.workspace_bases {
            let mut tasks = match discover_tasks(base) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(e.to_string());
                    continue;
                }
            };
            let db = match open_base_db(base, self.config.lock_timeout) {
                Ok(db) => db,
                Err(e) => {
                    errors.push(format!("{e}; using the JSON registries of this base"));
                    None
                }
            };
            if let Some(db) = &db {
                let known: HashSet<PathBuf> = tasks.iter().map(|t| t.dir.clone()).collect();
                for task in db_task_dirs(base, &db.rows) {
                    if !known.contains(&task.dir) {
                        tasks.push(task);
                    }
                }
            }
            found_tasks.extend(
                tasks
                    .into_iter()
                    .filter(|t| scope.is_none_or(|s| s.contains(&t.dir))),
            );
            if let Some(db) = db {
                self.state_dbs.insert(base.clone(), db);
            }
        }
        let mut report = PassReport {
            mode: if mode == Mode::Plan { "plan" } else { "once" },
            bases: self.config.workspace_bases.clone(),
            tmux_error: tmux.as_ref().err().cloned(),
            tasks: Vec::new(),
            orphans: Vec::new(),
            errors,
            totals: Totals::default(),
            written_tasks: Vec::new(),
        };
        let use_cache = scope.is_none() && tmux.is_ok();
        let mut still_clean: HashSet<PathBuf> = HashSet::new();
        let mut jobs = Vec::new();
        for task in found_tasks {
            // The DB owns a task when it has agent rows for it; JSON otherwise.
            let rows = self
                .state_dbs
                .get(&task.base)
                .and_then(|db| db.rows.get(&task.task_id))
                .filter(|rows| !rows.is_empty())
                .map(Vec::as_slice);
            // Still clean: counted, not listed (the daemon has nothing to do with it).
            if rows.is_none()
                && use_cache
                && let Some(clean) = self.clean_tasks.get(&task.dir)
                && clean.still_holds(&task.registry(), &live_hashes)
            {
                report.totals.tasks += 1;
                report.totals.agents_seen += clean.agents;
                still_clean.insert(task.dir);
                continue;
            }
            // Looked at again: it is cached anew only if it is still clean.
            self.clean_tasks.remove(&task.dir);
            jobs.push(stream::Job { task, rows });
        }
        if scope.is_none() {
            // Gone or changed tasks leave the cache; the changed ones may come back below.
            self.clean_tasks.retain(|dir, _| still_clean.contains(dir));
        }
        let pane_ancestors = match &tmux {
            Ok(snapshot) => crate::procs::table::pane_ancestors(
                &table,
                snapshot
                    .sessions
                    .values()
                    .flat_map(|s| s.panes.iter().filter_map(|p| p.pid)),
            ),
            Err(_) => HashSet::new(),
        };
        let writers = writers::Writers::default();
        let shared = stream::Shared {
            world: World {
                tmux: &tmux,
                table: &table,
                pane_ancestors: &pane_ancestors,
                gone_since: &self.gone_since,
                settle: self.config.settle,
                now,
            },
            writers: &writers,
            policy: policy.clone(),
            mode,
            config: &self.config,
            read: ReadOptions::default(),
            update: self.update_options(),
            journal: self.journal.as_ref(),
            live_sessions: &live_sessions,
            old_gone: &self.gone_since,
            big_read: Mutex::new(()),
            found: Mutex::new(stream::Found::default()),
        };
        let progress = Mutex::new(self.progress.take());
        let steps = stream::run_all(&shared, jobs, io_threads(), &progress);
        let found = shared.found.into_inner().unwrap_or_else(|e| e.into_inner());
        self.progress = progress.into_inner().unwrap_or_else(|e| e.into_inner());
        report.errors.extend(found.errors);
        let mut transitions: HashMap<PathBuf, Vec<(String, String)>> = HashMap::new();
        let mut held_views = Vec::new();
        let mut held_decisions = Vec::new();
        let mut held_quiet = Vec::new();
        for step in steps {
            match step {
                stream::Step::Done {
                    report: task,
                    totals,
                    transitions: t,
                    clean,
                } => {
                    if let Some(clean) = clean {
                        self.clean_tasks.insert(task.dir.clone(), clean.sorted());
                    }
                    if let Some(base) = self.base_of(&task.dir) {
                        transitions.entry(base).or_default().extend(t);
                    }
                    report.totals.add(&totals);
                    report.tasks.push(task);
                }
                stream::Step::Held {
                    view,
                    decisions,
                    quiet,
                } => {
                    held_views.push(view);
                    held_decisions.push(decisions);
                    held_quiet.push(quiet);
                }
            }
        }
        self.remember_sessions(found.gone, &found.seen_gone, &tmux, scope.is_some());
        if scope.is_none() {
            report.orphans =
                self.orphans(&found.known_sessions, !found.unread, &tmux, &policy, now);
        }
        // Acting may revise the decisions (a second look after stops and settle waits).
        if let Mode::Execute { wait_for_settle } = mode {
            let (decisions, outcomes) = self.act(
                &mut held_views,
                held_decisions,
                (&table, &pane_ancestors),
                &mut report,
                wait_for_settle,
            );
            let written = std::mem::take(&mut report.written_tasks);
            for (t, view) in held_views.iter().enumerate() {
                let task = fill_task(
                    &mut report.totals,
                    view,
                    &decisions[t],
                    Some(&outcomes[t]),
                    written.get(t).copied().unwrap_or(false),
                    held_quiet[t],
                );
                transitions
                    .entry(view.task.base.clone())
                    .or_default()
                    .extend(stream::transitions(view, &outcomes[t]));
                report.tasks.push(task);
            }
            for base in &self.config.workspace_bases {
                let path = global_registry(base);
                let changes = transitions.remove(base).unwrap_or_default();
                if let Err(e) = act::update_global(&path, &changes, &self.update_options(), now) {
                    report.errors.push(e);
                }
            }
        }
        report.totals.errors += report.errors.len();
        report
    }

    /// The configured base a task folder belongs to.
    fn base_of(&self, dir: &std::path::Path) -> Option<PathBuf> {
        self.config
            .workspace_bases
            .iter()
            .find(|b| dir.starts_with(b))
            .cloned()
    }

    /// Keeps `gone_since` for the sessions of agents still active in some registry.
    fn remember_sessions(
        &mut self,
        gone: HashMap<String, SystemTime>,
        seen: &HashSet<String>,
        tmux: &TmuxView,
        scoped: bool,
    ) {
        if tmux.is_err() {
            return;
        }
        // Sessions of tasks outside this pass keep what earlier passes saw.
        let mut keep: HashMap<String, SystemTime> = self
            .gone_since
            .iter()
            .filter(|(name, _)| scoped && !seen.contains(*name))
            .map(|(n, t)| (n.clone(), *t))
            .collect();
        keep.extend(gone);
        self.gone_since = keep;
    }

    fn orphans(
        &self,
        known: &HashSet<String>,
        all_read: bool,
        tmux: &TmuxView,
        policy: &Policy,
        now: SystemTime,
    ) -> Vec<OrphanReport> {
        let Ok(snapshot) = tmux else {
            return Vec::new();
        };
        // An unreadable registry may list any session: then nothing counts as an orphan.
        snapshot
            .sessions
            .values()
            .filter(|s| s.name.starts_with("agent_") && !known.contains(&s.name))
            .map(|s| {
                let activity = s
                    .panes
                    .iter()
                    .filter_map(|p| p.window_activity)
                    .chain(s.activity)
                    .max();
                OrphanReport {
                    session: s.name.clone(),
                    idle_seconds: activity.map(|t| crate::model::age(now, t).as_secs()),
                    stop: all_read && decide_orphan(activity, policy, now),
                    pane_pids: s.panes.iter().filter_map(|p| p.pid).collect(),
                    outcome: None,
                }
            })
            .collect()
    }
}

/// Task workers: mostly waiting on renames and fsyncs, not CPU, so more threads than
/// cores keep the disk busy (`cargo bench --bench cost`). `AGENT_REAPER_IO_THREADS`
/// overrides it.
pub(super) fn io_threads() -> usize {
    std::env::var("AGENT_REAPER_IO_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .clamp(2, 8)
                * 4
        })
        .max(1)
}

pub(crate) fn first_status(d: &Decision) -> Option<&'static str> {
    d.actions.iter().find_map(|a| match a {
        Action::SetStatus { status, .. } => Some(*status),
        _ => None,
    })
}

#[cfg(test)]
mod tests;
