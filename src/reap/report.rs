//! What a pass returns: per task and agent, what was decided, done and still awaited.

use crate::agent_file::TaskPath;
use crate::decide::{Action, Actions, AgentClass, Decision};
use crate::model::{AgentId, StatusClass};
use crate::observe::{DecidedAgent, TaskView};
use crate::reap::events::{Events, OrphanOutcome, TaskEvent};
use crate::reap::outcome::Outcome;
use serde::Serialize;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One agent in a pass's report. What is rarely set (actions, waits, events, errors) sits
/// behind one pointer, read as fields through `Deref`: a report of 600,000 cleaned agents
/// costs about 64 bytes and the id each.
#[derive(Debug, Clone)]
pub struct AgentReport {
    pub id: String,
    pub status: Cow<'static, str>,
    pub class: AgentClass,
    detail: Option<Box<AgentDetail>>,
}

/// The parts of an [`AgentReport`] an agent with nothing to report leaves empty.
#[derive(Debug, Clone, Default)]
pub struct AgentDetail {
    pub new_status: Option<String>,
    pub actions: Actions,
    pub waiting: Option<String>,
    /// When another look could change the answer (the daemon schedules it).
    pub recheck: Option<Duration>,
    /// What the pass did, in order (`--json`: objects tagged by `event`).
    pub done: Events,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

static NO_DETAIL: AgentDetail = AgentDetail {
    new_status: None,
    actions: Actions::new(),
    waiting: None,
    recheck: None,
    done: Events::new(),
    errors: Vec::new(),
    warnings: Vec::new(),
};

impl std::ops::Deref for AgentReport {
    type Target = AgentDetail;
    fn deref(&self) -> &AgentDetail {
        self.detail.as_deref().unwrap_or(&NO_DETAIL)
    }
}

/// Writing a part gives the report its own detail first.
impl std::ops::DerefMut for AgentReport {
    fn deref_mut(&mut self) -> &mut AgentDetail {
        self.detail.get_or_insert_with(Box::default)
    }
}

impl AgentDetail {
    fn is_empty(&self) -> bool {
        self.new_status.is_none()
            && self.actions.is_empty()
            && self.waiting.is_none()
            && self.recheck.is_none()
            && self.done.is_empty()
            && self.errors.is_empty()
            && self.warnings.is_empty()
    }
}

/// Member `key` of `out` when `list` has items; left out when it is empty.
fn list_field<S: serde::ser::SerializeStruct, T: Serialize>(
    out: &mut S,
    key: &'static str,
    list: &[T],
) -> Result<(), S::Error> {
    if list.is_empty() {
        out.skip_field(key)
    } else {
        out.serialize_field(key, list)
    }
}

/// Member `key` of `out` when `value` is there; left out when it is not.
fn option_field<S: serde::ser::SerializeStruct, T: Serialize>(
    out: &mut S,
    key: &'static str,
    value: &Option<T>,
) -> Result<(), S::Error> {
    match value {
        Some(v) => out.serialize_field(key, v),
        None => out.skip_field(key),
    }
}

/// An agent of the task in folder `dir`, as `--json` prints it.
struct AgentJson<'a> {
    agent: &'a AgentReport,
    dir: &'a Path,
}

/// As `--json` has always printed an agent: empty lists and absent values left out, except
/// `actions` (their paths whole).
impl Serialize for AgentJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let d: &AgentDetail = self.agent;
        let mut out = s.serialize_struct("AgentReport", 9)?;
        out.serialize_field("id", &self.agent.id)?;
        out.serialize_field("status", &self.agent.status)?;
        option_field(&mut out, "new_status", &d.new_status)?;
        out.serialize_field("class", &self.agent.class)?;
        out.serialize_field(
            "actions",
            &Each(d.actions.iter().map(|action| ActionJson {
                action,
                dir: self.dir,
            })),
        )?;
        option_field(&mut out, "waiting", &d.waiting)?;
        if d.done.is_empty() {
            out.skip_field("done")?;
        } else {
            out.serialize_field("done", &d.done)?;
        }
        list_field(&mut out, "errors", &d.errors)?;
        list_field(&mut out, "warnings", &d.warnings)?;
        out.end()
    }
}

