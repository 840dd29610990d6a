//! Whole passes against fakes, the lifecycle: finished, zombie, stale, settling, late
//! bytes, a crash between archive and record. No tmux, no real process, no sleep.

use super::events::{PassEvent, TaskEvent};
use super::pass::Mode;
use super::pass_fixture_tests::*;
use crate::decide::AgentClass;
use serde_json::json;
use std::fs;
use std::time::Duration;

/// A finished agent whose session still runs: its process is stopped, its session
/// killed, then its settled log archived, its prompt deleted and the cleanup recorded;
/// the next pass has nothing left to do.
#[test]
fn finished_agent_is_stopped_archived_and_recorded_once() {
    let b = Bench::new();
    let id = "finisher-120001-0a0b0c";
    b.task(TASK, vec![b.agent(id, "completed", b.ago(5 * 60 * SECOND))]);
    let log = b.file(
        TASK,
        &format!("progress/{id}_progress.jsonl"),
        "{\"p\":1}\n",
        b.ago(HOUR),
    );
    let prompt = b.file(
        TASK,
        &format!("agent_prompt_{id}.txt"),
        "prompt",
        b.ago(HOUR),
    );
    let pane = b.procs.spawn(0, &["claude", "--print"]);
    b.tmux
        .add_session(&format!("agent_{id}"), &[pane.pid], b.ago(HOUR));
    let mut reaper = b.reaper();

    let report = pass(&mut reaper);

    let agent = agent_report(&report, id);
    assert_eq!(agent.class, AgentClass::Finished);
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
                session: format!("agent_{id}")
            },
            PassEvent::Archived {
                from: format!("progress/{id}_progress.jsonl").into(),
                to: format!("archive/{id}_progress.jsonl").into(),
            },
            PassEvent::PromptDeleted {
                path: format!("agent_prompt_{id}.txt").into()
            },
        ]
    );
    assert_eq!(b.procs.signalled(), [pane.pid]);
    assert!(!b.procs.is_alive(pane.pid));
    assert_eq!(b.tmux.killed(), [format!("agent_{id}")]);
    assert!(!log.exists() && !prompt.exists());
    assert_eq!(
        archive_names(&b.task_dir(TASK)),
        [format!("{id}_progress.jsonl")]
    );
    let record = &b.entry(TASK, id)["auto_cleanup_result"];
    assert_eq!(record["success"], true, "{record}");
    assert_eq!(record["tmux_session_killed"], true);
    assert_eq!(record["verified_no_zombies"], true);
    assert_eq!(record["archived_files"].as_array().unwrap().len(), 1);
    // The record still counts the logs whose writers were looked for, after the pass let
    // their identities go (`DecidedAgent::logs_watched`).
    let checked = record["processes_checked"].to_string();
    assert!(checked.contains("writers of 1 log(s)"), "{record}");
    assert_eq!((report.totals.stopped, report.totals.cleaned), (1, 1));
    // `--json` carries the events by name, with their fields.
    let json = serde_json::to_value(&report).unwrap();
    let done = &json["tasks"][0]["agents"][0]["done"];
    assert_eq!(done[0]["event"], "stopped");
    assert_eq!(done[2]["event"], "archived");
    assert_eq!(done[2]["to"], format!("archive/{id}_progress.jsonl"));

    let again = pass(&mut reaper);
    let agent = agent_report(&again, id);
    assert_eq!(agent.class, AgentClass::Cleaned);
    assert!(agent.done.is_empty() && agent.actions.is_empty());
    assert_eq!(b.tmux.killed().len(), 1, "killed once");
}

