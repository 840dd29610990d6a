//! Whole passes against fakes: scripted processes and tmux sessions and a clock that only
//! moves when told, over real task folders on disk (the file layer is the real one). No
//! tmux, no real process, no sleep.

use super::clock::Clock;
use super::events::PassEvent;
use super::fakes::FakeClock;
use super::pass::{Mode, PassReport, Reaper};
use crate::config::Config;
use crate::decide::AgentClass;
use crate::journal::Journal;
use crate::model::format_timestamp;
use crate::procs::fakes::{FakeProcesses, FakeTmux};
use serde_json::{Value, json};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

const TASK: &str = "TASK-20261127-120000-0a0b0c0d";
const OTHER_TASK: &str = "TASK-20261127-120500-0e0f1011";
const SETTLE: Duration = Duration::from_secs(2);
const ZOMBIE_GRACE: Duration = Duration::from_secs(10);
const HOUR: Duration = Duration::from_secs(3600);

/// A workspace base and state dir on disk, and the fakes a pass runs against.
struct Bench {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    state: PathBuf,
    clock: FakeClock,
    procs: FakeProcesses,
    tmux: FakeTmux,
}

impl Bench {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("workspace");
        let state = tmp.path().join("state");
        fs::create_dir_all(&base).unwrap();
        fs::create_dir_all(&state).unwrap();
        Bench {
            _tmp: tmp,
            base,
            state,
            clock: FakeClock::at(SystemTime::now()),
            procs: FakeProcesses::default(),
            tmux: FakeTmux::default(),
        }
    }

    fn ago(&self, d: Duration) -> SystemTime {
        self.clock.now() - d
    }

    fn task_dir(&self, task: &str) -> PathBuf {
        self.base.join(task)
    }

    /// An agent entry as the orchestrator writes it, last updated at `last_update`.
    fn agent(&self, id: &str, status: &str, last_update: SystemTime) -> Value {
        let mut entry = json!({
            "id": id,
            "type": id.split('-').next().unwrap(),
            "tmux_session": format!("agent_{id}"),
            "status": status,
            "started_at": format_timestamp(last_update - HOUR),
            "last_update": format_timestamp(last_update),
            "prompt": "You are a test agent.",
        });
        if status == "completed" {
            entry["completed_at"] = json!(format_timestamp(last_update));
        }
        entry
    }

    /// Writes the task registry (`json.dump(indent=2)` shape, counts as the orchestrator keeps them).
    fn task(&self, task: &str, agents: Vec<Value>) {
        let dir = self.task_dir(task);
        for sub in ["logs", "progress", "findings"] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let active = agents.iter().filter(|a| a["status"] == "working").count();
        let root = json!({
            "task_id": task,
            "workspace": dir.to_string_lossy(),
            "status": "INITIALIZED",
            "total_spawned": agents.len(),
            "active_count": active,
            "completed_count": agents.len() - active,
            "agents": agents,
        });
        fs::write(
            dir.join("AGENT_REGISTRY.json"),
            serde_json::to_string_pretty(&root).unwrap(),
        )
        .unwrap();
    }

    /// A file below the task folder holding `text`, last modified at `mtime`.
    fn file(&self, task: &str, rel: &str, text: &str, mtime: SystemTime) -> PathBuf {
        let path = self.task_dir(task).join(rel);
        fs::write(&path, text).unwrap();
        fs::File::options()
            .append(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        path
    }

    fn registry(&self, task: &str) -> Value {
        let text = fs::read_to_string(self.task_dir(task).join("AGENT_REGISTRY.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn entry(&self, task: &str, id: &str) -> Value {
        let registry = self.registry(task);
        registry["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == id)
            .cloned()
            .unwrap()
    }

    /// A reaper wired to the fakes, with a journal in the state dir (as `once` and the
    /// daemon have): what a restart makes, too.
    fn reaper(&self) -> Reaper {
        let config = Config {
            workspace_bases: vec![self.base.clone()],
            state_dir: Some(self.state.clone()),
            settle: SETTLE,
            zombie_grace: ZOMBIE_GRACE,
            ..Config::default()
        };
        let mut reaper = Reaper::new(config, Box::new(self.tmux.clone()));
        reaper.procs = Box::new(self.procs.clone());
        reaper.clock = Box::new(self.clock.clone());
        reaper.journal = Some(Mutex::new(Journal::open(&self.state).unwrap().0));
        reaper
    }
}

/// A daemon pass: logs not yet settled are left for a later one.
fn pass(reaper: &mut Reaper) -> PassReport {
    reaper.run(Mode::Execute {
        wait_for_settle: false,
    })
}

fn agent_report<'r>(report: &'r PassReport, id: &str) -> &'r super::pass::AgentReport {
    report
        .tasks
        .iter()
        .flat_map(|t| &t.agents)
        .find(|a| a.id == id)
        .unwrap_or_else(|| panic!("{id} not in the report: {report:#?}"))
}

fn archive_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir.join("archive"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

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
                from: format!("progress/{id}_progress.jsonl"),
                to: format!("archive/{id}_progress.jsonl"),
            },
            PassEvent::PromptDeleted {
                path: format!("agent_prompt_{id}.txt")
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

const SECOND: Duration = Duration::from_secs(1);

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
                from: format!("progress/{id}_progress.jsonl"),
                to: format!("archive/{id}_progress.jsonl"),
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
        agent.done[0],
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
    assert!(matches!(agent.done[..], [PassEvent::Archived { .. }]));
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
        matches!(agent.done[..], [PassEvent::Archived { .. }]),
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
        agent_report(&first, id).done[..],
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
            from: rel.clone(),
            to: format!("archive/{id}_progress.jsonl"),
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
            agent.done[..],
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
