//! The daemon's loop: one tokio `select!` loop that owns the state — file events, timers, signals, sd_notify, health.

use super::handler::{self, OnSignal, Wake};
use super::health;
use super::progress::{Heartbeat, describe_stuck, may_feed_watchdog};
use super::report_log;
use super::schedule::Schedule;
use super::steady;
use crate::config::Config;
use crate::config::layer::{Overrides, resolve_config, tmux_client};
use crate::decide::AgentClass;
use crate::reap::pass::{Mode, PassReport, Reaper};
use crate::watch::{self, WatchEvent, Watcher};
use anyhow::{Context, Result};
use futures_util::StreamExt;
use sd_notify::NotifyState;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::state::{BaseLocks, InstanceLock, open_journal, state_dir};

/// A task waiting on a timer is looked at no more often than this.
const MIN_RECHECK: Duration = Duration::from_millis(50);

/// Longer than the default 60 s `reconcile_interval`, so an idle daemon keeps its one pass
/// thread (see the runtime's builder).
const BLOCKING_THREAD_KEEP_ALIVE: Duration = Duration::from_secs(3600);

fn notify(states: &[NotifyState]) {
    // Without NOTIFY_SOCKET this is a no-op; a failure to reach systemd is not fatal.
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("sd_notify: {e}");
    }
}

/// A pass running on a blocking thread; the reaper comes back with its report.
type InFlight = JoinHandle<PassDone>;

/// What a pass hands back to the loop.
struct PassDone {
    reaper: Reaper,
    /// `None`: a periodic reconcile in the steady state found tmux's sessions unchanged
    /// and ran no pass.
    report: Option<PassReport>,
    /// A full pass (or the look that stood in for one).
    full: bool,
    /// Over every configured base, each watched.
    covers_all: bool,
    /// Full passes: tmux's sessions (`steady::sessions_key`) as seen right before the pass.
    sessions: Option<u64>,
    took: Duration,
}

struct Daemon {
    /// The command line's settings, layered again over the file on reload.
    overrides: Overrides,
    config: Config,
    dry_run: bool,
    reaper: Option<Reaper>,
    in_flight: Option<InFlight>,
    schedule: Schedule,
    watcher: Option<Watcher>,
    /// A watcher being set up on its own thread (20,000 task folders are 80,000 watches,
    /// about half a second; the first pass runs meanwhile).
    watch_setup: Option<tokio::sync::oneshot::Receiver<Result<Watcher, watch::WatchError>>>,
    events_tx: mpsc::UnboundedSender<WatchEvent>,
    ready: bool,
    /// The status line of the first pass, once it is done (READY waits for the watch too).
    first_status: Option<String>,
    /// Task folders with active agents, from the last passes (tmux is polled for them).
    active_tasks: HashSet<PathBuf>,
    /// The next full pass looks at every clean task's registry: events may have been lost
    /// (start, a new watcher, an overflow, polling, a reload). Otherwise full passes trust
    /// the inotify watch to have sent every change of a clean task (see `Reaper::trust_clean_cache`).
    verify_next_full: bool,
    cleaned_total: usize,
    pending_config: Option<Config>,
    /// Beaten by the pass in flight as it moves on; the watchdog is fed only while it does.
    heartbeat: Heartbeat,
    /// The watchdog was withheld last tick (said once, not every tick).
    watchdog_withheld: bool,
    /// Warnings about hostile or odd entries already logged: said once, not every pass.
    warned: HashSet<String>,
    /// The lock of every workspace base served (none in a dry run).
    base_locks: BaseLocks,
    /// tmux's sessions when the last full pass left nothing pending (`steady::is_steady`):
    /// a periodic reconcile that finds them unchanged runs no pass.
    steady_sessions: Option<u64>,
    /// Periodic reconciles skipped in a row (bounded by `steady::MAX_SKIPS`).
    steady_skips: u32,
    /// The next full pass was asked for by a change (the state DB), not only by the clock:
    /// the steady look may not stand in for it (see `steady::may_skip`).
    full_for_change: bool,
}

