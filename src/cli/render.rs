//! Human-readable renderings of a pass for `plan`, `once` and `status` (JSON is the report itself).

use crate::decide::{Action, AgentClass};
use crate::reap::pass::{AgentReport, PassReport, TaskReport, action_text};
use std::collections::BTreeMap;
use std::fmt::Write;

/// Text written out as it is made, a chunk at a time, not held whole: 40,000 agents' `once`
/// text is 17 MB, and the string that held it had grown to 33 MB, the pass's largest
/// allocation. The helpers below write lines into `buf`; [`Chunked::written`] hands it on
/// once it holds a chunk.
struct Chunked<'w> {
    buf: String,
    out: &'w mut dyn std::io::Write,
    /// The first write that failed (a reader gone): nothing more is written.
    failed: Option<std::io::Error>,
}

/// Bytes gathered before they are written.
const CHUNK: usize = 64 * 1024;

impl<'w> Chunked<'w> {
    fn new(out: &'w mut dyn std::io::Write) -> Self {
        Chunked {
            buf: String::with_capacity(CHUNK + 1024),
            out,
            failed: None,
        }
    }

    /// Writes `buf` out once it holds a chunk; whether writing still goes on.
    fn written(&mut self) -> bool {
        if self.buf.len() >= CHUNK {
            self.write_out();
        }
        self.failed.is_none()
    }

    fn write_out(&mut self) {
        if self.failed.is_none()
            && let Err(e) = self.out.write_all(self.buf.as_bytes())
        {
            self.failed = Some(e);
        }
        self.buf.clear();
    }

    /// Writes what is left; the first failure, if any.
    fn finish(mut self) -> std::io::Result<()> {
        self.write_out();
        match self.failed.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

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
            let _ = writeln!(out, "      {}", action_text(&task.dir, &action));
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

/// What `plan` and `once` say after the tasks: orphan sessions, hooks, archive removals
/// (`done`: made, else planned).
fn after_tasks(report: &PassReport, out: &mut String, done: bool) {
    orphans(report, out);
    hooks(report, out);
    if let Some(archives) = &report.archives {
        crate::archive::retention::render_removals(archives, done, out);
    }
}

/// `plan`: every action per task and agent. Agents with nothing to do are listed by class only.
pub fn plan(report: &PassReport, to: &mut dyn std::io::Write) -> std::io::Result<()> {
    let mut chunked = Chunked::new(to);
    header(report, &mut chunked.buf);
    let mut quiet: BTreeMap<&str, usize> = BTreeMap::new();
    'tasks: for task in &report.tasks {
        task_head(task, &mut chunked.buf);
        for agent in &task.agents {
            if agent.actions.is_empty() && agent.waiting.is_none() && agent.warnings.is_empty() {
                *quiet.entry(agent.class.as_str()).or_default() += 1;
                continue;
            }
            agent_block(task, agent, &mut chunked.buf, false);
            if !chunked.written() {
                break 'tasks;
            }
        }
    }
    let out = &mut chunked.buf;
    after_tasks(report, out, false);
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
    chunked.finish()
}

/// `once`: what was done, then the summary line.
pub fn once(report: &PassReport, to: &mut dyn std::io::Write) -> std::io::Result<()> {
    let mut chunked = Chunked::new(to);
    header(report, &mut chunked.buf);
    'tasks: for task in &report.tasks {
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
        task_head(task, &mut chunked.buf);
        for agent in busy {
            agent_block(task, agent, &mut chunked.buf, true);
            if !chunked.written() {
                break 'tasks;
            }
        }
    }
    let out = &mut chunked.buf;
    after_tasks(report, out, true);
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
    chunked.finish()
}

/// `status`: agents per task by class, then the agents that are not plain active/cleaned.
pub fn status(report: &PassReport, to: &mut dyn std::io::Write) -> std::io::Result<()> {
    let mut chunked = Chunked::new(to);
    let out = &mut chunked.buf;
    header(report, out);
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
                    .map(|a| action_text(&task.dir, &a))
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
    orphans(report, out);
    if let Some(archives) = &report.archives {
        crate::archive::retention::render_sizes(archives, out);
    }
    chunked.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reap::events::PassEvent;
    use crate::reap::report::AgentDetail;
    use std::borrow::Cow;

    /// One task of `n` cleaned agents, each with three archived logs.
    fn report(n: usize) -> PassReport {
        let agents = (0..n)
            .map(|a| {
                let done = ["logs", "progress", "findings"]
                    .iter()
                    .map(|kind| PassEvent::Archived {
                        from: format!("{kind}/agent-{a:06}.jsonl").into(),
                        to: format!("archive/agent-{a:06}.jsonl").into(),
                    })
                    .collect();
                let detail = AgentDetail {
                    done,
                    ..AgentDetail::default()
                };
                AgentReport::new(
                    format!("agent-{a:06}"),
                    Cow::Borrowed("completed"),
                    AgentClass::Finished,
                    detail,
                )
            })
            .collect();
        PassReport::of_one_task(agents)
    }

    /// Takes `room` bytes, then fails as a pipe whose reader is gone; counts the writes.
    struct Pipe {
        room: usize,
        taken: Vec<u8>,
        writes: Vec<usize>,
    }

    impl std::io::Write for Pipe {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.writes.push(bytes.len());
            if self.taken.len() + bytes.len() > self.room {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
            self.taken.extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// `once` over many agents writes a chunk at a time, the whole text in order; a reader
    /// gone stops the rendering at the first chunk it refuses.
    #[test]
    fn a_long_rendering_is_written_a_chunk_at_a_time_and_stops_at_a_closed_pipe() {
        let report = report(3000);
        let mut pipe = Pipe {
            room: usize::MAX,
            taken: Vec::new(),
            writes: Vec::new(),
        };
        once(&report, &mut pipe).unwrap();
        let text = String::from_utf8(pipe.taken).unwrap();
        assert!(text.len() > 8 * CHUNK, "{} bytes", text.len());
        assert!(pipe.writes.len() > 8, "{:?}", pipe.writes);
        assert!(
            pipe.writes.iter().all(|&n| n < 2 * CHUNK),
            "{:?}",
            pipe.writes
        );
        assert!(text.contains("agent-000000") && text.contains("agent-002999"));
        assert!(text.find("agent-000001").unwrap() < text.find("agent-002998").unwrap());
        assert!(
            text.ends_with("0 error(s)\n"),
            "{}",
            &text[text.len() - 200..]
        );

        let mut closed = Pipe {
            room: 0,
            taken: Vec::new(),
            writes: Vec::new(),
        };
        let err = once(&report, &mut closed).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe);
        assert_eq!(
            closed.writes.len(),
            1,
            "nothing more is written once a write fails"
        );
    }
}
