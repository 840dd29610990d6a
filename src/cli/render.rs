//! Human-readable renderings of a pass for `plan`, `once` and `status` (JSON is the report itself).

use crate::decide::{Action, AgentClass};
use crate::reap::pass::{AgentReport, PassReport, TaskReport, action_text};
use std::collections::BTreeMap;
use std::fmt::Write;

fn header(report: &PassReport, out: &mut String) {
    let bases: Vec<_> = report
        .bases
        .iter()
        .map(|b| b.display().to_string())
        .collect();
    let _ = writeln!(
        out,
        "{} task(s), {} agent(s) in {}",
        report.totals.tasks,
        report.totals.agents_seen,
        bases.join(", ")
    );
    if let Some(e) = &report.tmux_error {
        let _ = writeln!(out, "tmux: {e} (nothing destructive this round)");
    }
}

fn agent_block(task: &TaskReport, agent: &AgentReport, out: &mut String, show_done: bool) {
    let status = match &agent.new_status {
        Some(new) => format!("{} -> {new}", agent.status),
        None => agent.status.to_string(),
    };
    let _ = writeln!(
        out,
        "  {:<44} {:<22} {}",
        agent.id,
        status,
        agent.class.as_str()
    );
    // Written as they come (no line of its own each: 40,000 agents' events are 160,000).
    if show_done {
        for event in &agent.done {
            let _ = writeln!(out, "      {event}");
        }
    } else {
        for action in &agent.actions {
            let _ = writeln!(out, "      {}", action_text(&task.dir, action));
        }
    }
    if let Some(w) = &agent.waiting {
        let _ = writeln!(out, "      waiting: {w}");
    }
    for e in &agent.errors {
        let _ = writeln!(out, "      error: {e}");
    }
    for w in &agent.warnings {
        let _ = writeln!(out, "      warning: {w}");
    }
}

fn task_head(task: &TaskReport, out: &mut String) {
    let _ = writeln!(
        out,
        "\n{}  ({}, {} agent(s))",
        task.task_id,
        task.backend,
        task.agents.len()
    );
    if let Some(e) = &task.error {
        let _ = writeln!(out, "  skipped: {e}");
    }
    for w in &task.warnings {
        let _ = writeln!(out, "  warning: {w}");
    }
    for event in &task.done {
        let _ = writeln!(out, "  {event}");
    }
}

fn orphans(report: &PassReport, out: &mut String) {
    if report.orphans.is_empty() {
        return;
    }
    let _ = writeln!(out, "\nOrphan sessions (in no registry):");
    for o in &report.orphans {
        let idle = o
            .idle_seconds
            .map(|s| format!("idle {}m", s / 60))
            .unwrap_or_else(|| "idle unknown".into());
        let what = match (&o.outcome, o.stop) {
            (Some(outcome), _) => outcome.to_string(),
            (None, true) => "will be killed".into(),
            (None, false) => "reported only (kill_orphan_sessions = false or not idle)".into(),
        };
        let _ = writeln!(out, "  {}  {idle}  {what}", o.session);
    }
}