pub fn run(overrides: Overrides, config: Config, dry_run: bool) -> Result<()> {
    let state = state_dir(&config)?;
    let _lock = InstanceLock::acquire(&state)?;
    // One reaper per workspace base: wait (for ever) for another reaper working on one of
    // ours, and hold the bases while running. A dry run changes nothing and takes none.
    let base_locks = if dry_run {
        BaseLocks::default()
    } else {
        BaseLocks::acquire(&config.workspace_bases, None, |base, holder| {
            let msg = format!(
                "waiting for {}: another agent-reaper (pid {holder}) is reaping it",
                base.display()
            );
            tracing::warn!("{msg}");
            notify(&[NotifyState::Status(&msg)]);
        })?
    };
    let journal = open_journal(&state, config.trusted_roots())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // The pass thread stays parked between periodic looks instead of exiting 10 s after
        // each (tokio's default): a thread's exit hands its allocator heap back and the next
        // look starts a new one, most of an idle daemon's CPU (seen with `perf record -p`).
        .thread_keep_alive(BLOCKING_THREAD_KEEP_ALIVE)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async move {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let heartbeat = Heartbeat::new(Instant::now());
        let mut reaper = Reaper::new(config.clone(), Box::new(tmux_client(&config)));
        reaper.journal = Some(journal);
        reaper.progress = Some(heartbeat.reaper_callback());
        reaper.pane_map = crate::state::load_pane_map(&state);
        reaper.clean_tasks = crate::reap::cache::CleanTasks::load_or_warn(&state);
        let mut daemon = Daemon {
            reaper: Some(reaper),
            overrides,
            config,
            dry_run,
            in_flight: None,
            schedule: Schedule::default(),
            watcher: None,
            watch_setup: None,
            events_tx,
            ready: false,
            first_status: None,
            active_tasks: HashSet::new(),
            verify_next_full: true,
            cleaned_total: 0,
            pending_config: None,
            heartbeat,
            watchdog_withheld: false,
            warned: HashSet::new(),
            base_locks,
            steady_sessions: None,
            steady_skips: 0,
            full_for_change: false,
        };
        daemon.main_loop(events_rx).await
    });
    // A pass still in flight after shutdown_timeout runs on a blocking thread the runtime
    // would wait for on drop, forever if it is stuck: leave it behind, the process ends.
    runtime.shutdown_background();
    result
}

impl Daemon {
    /// Starts setting up the watch on the bases on a thread of its own: the first pass
    /// does not wait for it. Events flow as soon as each folder is watched; once the whole
    /// watch is in place, a full pass that looks at every registry catches what changed
    /// before (see `watch_ready`).
    fn start_watching(&mut self) {
        self.watcher = None;
        self.verify_next_full = true;
        let (done, setup) = tokio::sync::oneshot::channel();
        let (bases, tx) = (self.config.workspace_bases.clone(), self.events_tx.clone());
        let spawned = std::thread::Builder::new()
            .name("watch-setup".into())
            .spawn(move || {
                let started = Instant::now();
                let watcher = watch::watch(&bases, tx);
                tracing::debug!("watch set up in {} ms", started.elapsed().as_millis());
                // Nobody waiting any more (a newer setup, shutdown): the watcher is dropped.
                let _ = done.send(watcher);
            });
        match spawned {
            Ok(_) => self.watch_setup = Some(setup),
            Err(e) => tracing::warn!("watching failed ({e}); relying on periodic reconcile"),
        }
    }

    /// The watch set up by `start_watching` is in place (or failed).
    fn watch_ready(&mut self, result: Result<Watcher, watch::WatchError>) {
        self.watch_setup = None;
        match result {
            Ok(w) => {
                self.watcher = Some(w);
                // Changes made while the watch was being set up sent no event.
                self.verify_next_full = true;
                self.schedule.full_now();
            }
            Err(e) => tracing::warn!("watching failed ({e}); relying on periodic reconcile"),
        }
        self.maybe_ready();
    }

