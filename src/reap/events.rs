//! What a pass did to one agent, as typed events, each rendered once: as text (`once`, the
//! daemon's log lines), as JSON (`done[]` of `--json`) and as journald fields (`ACTION`).

use crate::agent_file::{AgentFile, Place, TaskPath};
use crate::decide::AgentClass;
use serde::Serialize;
use std::fmt;
#[cfg(test)]
use std::path::Path;
use std::path::PathBuf;

/// A path shown relative to its task folder (as the user reads it). The agent's own files
/// are kept as [`TaskPath::Agent`] (its id, shared, and two tags): an event on one holds no
/// text. 40,000 agents' events as rendered strings, beside the same paths in the record,
/// were 10 MB; as shared paths, 17 MB with the archives' paths.
#[derive(Clone, PartialEq, Eq)]
pub struct InTask {
    shown: TaskPath,
}

impl InTask {
    /// `path` (whole) as shown from `task_dir`: relative when inside it, else whole.
    #[cfg(test)]
    pub fn new(path: &Path, task_dir: &Path) -> InTask {
        InTask {
            shown: TaskPath::shown_from(path, task_dir),
        }
    }

    /// The path as shown (relative to the task folder when inside it).
    pub fn shown(&self) -> &TaskPath {
        &self.shown
    }
}

impl From<TaskPath> for InTask {
    fn from(shown: TaskPath) -> InTask {
        InTask { shown }
    }
}

impl From<&str> for InTask {
    fn from(shown: &str) -> InTask {
        InTask {
            shown: TaskPath::from(shown),
        }
    }
}

impl From<String> for InTask {
    fn from(shown: String) -> InTask {
        InTask::from(shown.as_str())
    }
}

impl fmt::Debug for InTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.shown, f)
    }
}

impl fmt::Display for InTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.shown, f)
    }
}

impl Serialize for InTask {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.shown.serialize(s)
    }
}

/// Which store held the status the orchestrator changed meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusStore {
    Registry,
    StateDb,
}

/// One thing a pass did for an agent. Paths are relative to the task folder where inside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum PassEvent {
    /// The agent's processes were signalled; `joined` of them turned up while stopping.
    Stopped {
        processes: usize,
        joined: usize,
        escalated: bool,
    },
    /// A cgroup holding only the agent's processes was killed whole.
    CgroupKilled {
        cgroup: PathBuf,
    },
    /// A process of the set was not signalled (pid reused, protected, another user's).
    LeftAlone {
        pid: i32,
        why: String,
    },
    SessionKilled {
        session: String,
    },
    /// The session ended with its last pane process, which the stop ended.
    SessionEnded {
        session: String,
    },
    /// A settled log moved into its one archive.
    Archived {
        from: InTask,
        to: InTask,
    },
    /// Bytes that reached a log after it was archived, appended to that archive.
    Appended {
        bytes: u64,
        from: InTask,
        to: InTask,
    },
    /// The log grew while being appended: tried again once it settles.
    AppendRetried {
        path: InTask,
    },
    /// An archive compressed into `path` (`<name>.zst`), verified, the original removed.
    Compressed {
        path: InTask,
        bytes_in: u64,
        bytes_out: u64,
    },
    /// The archive changed while being compressed: kept plain, tried again later.
    CompressRetried {
        path: InTask,
    },
    PromptDeleted {
        path: InTask,
    },
    /// The status moved to a terminal one, with the termination reason when there is one.
    Marked {
        status: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'static str>,
    },
    /// The orchestrator changed the status meanwhile: its word stands.
    StatusKept {
        store: StatusStore,
    },
}