/// A working agent whose session is gone is a zombie only after `zombie_grace` of the
/// clock: the first pass waits, the one after the grace marks, archives and records.
#[test]
fn zombie_is_marked_only_after_zombie_grace_on_the_clock() {
    let b = Bench::new();
    let id = "ghost-120002-0a0b0c";
    b.task(TASK, vec![b.agent(id, "working", b.ago(SECOND))]);
    let log = b.file(
        TASK,
        &format!("progress/{id}_progress.jsonl"),
        "{}\n",
        b.ago(HOUR),
    );
    let mut reaper = b.reaper();
    let before = fs::read(b.task_dir(TASK).join("AGENT_REGISTRY.json")).unwrap();

    let first = pass(&mut reaper);
    let agent = agent_report(&first, id);
    assert_eq!(agent.class, AgentClass::Settling);
    assert!(
        agent.waiting.as_deref().unwrap().contains("zombie_grace"),
        "{:?}",
        agent.waiting
    );
    assert!(agent.done.is_empty());
    assert!(log.exists());
    assert_eq!(
        fs::read(b.task_dir(TASK).join("AGENT_REGISTRY.json")).unwrap(),
        before,
        "nothing written while the grace runs"
    );

    b.clock.advance(ZOMBIE_GRACE);
    let second = pass(&mut reaper);
    let agent = agent_report(&second, id);
    assert_eq!(agent.class, AgentClass::Zombie);
    assert_eq!(
        agent.done,
        [
            PassEvent::Archived {
                from: format!("progress/{id}_progress.jsonl").into(),
                to: format!("archive/{id}_progress.jsonl").into(),
            },
            PassEvent::Marked {
                status: "terminated",
                reason: Some("session_not_found")
            },
        ]
    );
    let entry = b.entry(TASK, id);
    assert_eq!(entry["status"], "terminated");
    assert_eq!(entry["auto_cleanup_result"]["success"], true);
    assert_eq!(second.totals.zombies, 1);
    assert!(b.procs.signalled().is_empty() && b.tmux.killed().is_empty());
}

/// A working agent idle past `max_inactivity` with its session alive: its whole process
/// tree is stopped, the session killed, and it is marked terminated for inactivity.
#[test]
fn stale_agent_is_stopped_with_its_tree_and_marked_for_inactivity() {
    let b = Bench::new();
    let id = "sleeper-120003-0a0b0c";
    b.task(TASK, vec![b.agent(id, "working", b.ago(3 * HOUR))]);
    b.file(
        TASK,
        &format!("progress/{id}_progress.jsonl"),
        "{}\n",
        b.ago(3 * HOUR),
    );
    let pane = b.procs.spawn(0, &["claude"]);
    let child = b.procs.spawn(pane.pid, &["node", "tool.js"]);
    let bystander = b.procs.spawn(0, &["vim", "notes.txt"]);
    b.tmux
        .add_session(&format!("agent_{id}"), &[pane.pid], b.ago(3 * HOUR));
    let mut reaper = b.reaper();

    let report = pass(&mut reaper);

    let agent = agent_report(&report, id);
    assert_eq!(agent.class, AgentClass::Stale);
    assert!(agent.errors.is_empty(), "{:?}", agent.errors);
    assert_eq!(
        agent.done.to_vec()[0],
        PassEvent::Stopped {
            processes: 2,
            joined: 0,
            escalated: false
        }
    );
    assert!(agent.done.contains(&PassEvent::Marked {
        status: "terminated",
        reason: Some("inactivity_timeout")
    }));
    let mut signalled = b.procs.signalled();
    signalled.sort();
    assert_eq!(signalled, [pane.pid, child.pid]);
    assert!(
        b.procs.is_alive(bystander.pid),
        "not the agent's: left alone"
    );
    assert!(!b.tmux.has_session(&format!("agent_{id}")));
    let entry = b.entry(TASK, id);
    assert_eq!(entry["status"], "terminated");
    assert_eq!(entry["auto_cleanup_result"]["verified_no_zombies"], true);
    assert_eq!(report.totals.stale, 1);
}

/// A log written moments ago is left while it settles (nothing recorded yet), and
/// archived by the first pass after `settle` has passed on the clock.
#[test]
fn settling_log_is_left_then_archived_once_the_clock_passes_settle() {
    let b = Bench::new();
    let id = "writer-120004-0a0b0c";
    b.task(TASK, vec![b.agent(id, "completed", b.ago(5 * 60 * SECOND))]);
    let now = b.ago(Duration::ZERO);
    let log = b.file(TASK, &format!("progress/{id}_progress.jsonl"), "{}\n", now);
    let mut reaper = b.reaper();

    let first = pass(&mut reaper);
    let agent = agent_report(&first, id);
    assert_eq!(agent.class, AgentClass::Settling);
    assert!(
        agent.waiting.as_deref().unwrap().starts_with("settling: "),
        "{:?}",
        agent.waiting
    );
    assert_eq!(agent.recheck, Some(SETTLE));
    assert!(agent.done.is_empty() && log.exists());
    assert!(b.entry(TASK, id).get("auto_cleanup_result").is_none());

    b.clock.advance(SETTLE);
    let second = pass(&mut reaper);
    let agent = agent_report(&second, id);
    assert_eq!(agent.class, AgentClass::Finished);
    assert!(matches!(
        agent.done.to_vec()[..],
        [PassEvent::Archived { .. }]
    ));
    assert!(!log.exists());
    assert_eq!(b.entry(TASK, id)["auto_cleanup_result"]["success"], true);
}