    async fn main_loop(&mut self, mut events: mpsc::UnboundedReceiver<WatchEvent>) -> Result<()> {
        let mut signals = signal_hook_tokio::Signals::new([SIGHUP, SIGTERM, SIGINT])
            .context("installing signal handlers")?;
        self.start_watching();
        self.schedule.full_now();
        // Ticks at half of WATCHDOG_USEC; a pass with no progress for a whole WATCHDOG_USEC
        // gets no feed, so systemd restarts a daemon stuck in a pass.
        let watchdog = sd_notify::watchdog_enabled();
        let mut watchdog_tick =
            tokio::time::interval(watchdog.map_or(Duration::from_secs(3600), |d| d / 2));
        let mut reconcile = tokio::time::interval(self.config.reconcile_interval);
        let mut poll = tokio::time::interval(self.config.session_poll_interval);
        reconcile.tick().await;
        poll.tick().await;
        let mut stopping: Option<Instant> = None;
        tracing::info!(
            bases = ?self.config.workspace_bases,
            "agent-reaper daemon started{}",
            if self.dry_run { " (dry run: nothing is changed)" } else { "" }
        );
        loop {
            let due = self.schedule.next_due();
            let idle = self.in_flight.is_none() && stopping.is_none();
            tokio::select! {
                Some(signal) = signals.next() => match handler::on_signal(signal, stopping.is_some(), self.in_flight.is_some()) {
                    OnSignal::Reload => self.reload(),
                    OnSignal::ExitNow => {
                        tracing::warn!("second signal: exiting at once; the next start finishes what was in flight");
                        std::process::exit(1);
                    }
                    OnSignal::Stop => {
                        tracing::info!("signal {signal}: stopping");
                        notify(&[NotifyState::Stopping]);
                        break;
                    }
                    OnSignal::StopAfterPass => {
                        tracing::info!("signal {signal}: stopping");
                        notify(&[NotifyState::Stopping]);
                        stopping = Some(Instant::now() + self.config.shutdown_timeout);
                    }
                },
                Some(event) = events.recv() => self.on_event(event),
                result = async { self.in_flight.as_mut().expect("guarded").await }, if self.in_flight.is_some() => {
                    self.in_flight = None;
                    let done = result.context("a pass panicked")?;
                    self.reaper = Some(done.reaper);
                    if let Some(config) = self.pending_config.take()
                        && let Some(reaper) = self.reaper.as_mut()
                    {
                        reaper.config = config;
                    }
                    match done.report {
                        Some(report) => {
                            let sessions = done.sessions.filter(|_| done.covers_all);
                            self.after_pass(&report, done.full.then_some(sessions), done.took)
                        }
                        None => self.after_look(),
                    }
                    if stopping.is_some() {
                        break;
                    }
                }
                _ = tokio::time::sleep_until(due.into()), if idle && self.schedule.has_work() => {
                    self.start_pass();
                }
                result = async { self.watch_setup.as_mut().expect("guarded").await }, if self.watch_setup.is_some() => {
                    match result {
                        Ok(result) => self.watch_ready(result),
                        Err(_) => {
                            self.watch_setup = None;
                            self.maybe_ready();
                        }
                    }
                }
                _ = reconcile.tick() => {
                    match self.watcher.as_mut() {
                        Some(w) => {
                            let lost = w.unwatched().len();
                            for e in w.retry_unwatched() {
                                tracing::warn!("still not watching: {e}");
                            }
                            // A base watched again sent no event for what changed meanwhile.
                            if w.unwatched().len() < lost {
                                self.verify_next_full = true;
                            }
                        }
                        None if self.watch_setup.is_none() => self.start_watching(),
                        None => {}
                    }
                    self.schedule.full_now();
                }
                _ = poll.tick(), if !self.active_tasks.is_empty() => {
                    // A dying session writes no file: ask tmux about tasks with active agents.
                    for task in &self.active_tasks {
                        self.schedule.task_at(task.clone(), Instant::now());
                    }
                }
                _ = watchdog_tick.tick(), if watchdog.is_some() => {
                    self.watchdog_tick(watchdog.unwrap_or_default());
                }
                _ = tokio::time::sleep_until(stopping.unwrap_or_else(Instant::now).into()), if stopping.is_some() => {
                    tracing::warn!(
                        "shutdown_timeout ({:?}) passed and {}; exiting without it (the journal finishes its file operations at next start)",
                        self.config.shutdown_timeout,
                        describe_stuck(&self.heartbeat.last(), Instant::now())
                    );
                    break;
                }
            }
        }
        tracing::info!("agent-reaper daemon stopped");
        Ok(())
    }

