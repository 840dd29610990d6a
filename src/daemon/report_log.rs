//! A pass's report as journal lines: one per thing done (with fields journalctl filters
//! on), each task or agent warning once.

use crate::logging;
use crate::reap::events::EventContext;
use crate::reap::pass::{PassReport, action_text};
use std::collections::HashSet;

/// One journal line per thing done, with fields journalctl can filter on.
pub(super) fn log_report(report: &PassReport, dry_run: bool) {
    for e in &report.errors {
        tracing::warn!("{e}");
    }
    if let Some(e) = &report.tmux_error {
        tracing::warn!("tmux: {e}; nothing destructive this round");
    }
    for task in &report.tasks {
        if let Some(e) = &task.error {
            tracing::warn!(task_id = %task.task_id, "{e}");
        }
        for event in &task.done {
            logging::task_event(&task.task_id, event);
        }
        for agent in &task.agents {
            let whose = EventContext {
                task_id: &task.task_id,
                agent_id: &agent.id,
                reason: agent.class,
            };
            if dry_run {
                for action in &agent.actions {
                    logging::planned_action(
                        &whose,
                        action.as_str(),
                        &action_text(&task.dir, &action),
                    );
                }
            } else {
                for event in &agent.done {
                    logging::pass_event(&whose, &event);
                }
            }
            for e in &agent.errors {
                logging::agent_error(&whose, e);
            }
        }
    }
    for orphan in &report.orphans {
        if let Some(outcome) = &orphan.outcome {
            logging::orphan_outcome(&orphan.session, outcome);
        }
    }
}

/// Task and agent warnings (a tracked_files entry ignored, a hostile id skipped) come
/// back every pass over the same registry; the log gets each once.
pub(super) fn log_new_warnings(warned: &mut HashSet<String>, report: &PassReport) {
    const REMEMBERED: usize = 10_000;
    if warned.len() > REMEMBERED {
        warned.clear();
    }
    for task in &report.tasks {
        let agent_warnings = task
            .agents
            .iter()
            .flat_map(|a| a.warnings.iter().map(move |w| (Some(&a.id), w)));
        for (agent, w) in task
            .warnings
            .iter()
            .map(|w| (None, w))
            .chain(agent_warnings)
        {
            let key = format!("{}\0{}", task.task_id, w);
            if !warned.insert(key) {
                continue;
            }
            match agent {
                Some(id) => {
                    tracing::warn!(agent_id = %id, task_id = %task.task_id, "{}/{id}: {w}", task.task_id)
                }
                None => tracing::warn!(task_id = %task.task_id, "{}: {w}", task.task_id),
            }
        }
    }
}
