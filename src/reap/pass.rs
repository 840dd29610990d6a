//! One reconcile pass over every workspace base: observe once, decide per agent, then act and record.

use crate::config::Config;
use crate::decide::{Action, Decision, Policy, SessionFact, decide, decide_orphan};
use crate::model::{Backend, StatusClass};
use crate::observe::{
    self, AgentView, DecidedAgent, PendingAgent, TaskView, TmuxView, World, agent_view,
    refresh_logs, scan_writers, task_view,
};
use crate::procs::{LiveProcesses, ProcTable, ProcessSource, Tmux};
use crate::reap::apply as act;
use crate::reap::outcome::Outcome;
use crate::registry::UpdateOptions;
use crate::registry::sqlite::tasks::{db_task_dirs, open_base_db};
use crate::workspace::{TaskDir, discover_tasks, global_registry};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::clock::{Clock, SystemClock};
use super::events::TaskEvent;
use super::{cache, mirror, read};

use super::report::fill_report;
pub use super::report::{AgentReport, OrphanReport, PassReport, TaskReport, Totals, action_text};
use phases::Phases;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Decide and report; change nothing.
    Plan,
    /// Act. With `wait_for_settle`, logs written moments ago are waited for (up to `settle`)
    /// within the pass; without it they are left for a later pass.
    Execute { wait_for_settle: bool },
}

impl Mode {
    /// `once` (the one caller that waits for settle) exits after its pass: it waits for its
    /// hooks too; the daemon does not.
    fn hook_mode(self) -> crate::hooks::HookMode {
        match self {
            Mode::Plan => crate::hooks::HookMode::List,
            Mode::Execute {
                wait_for_settle: true,
            } => crate::hooks::HookMode::RunAndWait,
            Mode::Execute { .. } => crate::hooks::HookMode::Run,
        }
    }
}

/// Long-lived pass state: configuration, seams, and what earlier rounds saw.
pub struct Reaper {
    pub config: Config,
    pub tmux: Box<dyn Tmux>,
    /// What runs and how it is stopped (the live system; fakes in unit tests).
    pub processes: Box<dyn ProcessSource>,
    pub clock: Box<dyn Clock>,
    /// When each `agent_*` session was first seen gone (for `zombie_grace`).
    pub gone_since: HashMap<String, SystemTime>,
    /// Called with (tasks done, total) while acting.
    pub progress: Option<Box<dyn FnMut(usize, usize) + Send>>,
    /// This pass's state DBs, per base (newer orchestrators).
    pub state_dbs: HashMap<PathBuf, crate::registry::sqlite::tasks::BaseDb>,
    /// Journal of multi-step file operations (appends to an existing archive, copies);
    /// without one, a log whose archive already exists is left for a pass that has one.
    pub journal: Option<std::sync::Mutex<crate::journal::Journal>>,
    /// Sessions agents ran in (kept in the state dir when there is one).
    pub pane_map: crate::procs::panemap::PaneMap,
    /// Task folders a pass found wholly cleaned (the steady state; kept in the state dir
    /// when loaded from there, see `cache::CleanTasks::load_or_warn`).
    pub clean_tasks: cache::CleanTasks,
    /// Per base, the ids its global registry still counts live (`mirror::live_mirrors`),
    /// as read at the start of this pass: their mirrors are restored even for quiet agents.
    live_mirrors: HashMap<PathBuf, HashSet<Box<str>>>,
    /// Tasks a pass found clean are looked at once more and cached (see `cache::confirm`);
    /// the daemon leaves that to the passes after READY (its first pass answers systemd).
    pub confirm_clean: bool,
    /// File events keep `clean_tasks` current (the daemon's healthy inotify watch): full
    /// passes skip clean tasks without looking at their registries.
    pub trust_clean_cache: bool,
    /// Transition hooks: their worker threads and pending runs (started on first use).
    pub hooks: crate::hooks::Hooks,
    /// Object-storage uploads (`archive_url`): client, backoff, ledger; built on first use.
    pub uploader: Option<crate::archive::upload::Uploader>,
}