    fn on_event(&mut self, event: WatchEvent) {
        if let WatchEvent::Rescan(reason) = &event {
            tracing::info!("full reconcile: {reason}");
            self.verify_next_full = true;
        }
        match handler::wake_for(&event, self.config.settle, Instant::now()) {
            Wake::Nothing => {}
            Wake::Full { at } => {
                self.schedule.full_at(at);
                self.full_for_change = true;
            }
            Wake::Task { dir, at } => self.schedule.task_at(dir, at),
        }
    }

    fn watchdog_tick(&mut self, limit: Duration) {
        let now = Instant::now();
        let last = self.heartbeat.last();
        if may_feed_watchdog(self.in_flight.is_some(), &last, now, limit) {
            self.watchdog_withheld = false;
            notify(&[NotifyState::Watchdog]);
        } else if !self.watchdog_withheld {
            self.watchdog_withheld = true;
            tracing::error!(
                "watchdog not fed: {}; systemd restarts the daemon if it stays stuck",
                describe_stuck(&last, now)
            );
        }
    }

    fn start_pass(&mut self) {
        let Some(mut reaper) = self.reaper.take() else {
            return;
        };
        let scope = self.schedule.take_due(Instant::now());
        // Until READY, passes skip the clean tasks' second look: start-up answers first.
        reaper.confirm_clean = self.ready;
        // A base created since the start is taken now; one another reaper holds waits.
        if !self.dry_run {
            reaper.config.workspace_bases = self.base_locks.servable(&self.config.workspace_bases);
        }
        // A base left out (held by another reaper) or not watched can change with no event
        // and no session: such a pass is never the steady state's reference.
        let covers_all = reaper.config.workspace_bases.len() == self.config.workspace_bases.len()
            && self
                .watcher
                .as_ref()
                .is_some_and(|w| w.unwatched().is_empty());
        // In the steady state a trusted periodic full pass only runs when tmux's sessions
        // changed; one a change asked for always runs.
        let for_change = scope.is_none() && std::mem::take(&mut self.full_for_change);
        let mut known_sessions = None;
        if scope.is_none() && covers_all {
            let watched = self.watcher.as_ref().is_some_and(|w| !w.is_polling());
            reaper.trust_clean_cache = watched && !std::mem::take(&mut self.verify_next_full);
            let config = &reaper.config;
            // Retention and uploads work by the clock: their full passes always run.
            let clockless = !config.retention.is_enabled() && config.archive_url.is_none();
            if steady::may_skip(
                for_change,
                reaper.trust_clean_cache,
                clockless,
                self.steady_skips,
            ) {
                known_sessions = self.steady_sessions;
            }
        }
        let mode = if self.dry_run {
            Mode::Plan
        } else {
            Mode::Execute {
                wait_for_settle: false,
            }
        };
        self.heartbeat.pass_started(Instant::now());
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            // Taken before the pass: a session that comes after is seen by the next look.
            let sessions = match scope {
                None => steady::sessions_key(&reaper.tmux.snapshot()),
                Some(_) => None,
            };
            if known_sessions.is_some() && known_sessions == sessions {
                return PassDone {
                    reaper,
                    report: None,
                    full: true,
                    covers_all,
                    sessions,
                    took: started.elapsed(),
                };
            }
            let mut report = reaper.run_scoped(mode, scope.as_ref());
            // Retention needs every task of a base in view: full reconciles only.
            if scope.is_none() && reaper.config.retention.is_enabled() {
                let now = std::time::SystemTime::now();
                // Clean tasks skipped unread count as the pass found them: cleaned.
                let mut seen = report.seen_tasks();
                seen.extend(reaper.clean_tasks.unread_seen());
                let mut archives = crate::archive::retention::survey(&reaper.config, &seen, now);
                if mode != Mode::Plan {
                    crate::archive::retention::remove(&mut archives);
                }
                report.archives = Some(archives);
            }
            PassDone {
                reaper,
                report: Some(report),
                full: scope.is_none(),
                covers_all,
                sessions,
                took: started.elapsed(),
            }
        }));
    }

    /// A periodic reconcile that found nothing changed: the daemon is alive, nothing else.
    fn after_look(&mut self) {
        self.steady_skips += 1;
        tracing::debug!("steady: tmux sessions unchanged, no pass");
        health::write_all(&self.config);
    }

    /// `full`: for a full pass, tmux's sessions right before it (see `PassDone`).
    fn after_pass(&mut self, report: &PassReport, full: Option<Option<u64>>, took: Duration) {
        let steady = steady::is_steady(report, self.config.kill_orphan_sessions);
        match full {
            Some(sessions) => {
                self.steady_skips = 0;
                // With an agent active, its session may start or end with no file event:
                // only a pass with none active is the steady state's reference.
                self.steady_sessions =
                    sessions.filter(|_| steady && !steady::has_active_agent(report));
            }
            // A task's own pass that left work for a later look, or that saw an active agent
            // (its session may be newer than the last full pass's sessions: once it ends,
            // tmux's list would match that reference again): the next reconcile runs.
            None if !steady || steady::has_active_agent(report) => self.steady_sessions = None,
            None => {}
        }
        report_log::log_report(report, self.dry_run);
        report_log::log_new_warnings(&mut self.warned, report);
        tracing::debug!(
            "pass over {} task(s) took {} ms",
            report.tasks.len(),
            took.as_millis()
        );
        let now = Instant::now();
        let mut active = 0;
        let mut settling = 0;
        for task in &report.tasks {
            let has_active = task.agents.iter().any(|a| a.still_active());
            if has_active {
                self.active_tasks.insert(task.dir.clone());
            } else {
                self.active_tasks.remove(&task.dir);
            }
            active += task
                .agents
                .iter()
                .filter(|a| a.class == AgentClass::Active)
                .count();
            settling += task.agents.iter().filter(|a| a.waiting.is_some()).count();
            // Settling logs and grace periods are looked at again when they could be over;
            // events may bring the look sooner.
            if let Some(after) = task.agents.iter().filter_map(|a| a.recheck).min() {
                self.schedule
                    .task_at(task.dir.clone(), now + after.max(MIN_RECHECK));
            }
        }
        self.cleaned_total += report.totals.cleaned;
        health::write_all(&self.config);
        let status = format!(
            "{} task(s), {active} active, {settling} settling; {} cleaned since start; last pass {} ms",
            report.totals.tasks,
            self.cleaned_total,
            took.as_millis()
        );
        self.first_status.get_or_insert_with(|| status.clone());
        if !self.maybe_ready() {
            notify(&[NotifyState::Status(&status)]);
        }
    }

    /// READY=1 once the first reconcile is done and the watch is in place (both run at
    /// once at start): from READY on, a change in a workspace is an event. True if sent now.
    fn maybe_ready(&mut self) -> bool {
        if self.ready || self.watch_setup.is_some() {
            return false;
        }
        let Some(status) = self.first_status.clone() else {
            return false;
        };
        self.ready = true;
        notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
        tracing::info!("ready: {status}");
        true
    }

    fn reload(&mut self) {
        let mut states = vec![NotifyState::Reloading];
        if let Ok(now) = NotifyState::monotonic_usec_now() {
            states.push(now);
        }
        notify(&states);
        match resolve_config(&self.overrides) {
            Ok(config) => {
                let rewatch = config.workspace_bases != self.config.workspace_bases;
                // Removed bases are let go; new ones are taken at the next pass (or wait
                // there while another reaper holds them).
                self.base_locks.keep_only(&config.workspace_bases);
                tracing::info!("configuration reloaded");
                self.verify_next_full = true;
                self.config = config.clone();
                match self.reaper.as_mut() {
                    Some(reaper) => reaper.config = config,
                    None => self.pending_config = Some(config),
                }
                if rewatch {
                    self.start_watching();
                }
                self.schedule.full_now();
            }
            Err(e) => tracing::error!("reload refused, keeping the running configuration: {e:#}"),
        }
        notify(&[NotifyState::Ready]);
    }
}