impl PassEvent {
    /// Its name: the JSON `event` tag and the journald `ACTION` field.
    pub fn as_str(&self) -> &'static str {
        match self {
            PassEvent::Stopped { .. } => "stopped",
            PassEvent::CgroupKilled { .. } => "cgroup_killed",
            PassEvent::LeftAlone { .. } => "left_alone",
            PassEvent::SessionKilled { .. } => "session_killed",
            PassEvent::SessionEnded { .. } => "session_ended",
            PassEvent::Archived { .. } => "archived",
            PassEvent::Appended { .. } => "appended",
            PassEvent::AppendRetried { .. } => "append_retried",
            PassEvent::Compressed { .. } => "compressed",
            PassEvent::CompressRetried { .. } => "compress_retried",
            PassEvent::PromptDeleted { .. } => "prompt_deleted",
            PassEvent::Marked { .. } => "marked",
            PassEvent::StatusKept { .. } => "status_kept",
        }
    }
}

/// The usual events as one byte over the agent's id: a log of its own moved into the task's
/// archive under its own name, its prompt deleted, a status change the rules make, a status
/// kept.
impl crate::packed::Pack for PassEvent {
    fn pack(&self) -> Option<(u8, Option<&std::sync::Arc<str>>)> {
        match self {
            PassEvent::Archived { from, to } => match (from.shown(), to.shown()) {
                (TaskPath::Agent(from), TaskPath::Agent(to))
                    if from.place() == Place::Own && *to == from.archived(false) =>
                {
                    Some((from.code(), Some(from.id())))
                }
                _ => None,
            },
            PassEvent::PromptDeleted {
                path: InTask {
                    shown: TaskPath::Agent(file),
                },
            } => Some((AgentFile::CODES + file.code(), Some(file.id()))),
            PassEvent::Marked { status, reason } => Some((
                MARKED + crate::decide::status_change_code(status, *reason)?,
                None,
            )),
            PassEvent::StatusKept { store } => Some((
                STATUS_KEPT
                    + match store {
                        StatusStore::Registry => 0,
                        StatusStore::StateDb => 1,
                    },
                None,
            )),
            _ => None,
        }
    }

    fn unpack(code: u8, id: Option<&std::sync::Arc<str>>) -> PassEvent {
        let file = |code| AgentFile::from_code(id.expect("a file's agent"), code);
        match code {
            c if c < AgentFile::CODES => {
                let from = file(c);
                PassEvent::Archived {
                    to: TaskPath::Agent(from.archived(false)).into(),
                    from: TaskPath::Agent(from).into(),
                }
            }
            c if c < MARKED => PassEvent::PromptDeleted {
                path: TaskPath::Agent(file(c - AgentFile::CODES)).into(),
            },
            c if c < STATUS_KEPT => {
                let (status, reason) = crate::decide::status_change_of(c - MARKED);
                PassEvent::Marked { status, reason }
            }
            c => PassEvent::StatusKept {
                store: if c == STATUS_KEPT {
                    StatusStore::Registry
                } else {
                    StatusStore::StateDb
                },
            },
        }
    }
}

/// The first code of a status change, then of a status kept (two).
const MARKED: u8 = 2 * AgentFile::CODES;
const STATUS_KEPT: u8 = MARKED + crate::decide::STATUS_CHANGES;

/// What a pass did to one agent, in order (the usual events packed, see [`crate::packed`]).
pub type Events = crate::packed::PackedList<PassEvent>;