impl AgentReport {
    pub fn new(
        id: String,
        status: Cow<'static, str>,
        class: AgentClass,
        detail: AgentDetail,
    ) -> AgentReport {
        AgentReport {
            id,
            status,
            class,
            detail: (!detail.is_empty()).then(|| Box::new(detail)),
        }
    }

    /// The registry lists it as active after this pass.
    pub fn still_active(&self) -> bool {
        let status = self.new_status.as_deref().unwrap_or(&self.status);
        crate::model::classify_status(status) == StatusClass::Active
    }
}

/// A planned action as `--json` prints it: a file's path whole (actions hold it relative to
/// the task folder `dir`, as the facts do).
struct ActionJson<'a> {
    action: Action,
    dir: &'a Path,
}

impl Serialize for ActionJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        match &self.action {
            Action::Archive { path } | Action::DeletePrompt { path } => {
                let mut out = s.serialize_struct("Action", 2)?;
                out.serialize_field("action", self.action.as_str())?;
                out.serialize_field("path", &path.whole(self.dir))?;
                out.end()
            }
            other => other.serialize(s),
        }
    }
}

/// A sequence serialized from an iterator (made once, when serialized).
struct Each<I>(I);

impl<I> Serialize for Each<I>
where
    I: Iterator + Clone,
    I::Item: Serialize,
{
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.clone())
    }
}

#[derive(Debug, Clone)]
pub struct TaskReport {
    pub task_id: String,
    pub dir: PathBuf,
    pub backend: &'static str,
    pub error: Option<String>,
    pub warnings: Vec<String>,
    /// What the pass did to the task as a whole.
    pub done: Vec<TaskEvent>,
    pub registry_written: bool,
    pub agents: Vec<AgentReport>,
}

