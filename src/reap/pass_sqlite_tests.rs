//! A whole pass over a DB-backed base (the 2026 orchestrator's state DB, built by the
//! integration tests' fixture generator) against fakes: no tmux, no real process, no sleep.

use super::events::PassEvent;
use super::pass_fixture_tests::*;
use crate::decide::AgentClass;

#[path = "../../tests/common_sqlite/mod.rs"]
mod common_sqlite;
use common_sqlite::{
    COMPLETED, RUNNING_BAD_FILES, STALE, TASK_B, WORKING, WORKING_DONE_AT, agent_row,
    build_state_db, latest_progress,
};

/// The stale agent of a DB-backed task is stopped and marked `failed` (what the 2026
/// orchestrator's own health check writes) in the state DB, its progress row too; the agents still at work are left as they are, and no JSON
/// registry appears.
#[test]
fn db_backed_stale_agent_is_stopped_and_marked_in_the_state_db() {
    let b = Bench::new();
    let db = build_state_db(&b.base);
    for id in [WORKING, RUNNING_BAD_FILES, WORKING_DONE_AT] {
        let pane = b.procs.spawn(0, &["claude"]);
        b.tmux
            .add_session(&format!("agent_{id}"), &[pane.pid], b.ago(SECOND));
    }
    let stale = b.procs.spawn(0, &["claude"]);
    b.tmux
        .add_session(&format!("agent_{STALE}"), &[stale.pid], b.ago(3 * HOUR));
    let before = |id| agent_row(&db, id);
    let working_before = [WORKING, RUNNING_BAD_FILES, WORKING_DONE_AT, COMPLETED].map(before);
    let mut reaper = b.reaper();

    let report = pass(&mut reaper);

    let agent = agent_report(&report, STALE);
    assert_eq!(agent.class, AgentClass::Stale);
    assert!(agent.errors.is_empty(), "{:?}", agent.errors);
    assert_eq!(
        agent.done,
        [
            PassEvent::Stopped {
                processes: 1,
                joined: 0,
                escalated: false
            },
            PassEvent::SessionKilled {
                session: format!("agent_{STALE}")
            },
            PassEvent::Marked {
                status: "failed",
                reason: Some("inactivity_timeout")
            },
        ]
    );
    assert_eq!(b.procs.signalled(), [stale.pid]);
    assert_eq!(agent_row(&db, STALE).status.as_deref(), Some("failed"));
    let (_, status, _, _) = latest_progress(&db, TASK_B, STALE).unwrap();
    assert_eq!(status, "failed");
    assert_eq!(
        [WORKING, RUNNING_BAD_FILES, WORKING_DONE_AT, COMPLETED].map(before),
        working_before,
        "the others' rows are as they were"
    );
    for task in &report.tasks {
        assert_eq!(task.backend, "sqlite", "{}", task.task_id);
        assert!(
            !b.task_dir(&task.task_id)
                .join("AGENT_REGISTRY.json")
                .exists()
        );
    }
}