/// The text `once` prints and the daemon logs.
impl fmt::Display for PassEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PassEvent::Stopped {
                processes,
                joined,
                escalated,
            } => {
                write!(f, "stopped {processes} process(es)")?;
                if *joined > 0 {
                    write!(f, " ({joined} joined while stopping)")?;
                }
                if *escalated {
                    write!(f, ", escalated to SIGKILL")?;
                }
                Ok(())
            }
            PassEvent::CgroupKilled { cgroup } => {
                write!(f, "killed cgroup {} (cgroup.kill)", cgroup.display())
            }
            PassEvent::LeftAlone { pid, why } => write!(f, "left pid {pid} alone: {why}"),
            PassEvent::SessionKilled { session } => write!(f, "killed tmux session {session}"),
            PassEvent::SessionEnded { session } => {
                write!(f, "tmux session {session} ended with its processes")
            }
            PassEvent::Archived { from, to } => write!(f, "archived {from} -> {to}"),
            PassEvent::Appended { bytes, from, to } => {
                write!(f, "appended {bytes} late byte(s) of {from} to {to}")
            }
            PassEvent::AppendRetried { path } => write!(
                f,
                "{path} changed while being appended; retried once it settles"
            ),
            PassEvent::Compressed {
                path,
                bytes_in,
                bytes_out,
            } => write!(f, "compressed {path} ({bytes_in} -> {bytes_out} bytes)"),
            PassEvent::CompressRetried { path } => {
                write!(f, "{path} changed while being compressed; kept plain")
            }
            PassEvent::PromptDeleted { path } => write!(f, "deleted {path}"),
            PassEvent::Marked {
                status,
                reason: Some(r),
            } => write!(f, "marked {status} ({r})"),
            PassEvent::Marked {
                status,
                reason: None,
            } => write!(f, "marked {status}"),
            PassEvent::StatusKept { store } => write!(
                f,
                "{} status changed meanwhile: left as the orchestrator set it",
                match store {
                    StatusStore::Registry => "registry",
                    StatusStore::StateDb => "state DB",
                }
            ),
        }
    }
}

/// Something a pass did to a task as a whole (not to one of its agents).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum TaskEvent {
    /// A write of ours was cut short: the registry did not parse and was restored from the
    /// sidecar that held the whole new content.
    RegistryRestored,
}

impl TaskEvent {
    /// Its name: the JSON `event` tag and the journald `ACTION` field.
    pub fn as_str(&self) -> &'static str {
        match self {
            TaskEvent::RegistryRestored => "registry_restored",
        }
    }
}

impl fmt::Display for TaskEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskEvent::RegistryRestored => write!(
                f,
                "registry restored from its sidecar (a write of ours was cut short)"
            ),
        }
    }
}

/// What stopping an orphan session (an `agent_*` session no registry lists) came to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum OrphanOutcome {
    /// Its panes' processes were stopped and the session killed.
    SessionKilled { processes: usize },
    /// The session ended with its processes.
    SessionEnded { processes: usize },
    /// `kill-session` failed.
    KillFailed { processes: usize, error: String },
}

impl OrphanOutcome {
    /// Its name: the JSON `event` tag and the journald `ACTION` field.
    pub fn as_str(&self) -> &'static str {
        match self {
            OrphanOutcome::SessionKilled { .. } => "session_killed",
            OrphanOutcome::SessionEnded { .. } => "session_ended",
            OrphanOutcome::KillFailed { .. } => "kill_failed",
        }
    }
}

impl fmt::Display for OrphanOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OrphanOutcome::SessionKilled { processes } => {
                write!(f, "killed ({processes} process(es) stopped)")
            }
            OrphanOutcome::SessionEnded { processes } => {
                write!(
                    f,
                    "ended with its processes ({processes} process(es) stopped)"
                )
            }
            OrphanOutcome::KillFailed { processes, error } => {
                write!(f, "error: {error} ({processes} process(es) stopped)")
            }
        }
    }
}

