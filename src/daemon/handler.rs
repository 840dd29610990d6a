//! What the daemon's loop does with what it collects, decided without I/O: which pass a
//! file event asks for, and what a signal means now (the `select!` loop only collects).

use crate::watch::{Change, PathKind, RenameSide, WatchEvent};
use signal_hook::consts::SIGHUP;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Events arriving this close together are handled in one pass.
pub(super) const COALESCE: Duration = Duration::from_millis(100);

/// The pass a file event asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Wake {
    /// None: our own echo (sidecar, archive), a log or prompt moved away, the global registry.
    Nothing,
    /// A full pass at `at` (events were lost, or the state DB changed).
    Full { at: Instant },
    /// A pass over the task folder `dir` at `at`.
    Task { dir: PathBuf, at: Instant },
}

/// The pass `event` asks for, seen at `now`. A log write waits until the log could have
/// settled (`settle`): an earlier look would only find it busy.
pub(super) fn wake_for(event: &WatchEvent, settle: Duration, now: Instant) -> Wake {
    let (event, change) = match event {
        WatchEvent::Rescan(_) => return Wake::Full { at: now + COALESCE },
        WatchEvent::Path { event, change } => (event, change),
    };
    if event.kind.is_own() {
        return Wake::Nothing;
    }
    let Some(task) = event.kind.task() else {
        // The state DB changed (its -wal is the signal): any DB-backed task may have
        // moved. The global registry alone asks for nothing.
        return match event.kind {
            PathKind::StateDb => Wake::Full { at: now + COALESCE },
            _ => Wake::Nothing,
        };
    };
    let gone = matches!(change, Change::Removed | Change::Renamed(RenameSide::From));
    let at = match event.kind {
        // A log moved away (by us, archiving) asks for nothing.
        PathKind::Log { .. } | PathKind::Prompt { .. } if gone => return Wake::Nothing,
        // A write resets the log's settle timer: look again once it could be quiet.
        PathKind::Log { .. } => now + settle + COALESCE,
        _ => now + COALESCE,
    };
    Wake::Task {
        dir: event.base_dir.join(task),
        at,
    }
}

/// What a signal means now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OnSignal {
    /// SIGHUP: read the configuration again.
    Reload,
    /// A stop signal with no pass in flight: stop now.
    Stop,
    /// A stop signal during a pass: let it finish (up to `shutdown_timeout`), then stop.
    StopAfterPass,
    /// A second stop signal while stopping: exit at once; the journal settles the rest
    /// at the next start.
    ExitNow,
}

pub(super) fn on_signal(signal: i32, stopping: bool, pass_in_flight: bool) -> OnSignal {
    match signal {
        SIGHUP => OnSignal::Reload,
        _ if stopping => OnSignal::ExitNow,
        _ if pass_in_flight => OnSignal::StopAfterPass,
        _ => OnSignal::Stop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AgentId;
    use crate::watch::PathEvent;
    use crate::workspace::LogKind;
    use signal_hook::consts::{SIGINT, SIGTERM};
    use std::path::Path;

    const SETTLE: Duration = Duration::from_secs(2);

    fn path(kind: PathKind, change: Change) -> WatchEvent {
        WatchEvent::Path {
            event: PathEvent {
                base: 0,
                base_dir: PathBuf::from("/ws"),
                path: PathBuf::from("/ws/whatever"),
                kind,
            },
            change,
        }
    }

    fn log(change: Change) -> WatchEvent {
        let kind = PathKind::Log {
            task: "TASK-1".into(),
            agent: AgentId::parse("agent-1").unwrap(),
            kind: LogKind::Stream,
        };
        path(kind, change)
    }

    #[test]
    fn a_log_write_waits_for_settle_and_other_task_changes_do_not() {
        let now = Instant::now();
        let task = |at| Wake::Task {
            dir: Path::new("/ws/TASK-1").to_path_buf(),
            at,
        };
        assert_eq!(
            wake_for(&log(Change::Modified), SETTLE, now),
            task(now + SETTLE + COALESCE)
        );
        let registry = PathKind::TaskRegistry {
            task: "TASK-1".into(),
        };
        assert_eq!(
            wake_for(&path(registry, Change::Modified), SETTLE, now),
            task(now + COALESCE)
        );
    }

    #[test]
    fn our_own_echoes_and_logs_moved_away_ask_for_nothing() {
        let now = Instant::now();
        for kind in [
            PathKind::Archive {
                task: "TASK-1".into(),
            },
            PathKind::Sidecar {
                task: "TASK-1".into(),
            },
            PathKind::GlobalRegistry,
        ] {
            assert_eq!(
                wake_for(&path(kind.clone(), Change::Created), SETTLE, now),
                Wake::Nothing,
                "{kind:?}"
            );
        }
        for change in [Change::Removed, Change::Renamed(RenameSide::From)] {
            assert_eq!(wake_for(&log(change), SETTLE, now), Wake::Nothing);
        }
        // A log moved here is new work.
        assert!(matches!(
            wake_for(&log(Change::Renamed(RenameSide::To)), SETTLE, now),
            Wake::Task { .. }
        ));
    }

    #[test]
    fn lost_events_and_state_db_changes_ask_for_a_full_pass() {
        let now = Instant::now();
        let full = Wake::Full { at: now + COALESCE };
        assert_eq!(
            wake_for(&WatchEvent::Rescan("overflow".into()), SETTLE, now),
            full
        );
        assert_eq!(
            wake_for(&path(PathKind::StateDb, Change::Modified), SETTLE, now),
            full
        );
    }

    #[test]
    fn signals_reload_stop_wait_for_the_pass_or_exit_on_the_second() {
        assert_eq!(on_signal(SIGHUP, false, true), OnSignal::Reload);
        assert_eq!(on_signal(SIGHUP, true, true), OnSignal::Reload);
        assert_eq!(on_signal(SIGTERM, false, false), OnSignal::Stop);
        assert_eq!(on_signal(SIGINT, false, true), OnSignal::StopAfterPass);
        assert_eq!(on_signal(SIGTERM, true, true), OnSignal::ExitNow);
    }
}