/// Its fields in order, absent and empty ones left out as before; each agent's actions
/// with their paths whole (see [`ActionJson`]).
impl Serialize for TaskReport {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut out = s.serialize_struct("TaskReport", 8)?;
        out.serialize_field("task_id", &self.task_id)?;
        out.serialize_field("dir", &self.dir)?;
        out.serialize_field("backend", self.backend)?;
        option_field(&mut out, "error", &self.error)?;
        list_field(&mut out, "warnings", &self.warnings)?;
        list_field(&mut out, "done", &self.done)?;
        out.serialize_field("registry_written", &self.registry_written)?;
        let dir = self.dir.as_path();
        out.serialize_field(
            "agents",
            &Each(self.agents.iter().map(|agent| AgentJson { agent, dir })),
        )?;
        out.end()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct OrphanReport {
    pub session: String,
    pub idle_seconds: Option<u64>,
    pub stop: bool,
    /// Its panes' processes, stopped with their descendants before the session goes.
    #[serde(skip)]
    pub pane_pids: Vec<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<OrphanOutcome>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub tasks: usize,
    pub agents_seen: usize,
    pub cleaned: usize,
    pub zombies: usize,
    pub stale: usize,
    pub stopped: usize,
    pub files_archived: usize,
    pub prompts_deleted: usize,
    pub settling: usize,
    pub errors: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct PassReport {
    pub mode: &'static str,
    pub bases: Vec<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tmux_error: Option<String>,
    pub tasks: Vec<TaskReport>,
    pub orphans: Vec<OrphanReport>,
    pub errors: Vec<String>,
    pub totals: Totals,
    /// Per task, in order: whether its registry was written (filled while acting).
    #[serde(skip)]
    pub written_tasks: Vec<bool>,
    /// Transition hooks this pass ran, queued or (in `plan`) would run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<crate::hooks::HookReport>,
    /// Archive sizes and retention (`status`; `plan` and `once` with `[retention]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archives: Option<crate::archive::retention::ArchiveSurvey>,
    /// The upload stage (`archive_url`): full passes that act only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload: Option<crate::archive::upload::UploadReport>,
}

#[cfg(test)]
impl PassReport {
    /// A `once` report of one task, `TASK-1` in `/ws/TASK-1`, with `agents` (tests).
    pub(crate) fn of_one_task(agents: Vec<AgentReport>) -> PassReport {
        PassReport {
            mode: "once",
            bases: Vec::new(),
            tmux_error: None,
            tasks: vec![TaskReport {
                task_id: "TASK-1".into(),
                dir: "/ws/TASK-1".into(),
                backend: "json",
                error: None,
                warnings: Vec::new(),
                done: Vec::new(),
                registry_written: false,
                agents,
            }],
            orphans: Vec::new(),
            errors: Vec::new(),
            totals: Totals::default(),
            written_tasks: Vec::new(),
            hooks: Vec::new(),
            archives: None,
            upload: None,
        }
    }
}

impl PassReport {
    /// The tasks as archive retention sees them (which are wholly cleaned, and whose logs).
    pub fn seen_tasks(&self) -> Vec<crate::archive::retention::SeenTask<'_>> {
        self.tasks
            .iter()
            .map(|task| crate::archive::retention::SeenTask {
                dir: &task.dir,
                task_id: &task.task_id,
                agent_ids: task.agents.iter().map(|a| a.id.as_str()).collect(),
                cleaned: task.is_cleaned(),
            })
            .collect()
    }

    /// The transitions this report says were committed (in `plan`: decided), for hooks.
    /// `reason` is the termination reason, else the agent's class (`zombie`, `finished`...).
    pub fn transitions(&self) -> Vec<crate::hooks::Transition> {
        let mut out = Vec::new();
        for task in &self.tasks {
            let base = task.dir.parent().unwrap_or(&task.dir);
            for agent in &task.agents {
                let Some(status) = &agent.new_status else {
                    continue;
                };
                let reason = agent
                    .actions
                    .iter()
                    .find_map(|a| match a {
                        Action::SetStatus {
                            termination_reason: Some(r),
                            ..
                        } => Some(r.to_string()),
                        _ => None,
                    })
                    .unwrap_or_else(|| agent.class.as_str().to_string());
                out.push(crate::hooks::Transition {
                    values: crate::config::hooks::Values {
                        task_id: task.task_id.clone(),
                        agent_id: agent.id.clone(),
                        status: status.clone(),
                        reason,
                        workspace_base: base.to_string_lossy().into_owned(),
                    },
                });
            }
        }
        out
    }
}

/// A planned action as `plan` prints it (paths relative to the task folder `dir`).
pub fn action_text(dir: &Path, action: &Action) -> String {
    let rel = |path: &TaskPath| match path {
        TaskPath::Other(p) => p.strip_prefix(dir).unwrap_or(p).display().to_string(),
        file => file.to_string(),
    };
    match action {
        Action::Stop { reason } => {
            format!("stop processes and tmux session ({})", reason.as_str())
        }
        Action::SetStatus {
            status,
            termination_reason,
        } => match termination_reason {
            Some(r) => format!("mark {status} ({r})"),
            None => format!("mark {status}"),
        },
        Action::Archive { path } => format!("archive {}", rel(path)),
        Action::DeletePrompt { path } => format!("delete {}", rel(path)),
        Action::RecordCleanup => "record auto_cleanup_result".into(),
    }
}

/// Builds the report from what the pass saw, decided and did, one task at a time: each
/// task's views, decisions and outcomes move into its report and are dropped with it (a
/// report of 600,000 agents held them all beside it, 40 MB more at the pass's end).
pub(super) fn fill_report(
    report: &mut PassReport,
    views: Vec<TaskView<DecidedAgent>>,
    decisions: Vec<Vec<Decision>>,
    outcomes: Option<Vec<Vec<Outcome>>>,
    ambiguous: &BTreeMap<AgentId, String>,
) {
    let totals = &mut report.totals;
    let mut outcomes = outcomes.map(Vec::into_iter);
    for (t, (view, decisions)) in views.into_iter().zip(decisions).enumerate() {
        let mut task_outcomes = outcomes
            .as_mut()
            .map(|o| o.next().expect("one outcome list per task").into_iter());
        let mut task = TaskReport {
            task_id: view.task.task_id.clone(),
            dir: view.task.dir.clone(),
            backend: view.backend.name(),
            error: view.error,
            warnings: view.warnings,
            done: Vec::new(),
            registry_written: report.written_tasks.get(t).copied().unwrap_or(false),
            agents: Vec::with_capacity(view.agents.len() + view.quiet.len()),
        };
        totals.tasks += 1;
        if task.error.is_some() {
            totals.errors += 1;
        }
        // Quiet agents (cleaned, nothing present) in registry order among the others.
        let mut quiet = view.quiet.into_iter().peekable();
        let mut agents = view.agents.into_iter().zip(decisions);
        for a in 0.. {
            while let Some(q) = quiet.next_if(|q| q.at() <= a) {
                let d = quiet_decision(&q.id, ambiguous);
                let status = q.status();
                totals.agents_seen += 1;
                totals.settling += usize::from(d.waiting.is_some());
                task.agents.push(AgentReport::new(
                    q.id.into_string(),
                    Cow::Borrowed(status),
                    d.class,
                    AgentDetail {
                        waiting: d.waiting,
                        recheck: d.recheck,
                        ..AgentDetail::default()
                    },
                ));
            }
            let Some((agent, d)) = agents.next() else {
                break;
            };
            let mut r = AgentDetail {
                new_status: d.new_status().map(String::from),
                actions: d.actions,
                waiting: d.waiting,
                recheck: d.recheck,
                warnings: agent.warnings,
                ..AgentDetail::default()
            };
            if let Some(out) = task_outcomes
                .as_mut()
                .map(|o| o.next().expect("one outcome per agent"))
            {
                totals.files_archived += out.archives_made();
                totals.prompts_deleted += usize::from(out.prompt_deleted);
                totals.stopped += usize::from(out.stopped);
                totals.cleaned += usize::from(out.recorded && out.errors.is_empty());
                totals.errors += out.errors.len();
                r.done = out.done;
                r.errors = out.errors;
                if out.status_applied.is_none() {
                    r.new_status = None;
                }
            }
            totals.agents_seen += 1;
            totals.zombies += usize::from(d.class == AgentClass::Zombie);
            totals.stale += usize::from(d.class == AgentClass::Stale);
            totals.settling += usize::from(r.waiting.is_some());
            task.agents.push(AgentReport::new(
                agent.id.into_string(),
                status_text(&agent.registry_status),
                d.class,
                r,
            ));
        }
        report.tasks.push(task);
    }
    report.totals.errors += report.errors.len();
}

/// A status as reported: the known ones shared, any other copied.
fn status_text(status: &str) -> Cow<'static, str> {
    match crate::model::ACTIVE_STATUSES
        .iter()
        .chain(crate::model::TERMINAL_STATUSES)
        .find(|k| **k == status)
    {
        Some(known) => Cow::Borrowed(known),
        None => Cow::Owned(status.to_string()),
    }
}

/// What `decide` says of a quiet agent: cleaned, nothing to do (unless its id is ambiguous).
pub(crate) fn quiet_decision(id: &AgentId, ambiguous: &BTreeMap<AgentId, String>) -> Decision {
    match ambiguous.get(id) {
        Some(why) => Decision::ambiguous(why),
        None => Decision {
            class: AgentClass::Cleaned,
            actions: Actions::new(),
            waiting: None,
            recheck: None,
        },
    }
}

impl TaskReport {
    /// Every agent cleaned with nothing left to do, and the registry read without error.
    fn is_cleaned(&self) -> bool {
        self.error.is_none()
            && !self.agents.is_empty()
            && self.agents.iter().all(|a| {
                a.class == AgentClass::Cleaned
                    && a.actions.is_empty()
                    && a.waiting.is_none()
                    && a.errors.is_empty()
            })
    }
}
