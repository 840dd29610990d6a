//! The bench for unit tests of whole passes: task folders on disk in the orchestrator's
//! format (the file layer is the real one), and the fakes a pass runs against (scripted
//! processes and tmux sessions, a clock that only moves when told).

use super::clock::Clock;
use super::fakes::FakeClock;
use super::pass::{Mode, PassReport, Reaper};
use crate::config::Config;
use crate::journal::Journal;
use crate::model::format_timestamp;
use crate::procs::fakes::{FakeProcesses, FakeTmux};
use serde_json::{Value, json};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

pub(super) const TASK: &str = "TASK-20261127-120000-0a0b0c0d";
pub(super) const OTHER_TASK: &str = "TASK-20261127-120500-0e0f1011";
pub(super) const SETTLE: Duration = Duration::from_secs(2);
pub(super) const ZOMBIE_GRACE: Duration = Duration::from_secs(10);
pub(super) const HOUR: Duration = Duration::from_secs(3600);
pub(super) const SECOND: Duration = Duration::from_secs(1);

/// A workspace base and state dir on disk, and the fakes a pass runs against.
pub(super) struct Bench {
    _tmp: tempfile::TempDir,
    pub(super) base: PathBuf,
    pub(super) state: PathBuf,
    pub(super) clock: FakeClock,
    pub(super) procs: FakeProcesses,
    pub(super) tmux: FakeTmux,
}

impl Bench {
    pub(super) fn new() -> Self {
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

    pub(super) fn ago(&self, d: Duration) -> SystemTime {
        self.clock.now() - d
    }

    pub(super) fn task_dir(&self, task: &str) -> PathBuf {
        self.base.join(task)
    }

    /// An agent entry as the orchestrator writes it, last updated at `last_update`.
    pub(super) fn agent(&self, id: &str, status: &str, last_update: SystemTime) -> Value {
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
    pub(super) fn task(&self, task: &str, agents: Vec<Value>) {
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
    pub(super) fn file(&self, task: &str, rel: &str, text: &str, mtime: SystemTime) -> PathBuf {
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

    pub(super) fn registry(&self, task: &str) -> Value {
        let text = fs::read_to_string(self.task_dir(task).join("AGENT_REGISTRY.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    pub(super) fn entry(&self, task: &str, id: &str) -> Value {
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
    pub(super) fn reaper(&self) -> Reaper {
        let config = Config {
            workspace_bases: vec![self.base.clone()],
            state_dir: Some(self.state.clone()),
            settle: SETTLE,
            zombie_grace: ZOMBIE_GRACE,
            ..Config::default()
        };
        let mut reaper = Reaper::new(config, Box::new(self.tmux.clone()));
        reaper.processes = Box::new(self.procs.clone());
        reaper.clock = Box::new(self.clock.clone());
        reaper.journal = Some(Mutex::new(Journal::open(&self.state).unwrap().0));
        reaper
    }
}

/// A daemon pass: logs not yet settled are left for a later one.
pub(super) fn pass(reaper: &mut Reaper) -> PassReport {
    reaper.run(Mode::Execute {
        wait_for_settle: false,
    })
}

pub(super) fn agent_report<'r>(report: &'r PassReport, id: &str) -> &'r super::pass::AgentReport {
    report
        .tasks
        .iter()
        .flat_map(|t| &t.agents)
        .find(|a| a.id == id)
        .unwrap_or_else(|| panic!("{id} not in the report: {report:#?}"))
}

pub(super) fn archive_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir.join("archive"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
