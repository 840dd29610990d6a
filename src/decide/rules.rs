//! The rules (DESIGN.md §2): from one agent's facts and `now`, the actions to take. Pure.

use crate::agent_file::{AgentFile, TaskPath};
use crate::model::{Backend, StatusClass, age};
use serde::Serialize;
use std::time::{Duration, SystemTime};

/// The timings and switches the rules read.
#[derive(Debug, Clone)]
pub struct Policy {
    pub settle: Duration,
    pub terminal_grace: Duration,
    pub zombie_grace: Duration,
    pub max_inactivity: Duration,
    pub delete_prompt_files: bool,
    pub kill_orphan_sessions: bool,
}

/// What tmux said about the agent's session this round.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionFact {
    Alive {
        /// Every pane's process has exited (pane dead, or its pid gone/defunct).
        panes_exited: bool,
        window_activity: Option<SystemTime>,
    },
    /// A definite "gone"; `since` is when it was first seen gone.
    Gone { since: SystemTime },
    /// tmux failed or timed out: nothing destructive on this.
    Unknown,
}

/// How the stream log ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    Result { is_error: bool },
    NoResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "why")]
pub enum FileState {
    Settled,
    /// Written within `settle`: settled once it stays quiet that long.
    Recent(String),
    /// Held open for writing, or replaced since the first look: time alone does not settle it.
    Busy(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct FileFact {
    /// Relative to the task folder (the names are the task's own, made from the agent's
    /// id), shared with the actions and events on it: a clone is a count, not a copy. The
    /// task folder is joined where a whole path is shown (`plan --json`, the record): kept
    /// whole, 40,000 agents' four paths were 8 MB more.
    pub path: TaskPath,
    pub state: FileState,
    pub mtime: Option<SystemTime>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AgentFacts {
    pub status: std::sync::Arc<str>,
    pub class: StatusClass,
    pub last_update: Option<SystemTime>,
    /// `completed_at`, else `terminated_at`: when it became terminal.
    pub finished_at: Option<SystemTime>,
    /// `auto_cleanup_result.success` is true.
    pub cleanup_recorded: bool,
    pub session: SessionFact,
    /// Live (not defunct) processes of the agent's process set.
    pub live_processes: usize,
    /// Processes holding one of the agent's logs open for writing (in its set or not):
    /// something still writes for it, so it is not dead.
    pub live_writers: usize,
    pub stream_end: StreamEnd,
    /// The agent's logs that exist now.
    pub logs: Vec<FileFact>,
    /// Its prompt file, relative to the task folder as the logs are.
    pub prompt: Option<TaskPath>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// Terminal in the registry, session or processes still alive.
    Finished,
    InactivityTimeout,
    ProcessExited,
}

impl StopReason {
    /// Its name in text, JSON and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Finished => "finished",
            StopReason::InactivityTimeout => "inactivity_timeout",
            StopReason::ProcessExited => "process_exited",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Action {
    /// Stop the agent's process tree, then kill its session.
    Stop {
        reason: StopReason,
    },
    /// Move the agent from an active status to a terminal one.
    SetStatus {
        status: &'static str,
        termination_reason: Option<&'static str>,
    },
    Archive {
        path: TaskPath,
    },
    DeletePrompt {
        path: TaskPath,
    },
    /// Write `auto_cleanup_result` and `auto_cleanup_timestamp`.
    RecordCleanup,
}

/// The usual actions as one byte over the agent's id: an archive or prompt deletion of one
/// of its own files, the record, a stop, a status change the rules make. Codes: the
/// files' archives, their deletions, the record, the stops, the status changes.
impl crate::packed::Pack for Action {
    fn pack(&self) -> Option<(u8, Option<&std::sync::Arc<str>>)> {
        match self {
            Action::Archive {
                path: TaskPath::Agent(file),
            } => Some((file.code(), Some(file.id()))),
            Action::DeletePrompt {
                path: TaskPath::Agent(file),
            } => Some((AgentFile::CODES + file.code(), Some(file.id()))),
            Action::RecordCleanup => Some((2 * AgentFile::CODES, None)),
            Action::Stop { reason } => {
                let at = STOP_REASONS.iter().position(|r| r == reason)?;
                Some((2 * AgentFile::CODES + 1 + at as u8, None))
            }
            Action::SetStatus {
                status,
                termination_reason,
            } => Some((
                SET_STATUS_CODES + status_change_code(status, *termination_reason)?,
                None,
            )),
            _ => None,
        }
    }

    fn unpack(code: u8, id: Option<&std::sync::Arc<str>>) -> Action {
        let file = |code| TaskPath::Agent(AgentFile::from_code(id.expect("a file's agent"), code));
        match code {
            c if c < AgentFile::CODES => Action::Archive { path: file(c) },
            c if c < 2 * AgentFile::CODES => Action::DeletePrompt {
                path: file(c - AgentFile::CODES),
            },
            c if c == 2 * AgentFile::CODES => Action::RecordCleanup,
            c if c < SET_STATUS_CODES => Action::Stop {
                reason: STOP_REASONS[usize::from(c - 2 * AgentFile::CODES - 1)],
            },
            c => {
                let (status, termination_reason) = status_change_of(c - SET_STATUS_CODES);
                Action::SetStatus {
                    status,
                    termination_reason,
                }
            }
        }
    }
}

const STOP_REASONS: [StopReason; 3] = [
    StopReason::Finished,
    StopReason::InactivityTimeout,
    StopReason::ProcessExited,
];

/// The first code of a status change.
const SET_STATUS_CODES: u8 = 2 * AgentFile::CODES + 1 + STOP_REASONS.len() as u8;

/// A status change the rules make as a number below [`STATUS_CHANGES`] (for packed actions
/// and events).
pub fn status_change_code(status: &str, reason: Option<&str>) -> Option<u8> {
    let at = SET_STATUSES
        .iter()
        .position(|(s, r)| *s == status && *r == reason)?;
    Some(at as u8)
}

/// The status change `code` stands for (see [`status_change_code`]).
pub fn status_change_of(code: u8) -> (&'static str, Option<&'static str>) {
    SET_STATUSES[usize::from(code) % SET_STATUSES.len()]
}

/// How many status changes [`status_change_code`] numbers.
pub const STATUS_CHANGES: u8 = SET_STATUSES.len() as u8;

/// The status changes the rules make (any other is kept whole).
/// (`for_backend` makes each `terminated` one `failed` for a DB-backed task.)
const SET_STATUSES: [(&str, Option<&str>); 8] = [
    ("completed", None),
    ("failed", None),
    ("terminated", Some("session_not_found")),
    ("terminated", Some("process_exited")),
    ("terminated", Some("inactivity_timeout")),
    ("failed", Some("session_not_found")),
    ("failed", Some("process_exited")),
    ("failed", Some("inactivity_timeout")),
];

/// An agent's actions, in order (the usual ones packed, see [`crate::packed`]).
pub type Actions = crate::packed::PackedList<Action>;

impl Action {
    /// Its name: the JSON `action` tag and the journald `ACTION` of a dry run.
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Stop { .. } => "stop",
            Action::SetStatus { .. } => "set_status",
            Action::Archive { .. } => "archive",
            Action::DeletePrompt { .. } => "delete_prompt",
            Action::RecordCleanup => "record_cleanup",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentClass {
    Active,
    /// Terminal or zombie, waiting: logs settling, `terminal_grace`, `zombie_grace`.
    Settling,
    Zombie,
    Stale,
    /// Terminal, cleanup to do now.
    Finished,
    Cleaned,
    /// Status we do not know, or tmux did not answer: left alone.
    Unknown,
}

impl AgentClass {
    /// Every class, in the order `status` lists them.
    pub const ALL: [AgentClass; 7] = [
        AgentClass::Active,
        AgentClass::Settling,
        AgentClass::Zombie,
        AgentClass::Stale,
        AgentClass::Finished,
        AgentClass::Cleaned,
        AgentClass::Unknown,
    ];

    /// Its name in text, JSON, hooks' `{reason}` and the journald `REASON` field.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentClass::Active => "active",
            AgentClass::Settling => "settling",
            AgentClass::Zombie => "zombie",
            AgentClass::Stale => "stale",
            AgentClass::Finished => "finished",
            AgentClass::Cleaned => "cleaned",
            AgentClass::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub class: AgentClass,
    pub actions: Actions,
    /// Why nothing (more) happens now.
    pub waiting: Option<String>,
    /// When a look again could change the answer (the daemon schedules it); `None` when
    /// only an event or the periodic reconcile can.
    #[serde(skip)]
    pub recheck: Option<Duration>,
}

impl Decision {
    fn wait(class: AgentClass, why: impl Into<String>) -> Self {
        Decision {
            class,
            actions: Actions::new(),
            waiting: Some(why.into()),
            recheck: None,
        }
    }

    /// The status this decision sets, if it sets one.
    pub fn new_status(&self) -> Option<&'static str> {
        self.actions.iter().find_map(|a| match a {
            Action::SetStatus { status, .. } => Some(status),
            _ => None,
        })
    }

    /// Whether it stops the agent's processes and session.
    pub fn stops(&self) -> bool {
        self.actions
            .iter()
            .any(|a| matches!(a, Action::Stop { .. }))
    }

    /// Nothing is done for an ambiguous id (two tasks list it, or its session name is
    /// shared): whose agent it is cannot be told.
    pub fn ambiguous(why: &str) -> Self {
        Decision::wait(
            AgentClass::Unknown,
            format!("ambiguous agent id ({why}): nothing done for it"),
        )
    }

    fn recheck_after(mut self, after: Duration) -> Self {
        self.recheck = Some(after);
        self
    }
}

fn newest(times: impl IntoIterator<Item = Option<SystemTime>>) -> Option<SystemTime> {
    times.into_iter().flatten().max()
}

/// Last sign of life: newest of log mtimes, `last_update` and tmux `window_activity`.
pub fn last_activity(facts: &AgentFacts) -> Option<SystemTime> {
    let window = match facts.session {
        SessionFact::Alive {
            window_activity, ..
        } => window_activity,
        _ => None,
    };
    newest(
        facts
            .logs
            .iter()
            .map(|f| f.mtime)
            .chain([facts.last_update, window]),
    )
}

/// The terminal status a dead agent gets from how its stream log ends.
fn zombie_status(end: StreamEnd) -> (&'static str, Option<&'static str>) {
    match end {
        StreamEnd::Result { is_error: false } => ("completed", None),
        StreamEnd::Result { is_error: true } => ("failed", None),
        StreamEnd::NoResult => ("terminated", Some("session_not_found")),
    }
}

pub fn decide(facts: &AgentFacts, policy: &Policy, now: SystemTime) -> Decision {
    match facts.class {
        StatusClass::Unknown => Decision::wait(
            AgentClass::Unknown,
            format!("unknown status {:?}: left alone", facts.status),
        ),
        StatusClass::Terminal => decide_terminal(facts, policy, now),
        StatusClass::Active => decide_active(facts, policy, now),
    }
}

fn decide_terminal(facts: &AgentFacts, policy: &Policy, now: SystemTime) -> Decision {
    match facts.session {
        SessionFact::Unknown => Decision::wait(
            AgentClass::Unknown,
            "tmux did not answer: nothing destructive this round",
        ),
        SessionFact::Alive { .. } => {
            let ended = matches!(facts.stream_end, StreamEnd::Result { .. });
            let since = facts.finished_at.or(facts.last_update);
            let grace_over = since.is_none_or(|t| age(now, t) >= policy.terminal_grace);
            if ended || grace_over {
                Decision {
                    class: AgentClass::Finished,
                    actions: vec![Action::Stop {
                        reason: StopReason::Finished,
                    }]
                    .into(),
                    waiting: None,
                    recheck: None,
                }
            } else {
                let left = since.map_or(Duration::ZERO, |t| {
                    policy.terminal_grace.saturating_sub(age(now, t))
                });
                // The result line may come any moment: look at least every `settle`.
                Decision::wait(
                    AgentClass::Settling,
                    "terminal with a live session: waiting for the result line or terminal_grace",
                )
                .recheck_after(left.min(policy.settle))
            }
        }
        SessionFact::Gone { .. } if facts.live_processes > 0 => Decision {
            class: AgentClass::Finished,
            actions: vec![Action::Stop {
                reason: StopReason::Finished,
            }]
            .into(),
            waiting: None,
            recheck: None,
        },
        SessionFact::Gone { .. } => cleanup(facts, policy, AgentClass::Finished, Actions::new()),
    }
}

fn decide_active(facts: &AgentFacts, policy: &Policy, now: SystemTime) -> Decision {
    let activity = last_activity(facts);
    let idle_for = |limit: Duration| activity.is_none_or(|t| age(now, t) >= limit);
    match facts.session {
        SessionFact::Unknown => Decision::wait(
            AgentClass::Unknown,
            "tmux did not answer: nothing destructive this round",
        ),
        SessionFact::Alive { panes_exited, .. } => {
            let dead = facts.live_processes == 0 && facts.live_writers == 0;
            let (class, reason, termination) = if panes_exited && dead {
                (
                    AgentClass::Zombie,
                    StopReason::ProcessExited,
                    "process_exited",
                )
            } else if idle_for(policy.max_inactivity) {
                (
                    AgentClass::Stale,
                    StopReason::InactivityTimeout,
                    "inactivity_timeout",
                )
            } else {
                return Decision {
                    class: AgentClass::Active,
                    actions: Actions::new(),
                    waiting: None,
                    recheck: None,
                };
            };
            Decision {
                class,
                actions: vec![
                    Action::Stop { reason },
                    Action::SetStatus {
                        status: "terminated",
                        termination_reason: Some(termination),
                    },
                ]
                .into(),
                waiting: None,
                recheck: None,
            }
        }
        SessionFact::Gone { .. } if facts.live_processes > 0 || facts.live_writers > 0 => {
            // Processes that left the session (or write its logs) still work for the agent.
            if idle_for(policy.max_inactivity) {
                Decision {
                    class: AgentClass::Stale,
                    actions: vec![
                        Action::Stop {
                            reason: StopReason::InactivityTimeout,
                        },
                        Action::SetStatus {
                            status: "terminated",
                            termination_reason: Some("inactivity_timeout"),
                        },
                    ]
                    .into(),
                    waiting: None,
                    recheck: None,
                }
            } else {
                Decision {
                    class: AgentClass::Active,
                    actions: Actions::new(),
                    waiting: None,
                    recheck: None,
                }
            }
        }
        SessionFact::Gone { since } => {
            let seen_long_enough = age(now, since) >= policy.zombie_grace;
            if !seen_long_enough && !idle_for(policy.zombie_grace) {
                return Decision::wait(
                    AgentClass::Settling,
                    "session gone: confirming after zombie_grace",
                )
                .recheck_after(policy.zombie_grace.saturating_sub(age(now, since)));
            }
            let (status, termination_reason) = zombie_status(facts.stream_end);
            cleanup(
                facts,
                policy,
                AgentClass::Zombie,
                vec![Action::SetStatus {
                    status,
                    termination_reason,
                }]
                .into(),
            )
        }
    }
}

/// Nothing of the agent runs any more: archive settled logs, drop the prompt, record.
fn cleanup(
    facts: &AgentFacts,
    policy: &Policy,
    class: AgentClass,
    mut actions: Actions,
) -> Decision {
    let mut settling = Vec::new();
    for log in &facts.logs {
        match &log.state {
            FileState::Settled => actions.push(Action::Archive {
                path: log.path.clone(),
            }),
            FileState::Recent(why) | FileState::Busy(why) => settling.push(format!(
                "{} ({why})",
                log.path.file_name().unwrap_or_default().to_string_lossy()
            )),
        }
    }
    if policy.delete_prompt_files
        && let Some(prompt) = &facts.prompt
    {
        actions.push(Action::DeletePrompt {
            path: prompt.clone(),
        });
    }
    let file_work = actions
        .iter()
        .any(|a| matches!(a, Action::Archive { .. } | Action::DeletePrompt { .. }));
    // The record is written once everything is done, so it tells the whole story.
    if settling.is_empty() && (file_work || !facts.cleanup_recorded) {
        actions.push(Action::RecordCleanup);
    }
    let class = if actions.is_empty() && settling.is_empty() {
        AgentClass::Cleaned
    } else if actions.is_empty() && class == AgentClass::Finished {
        AgentClass::Settling
    } else {
        class
    };
    Decision {
        class,
        actions,
        recheck: (!settling.is_empty()).then_some(policy.settle),
        waiting: (!settling.is_empty()).then(|| format!("settling: {}", settling.join(", "))),
    }
}

/// An `agent_*` session that no registry lists.
pub fn decide_orphan(activity: Option<SystemTime>, policy: &Policy, now: SystemTime) -> bool {
    policy.kill_orphan_sessions && activity.is_none_or(|t| age(now, t) >= policy.max_inactivity)
}

/// The decision in the vocabulary of the orchestrator generation that keeps the task.
///
/// The 2026 (SQLite) orchestrators' own detectors mark an agent whose session died or that
/// got stuck `failed`, with a progress line saying why, never `terminated`; their readers
/// count `failed` agents as such. So a DB-backed agent we find dead or stale is marked
/// `failed`; the reason (`session_not_found`, `inactivity_timeout`, `process_exited`) stays
/// in the message, the progress line and the JSON registry's `termination_reason`. JSON
/// (2025) tasks keep `terminated`, as that generation's repair writes. Pure; applied right
/// after `decide`, so `plan` shows what `once` writes.
pub fn for_backend(backend: Backend, mut decision: Decision) -> Decision {
    if backend == Backend::Sqlite {
        decision.actions = decision.actions.map(|action| match action {
            Action::SetStatus {
                status: "terminated",
                termination_reason,
            } => Action::SetStatus {
                status: "failed",
                termination_reason,
            },
            other => other,
        });
    }
    decision
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