/// `once` waits for a settling log within its pass: through the clock, which a fake
/// moves instead of sleeping.
#[test]
fn once_waits_for_settle_through_the_clock() {
    let b = Bench::new();
    let id = "writer-120005-0a0b0c";
    b.task(TASK, vec![b.agent(id, "completed", b.ago(5 * 60 * SECOND))]);
    let now = b.ago(Duration::ZERO);
    b.file(TASK, &format!("progress/{id}_progress.jsonl"), "{}\n", now);
    let mut reaper = b.reaper();

    let report = reaper.run(Mode::Execute {
        wait_for_settle: true,
    });

    let agent = agent_report(&report, id);
    assert!(
        matches!(agent.done.to_vec()[..], [PassEvent::Archived { .. }]),
        "{agent:?}"
    );
    let waited = b.ago(Duration::ZERO).duration_since(now).unwrap();
    assert!(waited >= SETTLE && waited <= SETTLE + SECOND, "{waited:?}");
}

/// Bytes written to a log after it was archived are appended to that one archive
/// (journaled), never a second archive, and the record keeps listing one file.
#[test]
fn late_bytes_are_appended_to_the_one_archive() {
    let b = Bench::new();
    let id = "chatty-120006-0a0b0c";
    b.task(TASK, vec![b.agent(id, "completed", b.ago(HOUR))]);
    let rel = format!("progress/{id}_progress.jsonl");
    b.file(TASK, &rel, "{\"line\":1}\n", b.ago(HOUR));
    let mut reaper = b.reaper();
    let first = pass(&mut reaper);
    assert!(matches!(
        agent_report(&first, id).done.to_vec()[..],
        [PassEvent::Archived { .. }]
    ));

    // The agent's `open('a')` recreates the log after the archive.
    let log = b.file(TASK, &rel, "{\"line\":2}\n", b.ago(HOUR));
    let second = pass(&mut reaper);

    let agent = agent_report(&second, id);
    assert!(agent.errors.is_empty(), "{:?}", agent.errors);
    assert_eq!(
        agent.done,
        [PassEvent::Appended {
            bytes: 11,
            from: rel.clone().into(),
            to: format!("archive/{id}_progress.jsonl").into(),
        }]
    );
    assert!(!log.exists());
    assert_eq!(
        archive_names(&b.task_dir(TASK)),
        [format!("{id}_progress.jsonl")]
    );
    let archived = fs::read_to_string(
        b.task_dir(TASK)
            .join("archive")
            .join(format!("{id}_progress.jsonl")),
    )
    .unwrap();
    assert_eq!(archived, "{\"line\":1}\n{\"line\":2}\n");
    let record = &b.entry(TASK, id)["auto_cleanup_result"];
    assert_eq!(
        record["archived_files"].as_array().unwrap().len(),
        1,
        "{record}"
    );
}

/// Cleaned agents with nothing present are kept as ids only (see `observe::quiet`): one
/// whose log reappears still gets its late bytes appended, the others stay reported as
/// cleaned, in registry order, with nothing done.
#[test]
fn a_cleaned_agent_whose_log_reappears_is_handled_among_quiet_ones() {
    let b = Bench::new();
    let ids = [
        "quiet-120001-0a0b0c",
        "chatty-120006-0a0b0c",
        "quiet-120002-0a0b0c",
    ];
    b.task(
        TASK,
        ids.iter()
            .map(|id| b.agent(id, "completed", b.ago(HOUR)))
            .collect(),
    );
    let rel = format!("progress/{}_progress.jsonl", ids[1]);
    b.file(TASK, &rel, "{\"line\":1}\n", b.ago(HOUR));
    let mut reaper = b.reaper();
    let first = pass(&mut reaper);
    assert!(
        ids.iter()
            .all(|id| b.entry(TASK, id)["auto_cleanup_result"]["success"] == true)
    );
    assert_eq!(first.totals.agents_seen, 3);

    b.file(TASK, &rel, "{\"line\":2}\n", b.ago(HOUR));
    let second = pass(&mut reaper);
    let listed: Vec<&str> = second.tasks[0]
        .agents
        .iter()
        .map(|a| a.id.as_str())
        .collect();
    assert_eq!(listed, ids);
    assert_eq!(second.totals.agents_seen, 3);
    assert!(matches!(
        agent_report(&second, ids[1]).done.to_vec()[..],
        [PassEvent::Appended { bytes: 11, .. }]
    ));
    for quiet in [ids[0], ids[2]] {
        let r = agent_report(&second, quiet);
        assert_eq!(r.class, AgentClass::Cleaned);
        assert!(
            r.done.is_empty() && r.actions.is_empty() && r.errors.is_empty(),
            "{r:?}"
        );
        assert_eq!(r.status, "completed");
    }
}

