//! Whole passes against fakes, the guards: what must not be touched (ambiguous ids, no
//! answer from tmux or /proc, bystanders), writers stopped before their log moves,
//! orphan sessions. No tmux, no real process, no sleep.

use super::events::{OrphanOutcome, PassEvent};
use super::pass_fixture_tests::*;
use crate::decide::AgentClass;
use std::fs;
use std::time::Duration;

/// One id listed by two tasks: whose agent it is cannot be told, so nothing is done for
/// it, not even to an idle session with a live process; both registries stay as they were.
#[test]
fn an_id_in_two_tasks_is_left_alone() {
    let b = Bench::new();
    let id = "twin-120008-0a0b0c";
    for task in [TASK, OTHER_TASK] {
        b.task(task, vec![b.agent(id, "working", b.ago(3 * HOUR))]);
        b.file(
            task,
            &format!("progress/{id}_progress.jsonl"),
            "{}\n",
            b.ago(3 * HOUR),
        );
    }
    let pane = b.procs.spawn(0, &["claude"]);
    b.tmux
        .add_session(&format!("agent_{id}"), &[pane.pid], b.ago(3 * HOUR));
    let registries = |b: &Bench| {
        [TASK, OTHER_TASK].map(|t| fs::read(b.task_dir(t).join("AGENT_REGISTRY.json")).unwrap())
    };
    let before = registries(&b);
    let mut reaper = b.reaper();

    let report = pass(&mut reaper);

    for task in &report.tasks {
        let agent = &task.agents[0];
        assert_eq!(agent.class, AgentClass::Unknown, "{}", task.task_id);
        assert!(agent.actions.is_empty() && agent.done.is_empty());
        assert!(agent.waiting.as_deref().unwrap().contains("ambiguous"));
    }
    assert!(
        report.errors.iter().any(|e| e.contains("ambiguous")),
        "{:?}",
        report.errors
    );
    assert!(b.procs.signalled().is_empty());
    assert!(b.tmux.killed().is_empty());
    assert!(b.procs.is_alive(pane.pid));
    assert_eq!(registries(&b), before);
    assert!(archive_names(&b.task_dir(TASK)).is_empty());
}

/// When /proc cannot be read, nobody can tell what runs: nothing destructive either.
#[test]
fn unreadable_proc_stops_nothing() {
    let b = Bench::new();
    let id = "sleeper-120010-0a0b0c";
    b.task(TASK, vec![b.agent(id, "working", b.ago(3 * HOUR))]);
    let pane = b.procs.spawn(0, &["claude"]);
    b.tmux
        .add_session(&format!("agent_{id}"), &[pane.pid], b.ago(3 * HOUR));
    b.procs.set_unreadable(true);
    let mut reaper = b.reaper();

    let report = pass(&mut reaper);

    assert!(
        report
            .tmux_error
            .as_deref()
            .unwrap()
            .contains("/proc unreadable"),
        "{:?}",
        report.tmux_error
    );
    assert!(b.procs.signalled().is_empty() && b.tmux.killed().is_empty());
    assert_eq!(b.entry(TASK, id)["status"], "working");
}

/// When tmux does not answer, nothing destructive happens, even to a stale agent.
#[test]
fn tmux_not_answering_stops_nothing() {
    let b = Bench::new();
    let id = "sleeper-120009-0a0b0c";
    b.task(TASK, vec![b.agent(id, "working", b.ago(3 * HOUR))]);
    let pane = b.procs.spawn(0, &["claude"]);
    b.tmux
        .add_session(&format!("agent_{id}"), &[pane.pid], b.ago(3 * HOUR));
    b.tmux.set_down(true);
    let mut reaper = b.reaper();

    let report = pass(&mut reaper);

    assert!(report.tmux_error.is_some());
    assert_eq!(agent_report(&report, id).class, AgentClass::Unknown);
    assert!(b.procs.signalled().is_empty() && b.tmux.killed().is_empty());
    assert_eq!(b.entry(TASK, id)["status"], "working");
}

