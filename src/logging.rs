//! Where log lines go: journald's native protocol under systemd, readable stderr otherwise, plus an optional file.

use crate::reap::events::{EventContext, PassEvent};
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