impl Reaper {
    pub fn new(config: Config, tmux: Box<dyn Tmux>) -> Self {
        Reaper {
            config,
            tmux,
            processes: Box::new(LiveProcesses),
            clock: Box::new(SystemClock),
            gone_since: HashMap::new(),
            progress: None,
            journal: None,
            state_dbs: HashMap::new(),
            pane_map: crate::procs::panemap::PaneMap::in_memory(),
            clean_tasks: cache::CleanTasks::in_memory(),
            live_mirrors: HashMap::new(),
            confirm_clean: true,
            trust_clean_cache: false,
            hooks: crate::hooks::Hooks::default(),
            uploader: None,
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
            read: read_options(&self.config, false),
            lock_timeout: self.config.lock_timeout,
        }
    }

    pub fn run(&mut self, mode: Mode) -> PassReport {
        self.run_scoped(mode, None)
    }

    /// A pass over the task folders in `scope` only (all when `None`). Orphan sessions are
    /// judged only in full passes: a partial view cannot tell who owns a session.
    pub fn run_scoped(&mut self, mode: Mode, scope: Option<&HashSet<PathBuf>>) -> PassReport {
        let now = self.clock.now();
        let mut phases = Phases::start();
        let policy = self.policy();
        let mut errors = Vec::new();
        let mut tmux: TmuxView = observe::tmux_view(self.tmux.snapshot());
        let table = match self.processes.scan() {
            Ok(t) => t,
            Err(e) => {
                // Without /proc nobody can tell what runs: nothing destructive this round.
                tmux = Err(format!("/proc unreadable: {e}"));
                ProcTable::default()
            }
        };
        // Full passes skip the registries still known clean (see `cache`).
        let mut live_sessions: Vec<u64> = match &tmux {
            Ok(snapshot) => snapshot
                .sessions
                .keys()
                .map(|n| cache::session_hash(n))
                .collect(),
            Err(_) => Vec::new(),
        };
        live_sessions.sort_unstable();
        let use_cache = scope.is_none() && tmux.is_ok();
        let mut still_clean: Vec<TaskDir> = Vec::new();
        let mut keys: HashMap<PathBuf, read::FileKey> = HashMap::new();
        // Registries restored from their sidecar this pass (reported as done to the task).
        let mut restored: HashSet<PathBuf> = HashSet::new();
        // Observe every task of every base.
        let mut views: Vec<TaskView> = Vec::new();
        let mut pending: Vec<Vec<PendingAgent>> = Vec::new();
        let unseen = |id: &crate::model::AgentId| is_unseen(&tmux, &self.pane_map, id);
        // The DB's tasks are read with the DB; the JSON registries after, all together on
        // a few threads, and put back in the order of discovery.
        let mut read_order: Vec<Slot> = Vec::new();
        let mut json_tasks: Vec<TaskDir> = Vec::new();
        self.state_dbs.clear();
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
                for task in db_task_dirs(base, &db.rows) {
                    if !tasks.iter().any(|t| t.dir == task.dir) {
                        tasks.push(task);
                    }
                }
            }
            for task in tasks {
                if scope.is_some_and(|s| !s.contains(&task.dir)) {
                    continue;
                }
                // The DB owns a task when it has agent rows for it; JSON otherwise.
                let rows = db
                    .as_ref()
                    .and_then(|db| db.rows.get(&task.task_id))
                    .filter(|rows| !rows.is_empty());
                if rows.is_none()
                    && use_cache
                    && self
                        .clean_tasks
                        .check(&task, &live_sessions, self.trust_clean_cache)
                        == cache::Holds::Yes
                {
                    still_clean.push(task);
                    continue;
                }
                read_order.push(match rows {
                    Some(rows) => Slot::Db(task_view(
                        &task,
                        Backend::Sqlite,
                        Ok(observe::entries::from_rows(rows)),
                        &unseen,
                    )),
                    None => {
                        json_tasks.push(task);
                        Slot::Json
                    }
                });
            }
            if let Some(db) = db {
                self.state_dbs.insert(base.clone(), db);
            }
        }
        let mut json_read =
            read_tasks::read_json_tasks(&json_tasks, &self.config, mode, &unseen).into_iter();
        for slot in read_order {
            let (view, agents) = match slot {
                Slot::Db(read) => read,
                Slot::Json => json_read.next().expect("one read per JSON task").take((
                    &mut keys,
                    &mut restored,
                    &mut errors,
                )),
            };
            views.push(view);
            pending.push(agents);
        }
        // Skipped clean tasks sharing a session name (or its hash) with a task read, or
        // with each other, are read too: the ambiguity check then compares real ids only.
        let skipped_entries: Vec<&cache::CleanTask> = still_clean
            .iter()
            .filter_map(|t| self.clean_tasks.get(&t.dir))
            .collect();
        let (mut overlap, mut late) = cache::Overlap::new(&skipped_entries);
        // Agents the global registry still counts live: their clean tasks are read too, so
        // the pass restores those mirrors (an unlocked global rewrite can put one back).
        self.live_mirrors = self
            .config
            .workspace_bases
            .iter()
            .map(|b| {
                let live = mirror::live_mirrors(&global_registry(b), self.config.max_registry_size);
                (b.clone(), live)
            })
            .filter(|(_, live)| !live.is_empty())
            .collect();
        late.extend(
            overlap.more(
                self.live_mirrors
                    .values()
                    .flatten()
                    .filter_map(|id| crate::model::AgentId::parse(id).ok())
                    .map(|id| cache::session_hash(&id.session_name())),
            ),
        );
        let mut hashed = 0;
        loop {
            let read = views[hashed..].iter().zip(&pending[hashed..]);
            late.extend(overlap.more(read.flat_map(|(v, p)| cache::read_hashes(v, p))));
            hashed = views.len();
            if late.is_empty() {
                break;
            }
            let late_tasks: Vec<TaskDir> = std::mem::take(&mut late)
                .into_iter()
                .map(|i| still_clean[i].clone())
                .collect();
            for read in read_tasks::read_json_tasks(&late_tasks, &self.config, mode, &unseen) {
                let (view, agents) = read.take((&mut keys, &mut restored, &mut errors));
                views.push(view);
                pending.push(agents);
            }
        }
        let still_clean: Vec<TaskDir> = still_clean
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !overlap.is_taken(*i))
            .map(|(_, t)| t)
            .collect();
        tracing::debug!(
            "steady state: {} clean task(s) skipped, {} task(s) read",
            still_clean.len(),
            views.len()
        );
        phases.mark("read");
        let writers = scan_writers(self.processes.as_ref(), pending.iter().flatten());
        let procs = crate::procs::SetContext::new(&table, tmux.as_ref().ok(), &writers);
        let env = std::sync::OnceLock::new();
        let world = World {
            tmux: &tmux,
            table: &table,
            procs: &procs,
            source: self.processes.as_ref(),
            pane_map: &self.pane_map,
            env: &env,
            gone_since: &self.gone_since,
            settle: self.config.settle,
            now,
        };
        // Tasks on a few threads, each task's agents on one: its folder handle is held
        // while they are looked at (one open per task, not one per agent).
        let tasks: Vec<(TaskDir, Vec<PendingAgent>)> =
            views.iter().map(|v| v.task.clone()).zip(pending).collect();
        let looked =
            super::parallel::map_ordered(tasks, super::parallel::io_threads(), |(task, agents)| {
                let _held = task.handle();
                super::parallel::map_letting_go(agents, |p| agent_view(p, &world, &writers))
            });
        for (view, agents) in views.iter_mut().zip(looked) {
            view.agents = agents;
        }
        self.remember_sessions(&views, &tmux, now, scope.is_some());
        // Tasks read again leave the cache (they come back below if still clean); in full
        // passes so do tasks that are gone.
        let ambiguous = cache::ambiguous(&views);
        let skipped_agents: usize = still_clean
            .iter()
            .filter_map(|t| self.clean_tasks.get(&t.dir))
            .map(|c| c.agents)
            .sum();
        let skipped_tasks = still_clean.len();
        if scope.is_none() {
            let keep: HashSet<&Path> = still_clean.iter().map(|t| t.dir.as_path()).collect();
            self.clean_tasks.retain(|dir| keep.contains(dir));
            let unread = still_clean.iter().map(|t| t.dir.clone()).collect();
            self.clean_tasks.set_unread(unread);
        } else {
            for view in &views {
                self.clean_tasks.remove(&view.task.dir);
            }
        }
        observe::remember_panes(&views, &ambiguous, &mut self.pane_map);
        phases.mark("look");
        let decisions: Vec<Vec<Decision>> = views
            .iter_mut()
            .map(|v| {
                let backend = v.backend;
                v.agents
                    .iter_mut()
                    .map(|a| {
                        let decision = match ambiguous.get(&a.id) {
                            Some(why) => Decision::ambiguous(why),
                            None => {
                                crate::decide::for_backend(backend, decide(&a.facts, &policy, now))
                            }
                        };
                        // Only stopped and waiting agents are looked at again.
                        if decision.waiting.is_none() && !decision.stops() {
                            a.let_go_of_judged_logs();
                        }
                        decision
                    })
                    .collect()
            })
            .collect();
        errors.extend(
            ambiguous.iter().map(|(id, why)| {
                format!("agent id {id} is ambiguous ({why}): nothing done for it")
            }),
        );
        let orphans = match scope {
            None => self.orphans(&views, &tmux, &policy, now),
            Some(_) => Vec::new(),
        };
        let mut report = PassReport {
            mode: if mode == Mode::Plan { "plan" } else { "once" },
            bases: self.config.workspace_bases.clone(),
            tmux_error: tmux.as_ref().err().cloned(),
            tasks: Vec::new(),
            orphans,
            errors,
            totals: Totals::default(),
            written_tasks: Vec::new(),
            hooks: Vec::new(),
            archives: None,
            upload: None,
        };
        // Acting may revise the decisions (a second look after stops and settle waits).
        phases.mark("decide");
        let (views, decisions, outcomes) = match mode {
            Mode::Plan => (
                views.into_iter().map(TaskView::decided).collect(),
                decisions,
                None,
            ),
            Mode::Execute { wait_for_settle } => {
                let (views, decisions, outcomes) = self.act(
                    views,
                    decisions,
                    (&table, &procs),
                    &mut report,
                    wait_for_settle,
                );
                act::forget_cleaned(
                    &views,
                    &decisions,
                    &outcomes,
                    // Ids of a base or registry that could not be read may still run.
                    scope.is_none() && report.errors.is_empty(),
                    &mut self.pane_map,
                );
                if let Err(e) = self.pane_map.save() {
                    report.errors.push(e.to_string());
                }
                (views, decisions, Some(outcomes))
            }
        };
        phases.mark("act");
        if tmux.is_ok() && self.confirm_clean {
            // Looked at once more, after this pass's own moves and writes (see `cache`),
            // and before the report is built: a fresh look at a large registry does not
            // stack on top of a report line for each of its agents.
            let acted = outcomes.is_some();
            let candidates = cache::candidates(&views, &decisions, &ambiguous, acted);
            let unseen = |id: &crate::model::AgentId| is_unseen(&tmux, &self.pane_map, id);
            self.clean_tasks
                .confirm(&candidates, &keys, self.config.max_registry_size, &unseen);
        }
        // Saved before the report is built: the cache's file image and the report of a
        // large pass are not held at once.
        if let Mode::Execute { .. } = mode
            && let Err(e) = self.clean_tasks.save()
        {
            tracing::warn!("{e}");
        }
        phases.mark("confirm");
        fill_report(&mut report, views, decisions, outcomes, &ambiguous);
        for task in &mut report.tasks {
            if restored.contains(&task.dir) {
                task.done.push(TaskEvent::RegistryRestored);
            }
        }
        // Still-clean tasks are counted, not listed: nothing was or is to be done there.
        report.totals.tasks += skipped_tasks;
        report.totals.agents_seen += skipped_agents;
        // Hooks see only what this pass committed (in `plan`: what it would commit).
        phases.mark("report");
        report.hooks = self.hooks.after_pass(
            &self.config,
            mode.hook_mode(),
            report.transitions(),
            &mut report.errors,
        );
        // Settled archives to object storage: full passes only (a scoped pass is a quick
        // answer to one registry's change); the daemon within a time budget.
        if let (Mode::Execute { wait_for_settle }, None, Some(journal)) =
            (mode, scope, self.journal.as_ref())
        {
            let budget = (!wait_for_settle).then_some(crate::archive::upload::DAEMON_BUDGET);
            report.upload = crate::archive::upload::run_stage(
                &mut self.uploader,
                &self.config,
                journal,
                budget,
            );
        }
        phases.mark("after");
        tracing::debug!("pass phases: {phases}");
        report
    }

    /// Keeps `gone_since` for the sessions of agents still active in some registry.
    fn remember_sessions(
        &mut self,
        views: &[TaskView],
        tmux: &TmuxView,
        now: SystemTime,
        scoped: bool,
    ) {
        let Ok(snapshot) = tmux else {
            return;
        };
        // Sessions of tasks outside this pass keep what earlier passes saw.
        let seen: HashSet<String> = views
            .iter()
            .flat_map(|v| &v.agents)
            .map(AgentView::session_name)
            .chain(
                views
                    .iter()
                    .flat_map(|v| &v.quiet)
                    .map(|q| q.session_name()),
            )
            .collect();
        let mut keep: HashMap<String, SystemTime> = self
            .gone_since
            .iter()
            .filter(|(name, _)| scoped && !seen.contains(*name))
            .map(|(n, t)| (n.clone(), *t))
            .collect();
        for agent in views.iter().flat_map(|v| &v.agents) {
            let name = agent.session_name();
            if agent.facts.class == StatusClass::Active && !snapshot.sessions.contains_key(&name) {
                let since = self.gone_since.get(&name).copied().unwrap_or(now);
                keep.insert(name, since);
            }
        }
        self.gone_since = keep;
    }

    fn orphans(
        &self,
        views: &[TaskView],
        tmux: &TmuxView,
        policy: &Policy,
        now: SystemTime,
    ) -> Vec<OrphanReport> {
        let Ok(snapshot) = tmux else {
            return Vec::new();
        };
        let known: HashSet<String> = views
            .iter()
            .flat_map(|v| &v.agents)
            .map(AgentView::session_name)
            .collect();
        // An unreadable registry may list any session: then nothing counts as an orphan.
        let all_read = views.iter().all(|v| v.error.is_none());
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

/// Nothing of the agent runs or is remembered: with tmux's answer only.
fn is_unseen(
    tmux: &TmuxView,
    pane_map: &crate::procs::panemap::PaneMap,
    id: &crate::model::AgentId,
) -> bool {
    match tmux {
        Ok(snapshot) => {
            !snapshot.sessions.contains_key(&id.session_name()) && pane_map.get(id).is_empty()
        }
        Err(_) => false,
    }
}

/// Read options from the config. `repair`: the reader acts (not `plan`), so a provably
/// torn registry is cut back under the lock while being read.
fn read_options(config: &Config, repair: bool) -> crate::registry::ReadOptions {
    crate::registry::ReadOptions {
        max_bytes: config.max_registry_size,
        repair_torn: repair.then_some(config.lock_timeout),
        ..Default::default()
    }
}

/// A task in the order the pass found it: read with its base's state DB, or a JSON
/// registry read with the others afterwards.
enum Slot {
    Db((TaskView, Vec<PendingAgent>)),
    Json,
}

mod execute;
mod phases;
mod read_tasks;
#[cfg(test)]
mod tests;