/// A pass that dies between moving a log into its archive and recording it leaves the
/// archive and no record; the next reaper (a restart) records the archive as archived,
/// without moving or copying anything again.
#[test]
fn crash_between_archive_and_record_is_recorded_by_the_next_pass() {
    let b = Bench::new();
    let id = "crasher-120007-0a0b0c";
    b.task(TASK, vec![b.agent(id, "completed", b.ago(HOUR))]);
    b.file(
        TASK,
        &format!("progress/{id}_progress.jsonl"),
        "{\"p\":1}\n",
        b.ago(HOUR),
    );
    crate::failpoint::arm(crate::failpoint::AFTER_ARCHIVE, &b.task_dir(TASK));
    let mut dying = b.reaper();

    let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pass(&mut dying)));

    assert!(crashed.is_err(), "the failpoint did not fire");
    drop(dying);
    let archive = b
        .task_dir(TASK)
        .join("archive")
        .join(format!("{id}_progress.jsonl"));
    assert!(archive.exists(), "archived before the crash");
    assert!(b.entry(TASK, id).get("auto_cleanup_result").is_none());

    let report = pass(&mut b.reaper());

    let agent = agent_report(&report, id);
    assert!(agent.errors.is_empty(), "{:?}", agent.errors);
    assert!(
        agent.done.is_empty(),
        "nothing moved again: {:?}",
        agent.done
    );
    let record = &b.entry(TASK, id)["auto_cleanup_result"];
    assert_eq!(record["success"], true, "{record}");
    assert_eq!(
        record["archived_files"],
        json!([archive.to_string_lossy()]),
        "the record lists the archive the crashed pass made"
    );
    assert_eq!(fs::read_to_string(&archive).unwrap(), "{\"p\":1}\n");
    assert_eq!(report.totals.cleaned, 1);
}

/// A backlog in one task (its file work split over threads, earlier archives found by one
/// listing of the archive folder): every agent is archived, its prompt deleted and its
/// cleanup recorded; a log archived by an earlier pass is listed in its agent's record,
/// and a log whose archive already exists is appended to it, never a second file.
#[test]
fn a_backlog_task_is_archived_and_recorded_whole() {
    let b = Bench::new();
    let ids: Vec<String> = (0..600).map(|a| format!("backlog-{a:06}-0a0b0c")).collect();
    b.task(
        TASK,
        ids.iter()
            .map(|id| b.agent(id, "completed", b.ago(HOUR)))
            .collect(),
    );
    for id in &ids {
        b.file(
            TASK,
            &format!("progress/{id}_progress.jsonl"),
            "p\n",
            b.ago(HOUR),
        );
        b.file(
            TASK,
            &format!("agent_prompt_{id}.txt"),
            "prompt",
            b.ago(HOUR),
        );
    }
    let archive = b.task_dir(TASK).join("archive");
    fs::create_dir_all(&archive).unwrap();
    // Agent 5's findings were archived by a pass that died before recording them.
    let earlier = archive.join(format!("{}_findings.jsonl", ids[5]));
    fs::write(&earlier, "f\n").unwrap();
    // Agent 7's progress log was archived before and written again since.
    let taken = archive.join(format!("{}_progress.jsonl", ids[7]));
    fs::write(&taken, "old\n").unwrap();

    let report = pass(&mut b.reaper());

    assert_eq!(report.totals.cleaned, 600, "{:?}", report.errors);
    for id in &ids {
        let record = &b.entry(TASK, id)["auto_cleanup_result"];
        assert_eq!(record["success"], true, "{id}: {record}");
        assert_eq!(record["prompt_file_deleted"], true, "{id}: {record}");
        assert!(
            !b.task_dir(TASK)
                .join(format!("agent_prompt_{id}.txt"))
                .exists()
        );
        assert!(
            !b.task_dir(TASK)
                .join(format!("progress/{id}_progress.jsonl"))
                .exists()
        );
    }
    let listed = b.entry(TASK, &ids[5])["auto_cleanup_result"]["archived_files"].clone();
    assert_eq!(
        listed,
        json!([
            archive
                .join(format!("{}_progress.jsonl", ids[5]))
                .to_string_lossy(),
            earlier.to_string_lossy()
        ])
    );
    assert_eq!(fs::read_to_string(&taken).unwrap(), "old\np\n");
    assert_eq!(
        archive_names(&b.task_dir(TASK)).len(),
        601,
        "one archive per log"
    );
}