/// Transition hooks: one line per run (`plan`: would run / pending retry; `once`: outcome).
fn hooks(report: &PassReport, out: &mut String) {
    if report.hooks.is_empty() {
        return;
    }
    let _ = writeln!(out, "\nHooks:");
    for h in &report.hooks {
        let attempt = h
            .attempt
            .map(|n| format!(" (attempt {n})"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {} for {}/{} -> {}: {}{attempt}",
            h.hook, h.task_id, h.agent_id, h.status, h.state
        );
        let _ = writeln!(out, "      {}", shell_words(&h.argv));
        if let Some(d) = &h.detail {
            let _ = writeln!(out, "      {d}");
        }
    }
}

/// An argv shown the way a shell user would type it (display only; nothing runs a shell).
fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,@+%".contains(&b));
            if plain {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `plan`: every action per task and agent. Agents with nothing to do are listed by class only.
pub fn plan(report: &PassReport) -> String {
    let mut out = String::new();
    header(report, &mut out);
    let mut quiet: BTreeMap<&str, usize> = BTreeMap::new();
    for task in &report.tasks {
        task_head(task, &mut out);
        for agent in &task.agents {
            if agent.actions.is_empty() && agent.waiting.is_none() && agent.warnings.is_empty() {
                *quiet.entry(agent.class.as_str()).or_default() += 1;
                continue;
            }
            agent_block(task, agent, &mut out, false);
        }
    }
    orphans(report, &mut out);
    hooks(report, &mut out);
    if let Some(archives) = &report.archives {
        crate::archive::retention::render_removals(archives, false, &mut out);
    }
    let actions: usize = report
        .tasks
        .iter()
        .flat_map(|t| &t.agents)
        .map(|a| a.actions.len())
        .sum();
    let quiet: Vec<String> = quiet.iter().map(|(k, v)| format!("{v} {k}")).collect();
    let idle = if quiet.is_empty() {
        String::new()
    } else {
        format!("; nothing to do for {}", quiet.join(", "))
    };
    let _ = writeln!(
        out,
        "\nPlan: {actions} action(s){idle}. Nothing was changed."
    );
    out
}

/// `once`: what was done, then the summary line.
pub fn once(report: &PassReport) -> String {
    let mut out = String::new();
    header(report, &mut out);
    for task in &report.tasks {
        let busy: Vec<&AgentReport> = task
            .agents
            .iter()
            .filter(|a| {
                !a.done.is_empty()
                    || !a.errors.is_empty()
                    || a.waiting.is_some()
                    || !a.warnings.is_empty()
            })
            .collect();
        if busy.is_empty()
            && task.error.is_none()
            && task.warnings.is_empty()
            && task.done.is_empty()
        {
            continue;
        }
        task_head(task, &mut out);
        for agent in busy {
            agent_block(task, agent, &mut out, true);
        }
    }
    orphans(report, &mut out);
    hooks(report, &mut out);
    if let Some(archives) = &report.archives {
        crate::archive::retention::render_removals(archives, true, &mut out);
    }
    if let Some(upload) = report.upload.as_ref().filter(|u| !u.is_quiet()) {
        for p in &upload.problems {
            let _ = writeln!(out, "upload: {p}");
        }
        let _ = writeln!(out, "{}", upload.summary());
    }
    for e in &report.errors {
        let _ = writeln!(out, "error: {e}");
    }
    let t = &report.totals;
    let _ = writeln!(
        out,
        "\nSummary: {} agent(s) seen in {} task(s); {} cleaned, {} zombie(s), {} stale, {} stopped; \
         {} file(s) archived, {} prompt(s) deleted; {} settling; {} error(s)",
        t.agents_seen,
        t.tasks,
        t.cleaned,
        t.zombies,
        t.stale,
        t.stopped,
        t.files_archived,
        t.prompts_deleted,
        t.settling,
        t.errors
    );
    out
}

/// `status`: agents per task by class, then the agents that are not plain active/cleaned.
pub fn status(report: &PassReport) -> String {
    let mut out = String::new();
    header(report, &mut out);
    let _ = write!(out, "\n{:<32} {:<8}", "TASK", "BACKEND");
    for c in AgentClass::ALL {
        let _ = write!(out, " {:>8}", c.as_str());
    }
    out.push('\n');
    let mut totals = [0usize; AgentClass::ALL.len()];
    for task in &report.tasks {
        let _ = write!(out, "{:<32} {:<8}", task.task_id, task.backend);
        for (i, c) in AgentClass::ALL.iter().enumerate() {
            let n = task.agents.iter().filter(|a| a.class == *c).count();
            totals[i] += n;
            let _ = write!(out, " {n:>8}");
        }
        if let Some(e) = &task.error {
            let _ = write!(out, "  skipped: {e}");
        }
        out.push('\n');
    }
    let _ = write!(out, "{:<32} {:<8}", "TOTAL", "");
    for n in totals {
        let _ = write!(out, " {n:>8}");
    }
    out.push('\n');
    let notable: Vec<(&TaskReport, &AgentReport)> = report
        .tasks
        .iter()
        .flat_map(|t| t.agents.iter().map(move |a| (t, a)))
        .filter(|(_, a)| {
            !matches!(
                a.class,
                AgentClass::Active | AgentClass::Cleaned | AgentClass::Finished
            ) || a.waiting.is_some()
        })
        .collect();
    let finished = totals[4];
    if finished > 0 {
        let _ = writeln!(
            out,
            "\n{finished} finished agent(s) await cleanup; `agent-reaper plan` lists the actions."
        );
    }
    if !notable.is_empty() {
        let _ = writeln!(out, "\nNeeding attention:");
        for (task, agent) in notable {
            // The first action says what kind of trouble it is; the rest is in `plan`.
            let why = agent.waiting.clone().unwrap_or_else(|| {
                agent
                    .actions
                    .iter()
                    .find(|a| matches!(a, Action::Stop { .. } | Action::SetStatus { .. }))
                    .map(|a| action_text(&task.dir, a))
                    .unwrap_or_default()
            });
            let _ = writeln!(
                out,
                "  {:<9} {}/{}  {}",
                agent.class.as_str(),
                task.task_id,
                agent.id,
                why
            );
        }
    }
    orphans(report, &mut out);
    if let Some(archives) = &report.archives {
        crate::archive::retention::render_sizes(archives, &mut out);
    }
    out
}