/// A finished agent whose session is gone but whose log a process still writes (a `tee`
/// that left the session): that writer is the agent's, so it is stopped first, and the
/// log is archived only once nothing writes it.
#[test]
fn a_log_still_written_is_archived_only_after_its_writer_is_stopped() {
    use std::os::unix::fs::MetadataExt;
    let b = Bench::new();
    let id = "teeing-120011-0a0b0c";
    b.task(TASK, vec![b.agent(id, "completed", b.ago(HOUR))]);
    let log = b.file(
        TASK,
        &format!("progress/{id}_progress.jsonl"),
        "{}\n",
        b.ago(HOUR),
    );
    let meta = fs::metadata(&log).unwrap();
    let tee = b.procs.spawn(0, &["tee", "-a", "progress.jsonl"]);
    b.procs.open_for_writing(tee.pid, (meta.dev(), meta.ino()));
    let mut reaper = b.reaper();

    let report = pass(&mut reaper);

    let agent = agent_report(&report, id);
    assert!(agent.errors.is_empty(), "{:?}", agent.errors);
    assert_eq!(b.procs.signalled(), [tee.pid]);
    assert!(
        matches!(
            agent.done.to_vec()[..],
            [
                PassEvent::Stopped { processes: 1, .. },
                PassEvent::Archived { .. }
            ]
        ),
        "{:?}",
        agent.done
    );
    assert!(!log.exists());
    assert_eq!(b.entry(TASK, id)["auto_cleanup_result"]["success"], true);
}

/// An `agent_*` session no registry lists, idle past `max_inactivity`, is stopped with its
/// panes' processes when `kill_orphan_sessions` is on; a busy one is only reported.
#[test]
fn idle_orphan_session_is_stopped_and_a_busy_one_reported() {
    let b = Bench::new();
    b.task(TASK, vec![]);
    let idle = b.procs.spawn(0, &["claude"]);
    let busy = b.procs.spawn(0, &["claude"]);
    b.tmux
        .add_session("agent_lost-120012-0a0b0c", &[idle.pid], b.ago(3 * HOUR));
    b.tmux
        .add_session("agent_busy-120013-0a0b0c", &[busy.pid], b.ago(SECOND));
    let mut reaper = b.reaper();
    reaper.config.kill_orphan_sessions = true;

    let report = pass(&mut reaper);

    let outcome = |name: &str| {
        let orphan = report.orphans.iter().find(|o| o.session == name).unwrap();
        (orphan.stop, orphan.outcome.clone())
    };
    assert_eq!(
        outcome("agent_lost-120012-0a0b0c"),
        (true, Some(OrphanOutcome::SessionKilled { processes: 1 }))
    );
    assert_eq!(outcome("agent_busy-120013-0a0b0c"), (false, None));
    assert_eq!(b.procs.signalled(), [idle.pid]);
    assert_eq!(b.tmux.killed(), ["agent_lost-120012-0a0b0c"]);
    assert!(b.procs.is_alive(busy.pid));
}

/// A process that ignores SIGTERM is SIGKILLed once `term_grace` is over, and the record
/// says the stop escalated.
#[test]
fn a_process_ignoring_sigterm_is_killed_and_the_record_says_so() {
    use crate::procs::stop::Sig;
    let b = Bench::new();
    let id = "stubborn-120015-0a0b0c";
    b.task(TASK, vec![b.agent(id, "working", b.ago(3 * HOUR))]);
    let pane = b.procs.spawn(0, &["claude"]);
    b.procs.ignore_term(pane.pid);
    b.tmux
        .add_session(&format!("agent_{id}"), &[pane.pid], b.ago(3 * HOUR));
    let mut reaper = b.reaper();
    // The stopper's own grace: kept short, the fake answers at once anyway.
    reaper.config.term_grace = vec![Duration::from_millis(1)];

    let report = pass(&mut reaper);

    let agent = agent_report(&report, id);
    assert!(agent.errors.is_empty(), "{:?}", agent.errors);
    assert_eq!(
        agent.done.to_vec()[0],
        PassEvent::Stopped {
            processes: 1,
            joined: 0,
            escalated: true
        }
    );
    assert_eq!(b.procs.signals_to(pane.pid), [Sig::Term, Sig::Kill]);
    assert!(!b.procs.is_alive(pane.pid));
    let record = &b.entry(TASK, id)["auto_cleanup_result"];
    assert_eq!(record["escalated_to_sigkill"], true, "{record}");
    assert_eq!(record["verified_no_zombies"], true);
}