/// A finished agent a pass only planned for is still to clean: `plan` does not read its
/// registry again for the steady-state cache (only to be refused), `once` cleans it and
/// then caches the task.
#[test]
fn only_a_pass_that_acted_looks_again_at_a_task_of_finished_agents() {
    let b = Bench::new();
    let id = "planned-120001-0a0b0c";
    b.task(TASK, vec![b.agent(id, "completed", b.ago(HOUR))]);
    b.file(
        TASK,
        &format!("progress/{id}_progress.jsonl"),
        "p\n",
        b.ago(HOUR),
    );
    let mut reaper = b.reaper();

    let plan = reaper.run(Mode::Plan);
    assert_eq!(agent_report(&plan, id).class, AgentClass::Finished);
    assert!(
        !reaper.clean_tasks.was_refused(&b.task_dir(TASK)),
        "plan looked again at a task it left as it was"
    );

    let report = pass(&mut reaper);
    assert_eq!(report.totals.cleaned, 1, "{:?}", report.errors);
    assert!(
        reaper.clean_tasks.get(&b.task_dir(TASK)).is_some(),
        "the task once cleaned is cached"
    );
}

/// A registry left unparsable by a write of ours cut short (its sidecar holds the whole
/// new content) is restored from the sidecar, said so in the report and in `once`'s
/// text, and its agents are then cleaned as usual.
#[test]
fn registry_cut_short_is_restored_from_its_sidecar_and_reported() {
    let b = Bench::new();
    let id = "mender-120014-0a0b0c";
    b.task(TASK, vec![b.agent(id, "completed", b.ago(HOUR))]);
    b.file(
        TASK,
        &format!("progress/{id}_progress.jsonl"),
        "{}\n",
        b.ago(HOUR),
    );
    let registry = b.task_dir(TASK).join("AGENT_REGISTRY.json");
    let whole = fs::read(&registry).unwrap();
    fs::write(registry.with_extension("json.reaper"), &whole).unwrap();
    fs::write(&registry, &whole[..whole.len() / 2]).unwrap();
    let mut reaper = b.reaper();

    let report = pass(&mut reaper);

    assert_eq!(report.tasks[0].done, [TaskEvent::RegistryRestored]);
    assert!(!registry.with_extension("json.reaper").exists());
    let agent = agent_report(&report, id);
    assert!(
        matches!(agent.done.to_vec()[..], [PassEvent::Archived { .. }]),
        "{agent:?}"
    );
    assert_eq!(b.entry(TASK, id)["auto_cleanup_result"]["success"], true);
    let mut text = Vec::new();
    crate::cli::render::once(&report, &mut text).unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.contains("\n  registry restored from its sidecar"),
        "{text}"
    );
}

/// The orchestrator's unlocked global rewrite can put an agent's old mirror back after its
/// end was recorded. A later pass restores it even when the task is clean (skipped by the
/// steady-state cache) and the agent quiet: `active_agents` never counts it forever.
#[test]
fn a_global_mirror_put_back_is_restored_for_a_clean_task() {
    let b = Bench::new();
    let id = "mirror-120009-0a0b0c";
    b.task(TASK, vec![b.agent(id, "completed", b.ago(HOUR))]);
    fs::create_dir_all(b.base.join("registry")).unwrap();
    let global = b.base.join(crate::workspace::GLOBAL_REGISTRY);
    let put_back = || {
        let doc = json!({"total_agents_spawned": 1, "active_agents": 1,
                         "agents": {id: {"task_id": TASK, "status": "working"}}});
        fs::write(&global, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    };
    let mirror = || {
        let doc: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&global).unwrap()).unwrap();
        (
            doc["agents"][id]["status"].clone(),
            doc["active_agents"].clone(),
        )
    };
    put_back();
    let mut reaper = b.reaper();
    pass(&mut reaper);
    assert_eq!(mirror(), (json!("completed"), json!(0)));
    // Clean now: a pass with nothing new skips the task unread.
    b.clock.advance(HOUR);
    pass(&mut reaper);
    let skipped = pass(&mut reaper);
    assert!(skipped.tasks.is_empty(), "{:?}", skipped.tasks);

    put_back();
    let report = pass(&mut reaper);

    assert_eq!(report.tasks.len(), 1, "the task is read again");
    assert_eq!(mirror(), (json!("completed"), json!(0)));
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}
