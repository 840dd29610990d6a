//! Unit tests of the rules on hand-built facts.

use super::*;
use crate::model::classify_status;
use std::path::Path;

const MIN: Duration = Duration::from_secs(60);

fn policy() -> Policy {
    Policy {
        settle: Duration::from_secs(2),
        terminal_grace: Duration::from_secs(60),
        zombie_grace: Duration::from_secs(10),
        max_inactivity: 110 * MIN,
        delete_prompt_files: true,
        kill_orphan_sessions: false,
    }
}

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn facts(status: &str, session: SessionFact) -> AgentFacts {
    AgentFacts {
        status: status.into(),
        class: classify_status(status),
        last_update: Some(now() - 5 * MIN),
        finished_at: None,
        cleanup_recorded: false,
        session,
        live_processes: 0,
        live_writers: 0,
        stream_end: StreamEnd::NoResult,
        logs: vec![FileFact {
            path: Path::new("/w/TASK-1/progress/a_progress.jsonl").into(),
            state: FileState::Settled,
            mtime: Some(now() - 5 * MIN),
        }],
        prompt: Some(Path::new("/w/TASK-1/agent_prompt_a.txt").into()),
    }
}

fn gone_since(ago: Duration) -> SessionFact {
    SessionFact::Gone { since: now() - ago }
}

fn alive() -> SessionFact {
    SessionFact::Alive {
        panes_exited: false,
        window_activity: Some(now() - MIN),
    }
}

#[test]
fn working_agent_without_session_is_a_terminated_zombie() {
    let d = decide(
        &facts("working", gone_since(Duration::ZERO)),
        &policy(),
        now(),
    );
    assert_eq!(d.class, AgentClass::Zombie);
    assert_eq!(
        d.actions,
        vec![
            Action::SetStatus {
                status: "terminated",
                termination_reason: Some("session_not_found")
            },
            Action::Archive {
                path: Path::new("/w/TASK-1/progress/a_progress.jsonl").into()
            },
            Action::DeletePrompt {
                path: Path::new("/w/TASK-1/agent_prompt_a.txt").into()
            },
            Action::RecordCleanup,
        ]
    );
}

#[test]
fn zombie_status_follows_the_stream_result() {
    let mut f = facts("working", gone_since(Duration::ZERO));
    f.stream_end = StreamEnd::Result { is_error: false };
    assert!(
        decide(&f, &policy(), now())
            .actions
            .contains(&Action::SetStatus {
                status: "completed",
                termination_reason: None
            })
    );
    f.stream_end = StreamEnd::Result { is_error: true };
    assert!(
        decide(&f, &policy(), now())
            .actions
            .contains(&Action::SetStatus {
                status: "failed",
                termination_reason: None
            })
    );
}

#[test]
fn recently_active_agent_needs_its_session_seen_gone_twice() {
    let mut f = facts("running", gone_since(Duration::ZERO));
    f.last_update = Some(now() - Duration::from_secs(3));
    f.logs[0].mtime = Some(now() - Duration::from_secs(1));
    let first = decide(&f, &policy(), now());
    assert_eq!(first.class, AgentClass::Settling);
    assert!(first.actions.is_empty());
    f.session = gone_since(Duration::from_secs(10));
    assert_eq!(decide(&f, &policy(), now()).class, AgentClass::Zombie);
}

#[test]
fn unknown_tmux_answer_destroys_nothing() {
    for status in ["working", "completed"] {
        let d = decide(&facts(status, SessionFact::Unknown), &policy(), now());
        assert!(d.actions.is_empty(), "{status}: {d:?}");
        assert_eq!(d.class, AgentClass::Unknown);
    }
}

#[test]
fn unknown_status_is_left_alone() {
    let d = decide(&facts("paused", gone_since(MIN)), &policy(), now());
    assert_eq!(d.class, AgentClass::Unknown);
    assert!(d.actions.is_empty());
}

#[test]
fn terminal_with_live_session_waits_for_result_or_grace() {
    let mut f = facts("completed", alive());
    f.finished_at = Some(now() - Duration::from_secs(5));
    assert!(decide(&f, &policy(), now()).actions.is_empty());
    f.stream_end = StreamEnd::Result { is_error: false };
    assert_eq!(
        decide(&f, &policy(), now()).actions,
        vec![Action::Stop {
            reason: StopReason::Finished
        }]
    );
    f.stream_end = StreamEnd::NoResult;
    f.finished_at = Some(now() - 2 * MIN);
    assert_eq!(decide(&f, &policy(), now()).actions.len(), 1);
}

