//! Where log lines go: journald's native protocol under systemd, readable stderr otherwise, plus an optional file.

use crate::reap::events::{EventContext, OrphanOutcome, PassEvent, TaskEvent};
use std::fs::OpenOptions;
use std::io::IsTerminal;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Keeps the log file's writer thread alive; drop it last so nothing buffered is lost.
pub struct LogGuard {
    _file: Option<tracing_appender::non_blocking::WorkerGuard>,
}

/// True when stderr is the journal stream systemd connected (`JOURNAL_STREAM=dev:ino`).
pub fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

fn filter() -> EnvFilter {
    EnvFilter::try_from_env("AGENT_REAPER_LOG").unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Sets up logging once per process. Journald fields keep their names (`AGENT_ID=…`), so
/// `journalctl -u agent-reaper AGENT_ID=<id>` finds an agent's lines.
pub fn init(log_file: Option<&Path>) -> std::io::Result<LogGuard> {
    let (file_layer, guard) = match log_file {
        Some(path) => {
            let file = OpenOptions::new().create(true).append(true).open(path)?;
            // lossy(false): when the writer falls behind, callers wait rather than drop lines.
            let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
                .lossy(false)
                .finish(file);
            let layer = tracing_subscriber::fmt::layer()
                .with_writer(writer)
                .with_ansi(false)
                .with_target(false);
            (Some(layer), Some(guard))
        }
        None => (None, None),
    };
    let journald = if stderr_is_journal() {
        tracing_journald::layer()
            .ok()
            .map(|l| l.with_field_prefix(None))
    } else {
        None
    };
    let stderr = journald.is_none().then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
    });
    let _ = tracing_subscriber::registry()
        .with(filter())
        .with(journald)
        .with(stderr)
        .with(file_layer)
        .try_init();
    Ok(LogGuard { _file: guard })
}

/// One line for one thing a pass did, with the journald fields `AGENT_ID`, `TASK_ID`,
/// `ACTION` (the event's name) and `REASON` (the agent's class).
pub fn pass_event(whose: &EventContext<'_>, event: &PassEvent) {
    tracing::info!(
        agent_id = %whose.agent_id,
        task_id = %whose.task_id,
        action = event.as_str(),
        reason = whose.reason.as_str(),
        "{}/{}: {event}",
        whose.task_id,
        whose.agent_id
    );
}

/// A dry run's line for an action it would take (`ACTION` is the action's name).
pub fn planned_action(whose: &EventContext<'_>, action: &'static str, text: &str) {
    tracing::info!(
        agent_id = %whose.agent_id,
        task_id = %whose.task_id,
        action,
        reason = whose.reason.as_str(),
        "{}/{}: would {text}",
        whose.task_id,
        whose.agent_id
    );
}

/// One line for something a pass did to a whole task (`ACTION` is the event's name).
pub fn task_event(task_id: &str, event: &TaskEvent) {
    tracing::info!(
        task_id = %task_id,
        action = event.as_str(),
        "{task_id}: {event}"
    );
}

/// What stopping an orphan session came to (`ACTION` is the outcome's name).
pub fn orphan_outcome(session: &str, outcome: &OrphanOutcome) {
    tracing::info!(
        action = outcome.as_str(),
        "orphan session {session}: {outcome}"
    );
}

/// What went wrong for an agent this pass.
pub fn agent_error(whose: &EventContext<'_>, error: &str) {
    tracing::warn!(
        agent_id = %whose.agent_id,
        task_id = %whose.task_id,
        reason = whose.reason.as_str(),
        "{}/{}: {error}",
        whose.task_id,
        whose.agent_id
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::AgentClass;
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};
    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::{Context, Layer};

    type Line = BTreeMap<String, String>;

    /// Keeps every event's fields as journald gets them (it upper-cases the names).
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<Line>>>);

    struct Fields<'a>(&'a mut Line);

    impl Visit for Fields<'_> {
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0
                .insert(field.name().to_uppercase(), value.to_string());
        }
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0
                .insert(field.name().to_uppercase(), format!("{value:?}"));
        }
    }

    impl<S: tracing::Subscriber> Layer<S> for Capture {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            let mut line = Line::new();
            event.record(&mut Fields(&mut line));
            self.0.lock().unwrap().push(line);
        }
    }

    fn lines_of(log: impl FnOnce()) -> Vec<Line> {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::registry().with(capture.clone());
        tracing::subscriber::with_default(subscriber, log);
        capture.0.lock().unwrap().clone()
    }

    const WHOSE: EventContext<'static> = EventContext {
        task_id: "TASK-20261127-120000-0a0b0c0d",
        agent_id: "ghost-120002-0a0b0c",
        reason: AgentClass::Zombie,
    };

    /// `journalctl ACTION=archived REASON=zombie` finds the line: both come from the
    /// event and the agent's class, not from parsing the text.
    #[test]
    fn an_event_line_carries_its_action_reason_and_ids() {
        let event = PassEvent::Archived {
            from: "progress/p.jsonl".into(),
            to: "archive/p.jsonl".into(),
        };
        let lines = lines_of(|| pass_event(&WHOSE, &event));
        let line = &lines[0];
        assert_eq!(line["ACTION"], "archived");
        assert_eq!(line["REASON"], "zombie");
        assert_eq!(line["AGENT_ID"], WHOSE.agent_id);
        assert_eq!(line["TASK_ID"], WHOSE.task_id);
        assert_eq!(
            line["MESSAGE"],
            "TASK-20261127-120000-0a0b0c0d/ghost-120002-0a0b0c: archived progress/p.jsonl -> archive/p.jsonl"
        );
    }

    #[test]
    fn dry_run_and_orphan_lines_name_their_action() {
        let lines = lines_of(|| {
            planned_action(&WHOSE, "archive", "archive progress/p.jsonl");
            orphan_outcome(
                "agent_lost-1",
                &OrphanOutcome::SessionKilled { processes: 2 },
            );
        });
        assert_eq!(lines[0]["ACTION"], "archive");
        assert!(lines[0]["MESSAGE"].ends_with(": would archive progress/p.jsonl"));
        assert_eq!(lines[1]["ACTION"], "session_killed");
        assert_eq!(
            lines[1]["MESSAGE"],
            "orphan session agent_lost-1: killed (2 process(es) stopped)"
        );
    }
}
