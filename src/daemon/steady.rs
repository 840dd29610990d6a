//! The idle daemon's steady state: while the watch is healthy and the last full pass left
//! nothing pending, a periodic reconcile asks tmux for its session list only, and runs the
//! full pass only when that list changed (a session that dies or appears writes no file).

use crate::procs::{TmuxError, TmuxSnapshot};
use crate::reap::pass::PassReport;
use std::hash::{DefaultHasher, Hash, Hasher};

/// Every this many periodic reconciles skipped in a row, one runs in full anyway: a cheap
/// guard against whatever no file event and no session change can show (hourly at the
/// default 60 s `reconcile_interval`).
pub(super) const MAX_SKIPS: u32 = 60;

/// What a periodic look compares: every session's name and tmux id (a session killed and
/// made again under the same name has a new id). `None` when tmux gave no answer: then
/// nothing is known and the full pass runs.
pub(super) fn sessions_key(snapshot: &Result<TmuxSnapshot, TmuxError>) -> Option<u64> {
    let snapshot = snapshot.as_ref().ok()?;
    let mut h = DefaultHasher::new();
    for (name, session) in &snapshot.sessions {
        (name, session.id).hash(&mut h);
    }
    Some(h.finish())
}

/// A full pass after which, with no file event, only a change of tmux sessions can give
/// work: no error to retry, every agent read either done for good or active (active tasks
/// are polled on their own), nothing waiting on a timer, and no orphan session whose age
/// could make it due (`kill_orphans`).
pub(super) fn is_steady(report: &PassReport, kill_orphans: bool) -> bool {
    report.errors.is_empty()
        && report.tmux_error.is_none()
        && (report.orphans.is_empty() || !kill_orphans)
        && report.tasks.iter().all(|task| {
            task.error.is_none()
                && task.agents.iter().all(|a| {
                    a.still_active()
                        || (a.errors.is_empty()
                            && a.actions.is_empty()
                            && a.waiting.is_none()
                            && a.recheck.is_none())
                })
        })
}

/// Whether the steady look (tmux's sessions compared with the reference) may stand in for a
/// full pass: only a periodic one, with the clean-task cache trusted (`trusted`), no work
/// done by the clock (`clockless`: retention, uploads), and fewer than `MAX_SKIPS` skipped in
/// a row. A full pass a change asked for (`for_change`: the state DB's) always runs: a task
/// deployed in the DB whose session came and went between two looks leaves tmux's list as it
/// was, and the change is the only sign of it (CI: orchestrator `hooks2026::a_hanging_hook…`).
pub(super) fn may_skip(for_change: bool, trusted: bool, clockless: bool, skips: u32) -> bool {
    !for_change && trusted && clockless && skips < MAX_SKIPS
}

/// Whether a pass left some agent active (the registry lists it as running after the pass).
pub(super) fn has_active_agent(report: &PassReport) -> bool {
    report
        .tasks
        .iter()
        .flat_map(|t| &t.agents)
        .any(|a| a.still_active())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_periodic_trusted_clockless_pass_may_be_skipped() {
        assert!(may_skip(false, true, true, 0));
        assert!(may_skip(false, true, true, MAX_SKIPS - 1));
        // The state DB changed: the pass runs whatever tmux says.
        assert!(!may_skip(true, true, true, 0));
        assert!(!may_skip(false, false, true, 0));
        assert!(!may_skip(false, true, false, 0));
        assert!(!may_skip(false, true, true, MAX_SKIPS));
    }
    use crate::decide::AgentClass;
    use crate::procs::SessionInfo;
    use crate::reap::pass::{AgentReport, OrphanReport};
    use crate::reap::report::AgentDetail;
    use std::time::Duration;

    fn snapshot(sessions: &[(&str, u32)]) -> Result<TmuxSnapshot, TmuxError> {
        Ok(TmuxSnapshot {
            sessions: sessions
                .iter()
                .map(|(name, id)| {
                    (
                        name.to_string(),
                        SessionInfo {
                            name: name.to_string(),
                            id: Some(*id),
                            created: None,
                            activity: None,
                            panes: Vec::new(),
                        },
                    )
                })
                .collect(),
            server: None,
        })
    }

    fn agent(status: &str, class: AgentClass) -> AgentReport {
        agent_with(status, class, AgentDetail::default())
    }

    fn agent_with(status: &str, class: AgentClass, detail: AgentDetail) -> AgentReport {
        AgentReport::new("a".into(), status.to_string().into(), class, detail)
    }

    fn report(agents: Vec<AgentReport>) -> PassReport {
        PassReport::of_one_task(agents)
    }

    #[test]
    fn a_session_gone_come_or_made_again_changes_the_key() {
        let base = sessions_key(&snapshot(&[("agent_a", 1), ("agent_b", 2)]));
        assert!(base.is_some());
        assert_eq!(
            base,
            sessions_key(&snapshot(&[("agent_a", 1), ("agent_b", 2)]))
        );
        assert_ne!(base, sessions_key(&snapshot(&[("agent_a", 1)])));
        assert_ne!(
            base,
            sessions_key(&snapshot(&[("agent_a", 1), ("agent_b", 2), ("agent_c", 3)]))
        );
        assert_ne!(
            base,
            sessions_key(&snapshot(&[("agent_a", 1), ("agent_b", 7)]))
        );
        // No answer from tmux: nothing is known.
        assert_eq!(
            sessions_key(&Err(TmuxError::Timeout(Duration::from_secs(5)))),
            None
        );
    }

    /// A task's own pass that saw an active agent ends the steady state: its session may
    /// be newer than the reference, and once it ends tmux's list matches that again.
    #[test]
    fn a_pass_with_an_active_agent_has_the_next_reconcile_run() {
        assert!(!has_active_agent(&report(vec![agent(
            "completed",
            AgentClass::Cleaned
        )])));
        assert!(has_active_agent(&report(vec![
            agent("completed", AgentClass::Cleaned),
            agent("working", AgentClass::Active),
        ])));
    }

    #[test]
    fn only_a_pass_with_nothing_pending_is_steady() {
        assert!(is_steady(&report(vec![]), true));
        assert!(is_steady(
            &report(vec![agent("completed", AgentClass::Cleaned)]),
            true
        ));
        // Active agents are polled on their own.
        assert!(is_steady(
            &report(vec![agent("working", AgentClass::Active)]),
            true
        ));
        let waiting = agent_with(
            "completed",
            AgentClass::Cleaned,
            AgentDetail {
                recheck: Some(Duration::from_secs(2)),
                ..Default::default()
            },
        );
        assert!(!is_steady(&report(vec![waiting]), true));
        let failed = agent_with(
            "completed",
            AgentClass::Cleaned,
            AgentDetail {
                errors: vec!["archive: EIO".into()],
                ..Default::default()
            },
        );
        assert!(!is_steady(&report(vec![failed]), true));
        let mut broken = report(vec![]);
        broken.tasks[0].error = Some("registry locked".into());
        assert!(!is_steady(&broken, true));
        let mut no_tmux = report(vec![]);
        no_tmux.tmux_error = Some("timeout".into());
        assert!(!is_steady(&no_tmux, true));
        let mut orphan = report(vec![]);
        orphan.orphans.push(OrphanReport {
            session: "agent_x".into(),
            idle_seconds: Some(5),
            stop: false,
            pane_pids: Vec::new(),
            outcome: None,
        });
        // An orphan may come due as it idles, unless orphans are never killed.
        assert!(!is_steady(&orphan, true));
        assert!(is_steady(&orphan, false));
    }
}