#[test]
fn a_live_writer_of_its_log_keeps_an_agent_from_being_a_zombie() {
    // Every pane exited, but `tee` (or a helper) still writes the stream log.
    let mut f = facts("working", alive());
    f.session = SessionFact::Alive {
        panes_exited: true,
        window_activity: Some(now() - MIN),
    };
    f.live_writers = 1;
    assert_eq!(decide(&f, &policy(), now()).class, AgentClass::Active);
    f.live_writers = 0;
    assert_eq!(decide(&f, &policy(), now()).class, AgentClass::Zombie);
    // Session gone long ago, a writer still at it: not a zombie either.
    let mut f = facts("working", gone_since(60 * MIN));
    f.live_writers = 1;
    let d = decide(&f, &policy(), now());
    assert_eq!(d.class, AgentClass::Active);
    assert!(d.actions.is_empty());
}

#[test]
fn terminal_with_leftover_processes_stops_them_first() {
    let mut f = facts("completed", gone_since(MIN));
    f.live_processes = 2;
    assert_eq!(
        decide(&f, &policy(), now()).actions,
        vec![Action::Stop {
            reason: StopReason::Finished
        }]
    );
}

#[test]
fn stale_agent_is_stopped_and_terminated() {
    let mut f = facts("working", alive());
    f.last_update = Some(now() - 200 * MIN);
    f.logs[0].mtime = Some(now() - 120 * MIN);
    f.session = SessionFact::Alive {
        panes_exited: false,
        window_activity: Some(now() - 111 * MIN),
    };
    f.live_processes = 3;
    let d = decide(&f, &policy(), now());
    assert_eq!(d.class, AgentClass::Stale);
    assert_eq!(
        d.actions,
        vec![
            Action::Stop {
                reason: StopReason::InactivityTimeout
            },
            Action::SetStatus {
                status: "terminated",
                termination_reason: Some("inactivity_timeout")
            }
        ]
    );
    // Any recent sign of life keeps it.
    f.logs[0].mtime = Some(now() - MIN);
    assert_eq!(decide(&f, &policy(), now()).class, AgentClass::Active);
}

#[test]
fn session_whose_panes_exited_is_a_zombie() {
    let f = facts(
        "working",
        SessionFact::Alive {
            panes_exited: true,
            window_activity: Some(now()),
        },
    );
    let d = decide(&f, &policy(), now());
    assert_eq!(d.class, AgentClass::Zombie);
    assert!(d.actions.contains(&Action::SetStatus {
        status: "terminated",
        termination_reason: Some("process_exited")
    }));
}

#[test]
fn settling_logs_hold_back_the_record() {
    let mut f = facts("completed", gone_since(MIN));
    f.logs.push(FileFact {
        path: Path::new("/w/TASK-1/logs/a_stream.jsonl").into(),
        state: FileState::Recent("written 1s ago".into()),
        mtime: Some(now()),
    });
    let d = decide(&f, &policy(), now());
    assert!(!d.actions.contains(&Action::RecordCleanup));
    assert!(d.waiting.unwrap().contains("a_stream.jsonl"));
}

#[test]
fn cleaned_agent_needs_nothing() {
    let mut f = facts("completed", gone_since(MIN));
    f.cleanup_recorded = true;
    f.logs.clear();
    f.prompt = None;
    let d = decide(&f, &policy(), now());
    assert_eq!(d.class, AgentClass::Cleaned);
    assert!(d.actions.is_empty());
    // Not yet recorded: record once.
    f.cleanup_recorded = false;
    assert_eq!(
        decide(&f, &policy(), now()).actions,
        vec![Action::RecordCleanup]
    );
}

#[test]
fn prompt_kept_when_configured() {
    let mut p = policy();
    p.delete_prompt_files = false;
    let d = decide(&facts("completed", gone_since(MIN)), &p, now());
    assert!(
        !d.actions
            .iter()
            .any(|a| matches!(a, Action::DeletePrompt { .. }))
    );
}

#[test]
fn orphans_are_killed_only_when_configured_and_idle() {
    let mut p = policy();
    assert!(!decide_orphan(Some(now() - 200 * MIN), &p, now()));
    p.kill_orphan_sessions = true;
    assert!(decide_orphan(Some(now() - 200 * MIN), &p, now()));
    assert!(!decide_orphan(Some(now() - MIN), &p, now()));
}