/// Whose the events of a log line are: its journald `TASK_ID`, `AGENT_ID` and `REASON`.
#[derive(Debug, Clone, Copy)]
pub struct EventContext<'r> {
    pub task_id: &'r str,
    pub agent_id: &'r str,
    /// Why the pass acted on the agent: its class (`REASON=zombie`).
    pub reason: AgentClass,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent_file::AgentFile;

    /// A pass keeps every event until its report is printed: 40,000 cleaned agents hold
    /// four each, and each byte here is 160 KB there. A path in one is the agent's id
    /// (shared) and two tags, not text.
    #[test]
    fn an_event_is_small_and_a_path_in_it_holds_no_text() {
        assert!(std::mem::size_of::<PassEvent>() <= 56);
        let id = crate::model::AgentId::parse("a").unwrap();
        let log = AgentFile::new(&id, Some(crate::agent_file::LogKind::Stream));
        let event = PassEvent::Archived {
            from: TaskPath::from(log.clone()).into(),
            to: TaskPath::from(log.archived(false)).into(),
        };
        assert_eq!(
            event.to_string(),
            "archived logs/a_stream.jsonl -> archive/a_stream.jsonl"
        );
        let PassEvent::Archived { from, .. } = &event else {
            unreachable!()
        };
        assert!(matches!(from.shown(), TaskPath::Agent(_)));
        let whole = InTask::new(Path::new("/w/TASK-1/logs/b"), Path::new("/w/TASK-1"));
        assert_eq!(whole.to_string(), "logs/b");
        let outside = InTask::new(Path::new("/elsewhere/b"), Path::new("/w/TASK-1"));
        assert_eq!(outside.to_string(), "/elsewhere/b");
    }

    /// The events of an agent cleaned the usual way take a byte each; any event, packed or
    /// not, reads back as it was, in order.
    #[test]
    fn the_usual_events_pack_to_a_byte_and_every_event_reads_back() {
        let id = crate::model::AgentId::parse("agent-9").unwrap();
        let mut usual = Vec::new();
        for kind in crate::agent_file::LogKind::ALL {
            let log = AgentFile::new(&id, Some(kind));
            usual.push(PassEvent::Archived {
                from: TaskPath::from(log.clone()).into(),
                to: TaskPath::from(log.archived(false)).into(),
            });
        }
        usual.push(PassEvent::PromptDeleted {
            path: TaskPath::from(AgentFile::new(&id, None)).into(),
        });
        usual.push(PassEvent::Marked {
            status: "terminated",
            reason: Some("session_not_found"),
        });
        let list = Events::from(usual.clone());
        assert_eq!(list.kept_whole(), 0, "{list:?}");
        assert_eq!(list, usual);
        let mut all = every_event();
        all.insert(2, usual[0].clone());
        // Archived elsewhere (`archive_dir`), or under another name: kept whole.
        all.push(PassEvent::Archived {
            from: TaskPath::from(AgentFile::new(
                &id,
                Some(crate::agent_file::LogKind::Stream),
            ))
            .into(),
            to: "/elsewhere/agent-9_stream.jsonl".into(),
        });
        all.push(usual[4].clone());
        let list = Events::from(all.clone());
        assert_eq!(list.to_vec(), all);
        assert_eq!(
            serde_json::to_value(&list).unwrap(),
            serde_json::to_value(&all).unwrap()
        );
    }

    fn every_event() -> Vec<PassEvent> {
        vec![
            PassEvent::Stopped {
                processes: 3,
                joined: 1,
                escalated: true,
            },
            PassEvent::CgroupKilled {
                cgroup: "/sys/fs/cgroup/a.scope".into(),
            },
            PassEvent::LeftAlone {
                pid: 42,
                why: "pid reused".into(),
            },
            PassEvent::SessionKilled {
                session: "agent_a".into(),
            },
            PassEvent::SessionEnded {
                session: "agent_a".into(),
            },
            PassEvent::Archived {
                from: "progress/a.jsonl".into(),
                to: "archive/a.jsonl".into(),
            },
            PassEvent::Appended {
                bytes: 7,
                from: "progress/a.jsonl".into(),
                to: "archive/a.jsonl".into(),
            },
            PassEvent::AppendRetried {
                path: "progress/a.jsonl".into(),
            },
            PassEvent::Compressed {
                path: "archive/a_stream.jsonl.zst".into(),
                bytes_in: 100,
                bytes_out: 10,
            },
            PassEvent::CompressRetried {
                path: "archive/a_stream.jsonl".into(),
            },
            PassEvent::PromptDeleted {
                path: "agent_prompt_a.txt".into(),
            },
            PassEvent::Marked {
                status: "terminated",
                reason: Some("session_not_found"),
            },
            PassEvent::StatusKept {
                store: StatusStore::StateDb,
            },
        ]
    }

    fn every_orphan_outcome() -> Vec<OrphanOutcome> {
        vec![
            OrphanOutcome::SessionKilled { processes: 2 },
            OrphanOutcome::SessionEnded { processes: 1 },
            OrphanOutcome::KillFailed {
                processes: 0,
                error: "tmux did not answer".into(),
            },
        ]
    }

    #[test]
    fn the_json_tag_and_the_journald_action_are_one_name() {
        for event in every_event() {
            let json = serde_json::to_value(&event).unwrap();
            assert_eq!(json["event"], event.as_str(), "{json}");
        }
        for outcome in every_orphan_outcome() {
            let json = serde_json::to_value(&outcome).unwrap();
            assert_eq!(json["event"], outcome.as_str(), "{json}");
        }
        let restored = serde_json::to_value(TaskEvent::RegistryRestored).unwrap();
        assert_eq!(restored["event"], TaskEvent::RegistryRestored.as_str());
    }

    /// An event's path reads relative to its own task folder only: a sibling folder whose
    /// name starts with the task's (`TASK-1` and `TASK-10`) and an archive folder outside
    /// the task are shown whole, in text and in JSON alike.
    #[test]
    fn a_path_in_an_event_reads_from_its_task_folder_only() {
        let task = Path::new("/ws/TASK-1");
        let shown = |p: &str| {
            let at = InTask::new(Path::new(p), task);
            let json = serde_json::to_value(&at).unwrap();
            assert_eq!(json, at.to_string(), "{p}");
            at.to_string()
        };
        assert_eq!(shown("/ws/TASK-1/logs/a.jsonl"), "logs/a.jsonl");
        assert_eq!(shown("/ws/TASK-1/agent_prompt_a.txt"), "agent_prompt_a.txt");
        assert_eq!(
            shown("/ws/TASK-10/logs/a.jsonl"),
            "/ws/TASK-10/logs/a.jsonl"
        );
        assert_eq!(
            shown("/srv/archive/TASK-1/a.jsonl"),
            "/srv/archive/TASK-1/a.jsonl"
        );
        let inside = InTask::new(Path::new("/ws/TASK-1/logs/a.jsonl"), task);
        assert_eq!(inside, InTask::from("logs/a.jsonl"));
        assert_ne!(inside, InTask::from("/ws/TASK-1/logs/a.jsonl"));
    }

    #[test]
    fn orphan_outcomes_read_as_before() {
        let texts: Vec<String> = every_orphan_outcome()
            .iter()
            .map(|o| o.to_string())
            .collect();
        assert_eq!(
            texts,
            [
                "killed (2 process(es) stopped)",
                "ended with its processes (1 process(es) stopped)",
                "error: tmux did not answer (0 process(es) stopped)",
            ]
        );
    }

    /// `once` output and the daemon's log lines are read by people and by scripts
    /// (`grep ': archived '`): the texts stay what they were when they were strings.
    #[test]
    fn texts_read_as_before() {
        let texts: Vec<String> = every_event().iter().map(|e| e.to_string()).collect();
        assert_eq!(
            texts,
            [
                "stopped 3 process(es) (1 joined while stopping), escalated to SIGKILL",
                "killed cgroup /sys/fs/cgroup/a.scope (cgroup.kill)",
                "left pid 42 alone: pid reused",
                "killed tmux session agent_a",
                "tmux session agent_a ended with its processes",
                "archived progress/a.jsonl -> archive/a.jsonl",
                "appended 7 late byte(s) of progress/a.jsonl to archive/a.jsonl",
                "progress/a.jsonl changed while being appended; retried once it settles",
                "compressed archive/a_stream.jsonl.zst (100 -> 10 bytes)",
                "archive/a_stream.jsonl changed while being compressed; kept plain",
                "deleted agent_prompt_a.txt",
                "marked terminated (session_not_found)",
                "state DB status changed meanwhile: left as the orchestrator set it",
            ]
        );
        let plain = PassEvent::Stopped {
            processes: 1,
            joined: 0,
            escalated: false,
        };
        assert_eq!(plain.to_string(), "stopped 1 process(es)");
    }
}
