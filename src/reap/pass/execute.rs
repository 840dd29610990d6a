//! `Mode::Execute`'s half of a pass: stop, look again (and in `once` wait for settling
//! logs), then the DB transitions, the files and the registries, in that order.

use super::*;

/// What acting returns: the tasks with their agents as decided, the decisions as revised
/// while acting and, per task and agent, what happened.
pub(super) type Acted = (
    Vec<TaskView<DecidedAgent>>,
    Vec<Vec<Decision>>,
    Vec<Vec<Outcome>>,
);

impl Reaper {
    /// Carries out the decisions; returns the tasks with their agents as decided, the
    /// decisions as revised while acting and, per task and agent, what happened.
    pub(super) fn act(
        &mut self,
        mut views: Vec<TaskView>,
        mut decisions: Vec<Vec<Decision>>,
        (table, procs): (&ProcTable, &crate::procs::SetContext<'_>),
        report: &mut PassReport,
        wait_for_settle: bool,
    ) -> Acted {
        let now = self.clock.now();
        let policy = self.policy();
        // 1. Stop every agent that needs it, all at once.
        let stops = act::stop_agents(
            &views,
            &decisions,
            procs,
            (self.tmux.as_ref(), self.processes.as_ref()),
            &self.config,
        );
        act::stop_orphans(
            &mut report.orphans,
            table,
            (self.tmux.as_ref(), self.processes.as_ref()),
            &self.config,
        );
        // 2. Stopped agents get a second look (their session and processes are gone now);
        // in `once`, so do logs written moments ago, after waiting for them to settle.
        let stopped: Vec<(usize, usize)> = stops.iter().map(|(at, _)| *at).collect();
        for ((t, a), out) in &stops {
            let agent = &mut views[*t].agents[*a];
            agent.facts.session = SessionFact::Gone {
                since: now - policy.zombie_grace,
            };
            agent.facts.live_processes = out.survivors;
            agent.facts.live_writers = 0;
            if let Some(status) = decisions[*t][*a].new_status() {
                agent.facts.status = status.into();
                agent.facts.class = StatusClass::Terminal;
            }
        }
        self.look_again(&mut views, &mut decisions, &stopped);
        if wait_for_settle {
            let wait =
                youngest_settle_wait(&views, &decisions, self.config.settle, self.clock.now());
            if !wait.is_zero() {
                self.clock.sleep(wait);
                let waiting: Vec<(usize, usize)> = views
                    .iter()
                    .enumerate()
                    .flat_map(|(t, view)| {
                        let decisions = &decisions[t];
                        (0..view.agents.len())
                            .filter(move |&a| {
                                decisions[a].waiting.is_some()
                                    && !view.agents[a].facts.logs.is_empty()
                            })
                            .map(move |a| (t, a))
                    })
                    .collect();
                self.look_again(&mut views, &mut decisions, &waiting);
            }
        }
        // The decisions are final: what judged the logs and found the processes goes
        // before the file work and the registry edits, whose peak it would add to.
        let decided: Vec<TaskView<DecidedAgent>> =
            views.into_iter().map(TaskView::decided).collect();
        let views = &decided[..];
        // The others' outcomes are made now, once the views are gone (40,000 agents: 6 MB
        // less at the pass's peak, which was the views beside them).
        let mut outcomes: Vec<Vec<Outcome>> = views
            .iter()
            .map(|v| vec![Outcome::default(); v.agents.len()])
            .collect();
        for ((t, a), out) in stops {
            outcomes[t][a] = out;
        }
        // 3. DB-backed tasks' transitions, one transaction per base; a DB held by another
        // writer skips its tasks this round.
        let skip = act::apply_db_transitions(
            &self.state_dbs,
            views,
            &decisions,
            &mut outcomes,
            &self.update_options(),
            now,
            &mut report.errors,
        );
        // 4. Files, then the registries: tasks are independent, so a few at a time.
        let written = self.apply_tasks(views, &decisions, &mut outcomes, now, &skip);
        for result in written {
            match result {
                Ok(written) => report.written_tasks.push(written),
                Err(e) => {
                    report.errors.extend(e);
                    report.written_tasks.push(false);
                }
            }
        }
        for base in &self.config.workspace_bases {
            let path = global_registry(base);
            if let Err(e) = act::update_global(
                &path,
                (views, &outcomes),
                self.live_mirrors.get(base),
                base,
                &self.update_options(),
                now,
            ) {
                report.errors.push(e);
            }
        }
        (decided, decisions, outcomes)
    }

    /// Re-stats the logs of `which` agents (one writers scan for all) and decides again:
    /// the first decision's status change stays, the file work is the new one's.
    fn look_again(
        &self,
        views: &mut [TaskView],
        decisions: &mut [Vec<Decision>],
        which: &[(usize, usize)],
    ) {
        if which.is_empty() {
            return;
        }
        let now = self.clock.now();
        let policy = self.policy();
        let ids = which
            .iter()
            .flat_map(|&(t, a)| views[t].agents[a].log_ids.iter().copied())
            .collect();
        let writers = self.processes.writers_of(&ids);
        for &(t, a) in which {
            let agent = &mut views[t].agents[a];
            refresh_logs(agent, &writers, self.config.settle, now);
            let second = decide(&agent.facts, &policy, now);
            let first = &mut decisions[t][a];
            first
                .actions
                .retain(|a| matches!(a, Action::SetStatus { .. }));
            first.actions.extend(
                second
                    .actions
                    .into_iter()
                    .filter(|a| !matches!(a, Action::Stop { .. } | Action::SetStatus { .. })),
            );
            first.waiting = second.waiting;
            first.recheck = second.recheck;
        }
    }

    /// Runs `act::apply_task` for every readable task on a few threads; per task, whether
    /// its registry was written or the error.
    fn apply_tasks(
        &mut self,
        views: &[TaskView<DecidedAgent>],
        decisions: &[Vec<Decision>],
        outcomes: &mut [Vec<Outcome>],
        now: SystemTime,
        skip: &HashSet<usize>,
    ) -> Vec<Result<bool, Option<String>>> {
        let threads = crate::reap::parallel::io_threads();
        let total = views.len();
        let config = &self.config;
        let opts = self.update_options();
        let journal = self.journal.as_ref();
        let progress = std::sync::Mutex::new((0usize, self.progress.take()));
        let mut jobs: Vec<(usize, &mut Vec<Outcome>)> = outcomes.iter_mut().enumerate().collect();
        let chunk = jobs.len().div_ceil(threads).max(1);
        let pool_threads = act::prompt_pool_threads(decisions.iter().flatten());
        // The prompt pool's threads outlive the task threads (an inner scope), which share it.
        let mut results: Vec<(usize, Result<bool, Option<String>>)> = std::thread::scope(|outer| {
            let pool = crate::reap::parallel::Pool::new(outer, pool_threads);
            let pool = &pool;
            std::thread::scope(|scope| {
                let handles: Vec<_> = jobs
                    .chunks_mut(chunk)
                    .map(|part| {
                        let (progress, opts) = (&progress, &opts);
                        scope.spawn(move || {
                            let mut done = Vec::new();
                            for (t, outs) in part.iter_mut() {
                                let view = &views[*t];
                                let result = if view.error.is_some() {
                                    Err(None)
                                } else if skip.contains(t) {
                                    Ok(false)
                                } else {
                                    act::apply_task(
                                        view,
                                        &decisions[*t],
                                        outs,
                                        config,
                                        opts,
                                        journal,
                                        now,
                                        pool,
                                    )
                                    .map_err(Some)
                                };
                                done.push((*t, result));
                                let mut p = progress.lock().expect("progress lock");
                                p.0 += 1;
                                let n = p.0;
                                if let Some(f) = p.1.as_mut() {
                                    f(n, total);
                                }
                            }
                            done
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().expect("task thread panicked"))
                    .collect()
            })
        });
        self.progress = progress.into_inner().expect("progress lock").1;
        results.sort_by_key(|(t, _)| *t);
        results.into_iter().map(|(_, r)| r).collect()
    }
}

/// How long until the youngest log that only waits for `settle` has settled.
fn youngest_settle_wait(
    views: &[TaskView],
    decisions: &[Vec<Decision>],
    settle: Duration,
    now: SystemTime,
) -> Duration {
    let mut wait = Duration::ZERO;
    for (view, ds) in views.iter().zip(decisions) {
        for (agent, d) in view.agents.iter().zip(ds) {
            if d.waiting.is_none() {
                continue;
            }
            for log in &agent.facts.logs {
                if let (crate::decide::FileState::Recent(_), Some(m)) = (&log.state, log.mtime) {
                    let left = settle.saturating_sub(crate::model::age(now, m));
                    wait = wait.max(left + Duration::from_millis(20));
                }
            }
        }
    }
    wait.min(settle + Duration::from_millis(20))
}