/// One name per printed enum: what `as_str` gives is what JSON says.
#[test]
fn names_in_text_and_json_agree() {
    for class in AgentClass::ALL {
        assert_eq!(serde_json::to_value(class).unwrap(), class.as_str());
    }
    for reason in [
        StopReason::Finished,
        StopReason::InactivityTimeout,
        StopReason::ProcessExited,
    ] {
        assert_eq!(serde_json::to_value(reason).unwrap(), reason.as_str());
    }
    let actions = [
        Action::Stop {
            reason: StopReason::Finished,
        },
        Action::SetStatus {
            status: "failed",
            termination_reason: None,
        },
        Action::Archive {
            path: Path::new("a").into(),
        },
        Action::DeletePrompt {
            path: Path::new("p").into(),
        },
        Action::RecordCleanup,
    ];
    for action in actions {
        assert_eq!(
            serde_json::to_value(&action).unwrap()["action"],
            action.as_str()
        );
    }
}

fn zombie(status: &'static str, reason: Option<&'static str>) -> Decision {
    Decision {
        class: AgentClass::Zombie,
        actions: vec![
            Action::SetStatus {
                status,
                termination_reason: reason,
            },
            Action::RecordCleanup,
        ]
        .into(),
        waiting: None,
        recheck: None,
    }
}

#[test]
fn the_sqlite_generation_marks_dead_and_stuck_agents_failed_and_keeps_the_reason() {
    for reason in ["session_not_found", "inactivity_timeout", "process_exited"] {
        let d = for_backend(Backend::Sqlite, zombie("terminated", Some(reason)));
        assert_eq!(d, zombie("failed", Some(reason)));
        // The JSON generation keeps its own word.
        let d = for_backend(Backend::Json, zombie("terminated", Some(reason)));
        assert_eq!(d, zombie("terminated", Some(reason)));
    }
    // A result line's verdict is the same in both.
    assert_eq!(
        for_backend(Backend::Sqlite, zombie("completed", None)),
        zombie("completed", None)
    );
}

/// The actions the rules make for an agent take a byte each (a pass holds every agent's
/// until its report is out); any action reads back as it was, in order.
#[test]
fn the_rules_actions_pack_to_a_byte_and_every_action_reads_back() {
    let id = crate::model::AgentId::parse("agent-3").unwrap();
    let mut made = vec![Action::Stop {
        reason: StopReason::ProcessExited,
    }];
    for (status, reason) in [
        ("completed", None),
        ("failed", None),
        ("terminated", Some("session_not_found")),
        ("terminated", Some("process_exited")),
        ("terminated", Some("inactivity_timeout")),
    ] {
        made.push(Action::SetStatus {
            status,
            termination_reason: reason,
        });
        let failed = for_backend(
            Backend::Sqlite,
            Decision {
                class: AgentClass::Zombie,
                actions: vec![made.last().unwrap().clone()].into(),
                waiting: None,
                recheck: None,
            },
        );
        assert_eq!(failed.actions.kept_whole(), 0, "{failed:?}");
    }
    for which in crate::agent_file::LogKind::ALL.map(Some) {
        let path = TaskPath::from(crate::agent_file::AgentFile::new(&id, which));
        made.push(Action::Archive { path });
    }
    made.push(Action::DeletePrompt {
        path: TaskPath::from(crate::agent_file::AgentFile::new(&id, None)),
    });
    made.push(Action::RecordCleanup);
    for reason in [StopReason::Finished, StopReason::InactivityTimeout] {
        made.push(Action::Stop { reason });
    }
    let list = Actions::from(made.clone());
    assert_eq!(list, made);
    let usual = Actions::from(made[6..11].to_vec());
    assert_eq!(usual.kept_whole(), 0, "{usual:?}");
    // A path not the agent's own file, and a status change the rules never make: whole.
    let odd = vec![
        Action::Archive {
            path: TaskPath::from("logs/other.jsonl"),
        },
        Action::SetStatus {
            status: "cancelled",
            termination_reason: None,
        },
        Action::RecordCleanup,
    ];
    let list = Actions::from(odd.clone());
    assert_eq!((list.kept_whole(), list.to_vec()), (2, odd));
}
