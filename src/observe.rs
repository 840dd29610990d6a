//! One round's snapshot of the world: registries, files, tmux and /proc, turned into `AgentFacts`.

mod decided;
pub mod entries;
mod folders;
mod quiet;
pub mod tail;
pub mod tracked;

use crate::agent_file::{AgentFile, TaskPath};
use crate::decide::{AgentFacts, FileFact, FileState, SessionFact, StreamEnd};
use crate::fs::{Dir, EntryKind, Purpose};
use crate::model::{AgentId, Backend, StatusClass, age, classify_status, parse_timestamp};
use crate::procs::ProcessSource;
use crate::procs::environ::EnvIndex;
use crate::procs::openfiles::DevIno;
use crate::procs::panemap::PaneMap;
use crate::procs::{
    Evidence, ProcKey, ProcTable, SessionIdentity, SetContext, TmuxError, TmuxSnapshot, agent_set,
};
use crate::workspace::{LogKind, TaskDir, agent_file_rel, agent_files};
pub use decided::DecidedAgent;
use entries::{LeanAgent, LeanRegistry};
pub use quiet::QuietAgent;
use quiet::cleaned_status;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tail::{LastLine, STREAM_TAIL_CAP, last_line};

/// One agent as seen this round.
#[derive(Debug, Clone)]
pub struct AgentView {
    pub id: AgentId,
    /// The status as read from the registry (facts may move on within a pass).
    pub registry_status: std::sync::Arc<str>,
    pub facts: AgentFacts,
    pub pane_pids: Vec<i32>,
    pub processes: Vec<ProcKey>,
    /// What ties processes to this agent (panes, sessions now and remembered, logs).
    pub evidence: Evidence,
    /// Its session as seen alive this round, for the pane map (boxed: most have none).
    pub seen_session: Option<Box<SessionIdentity>>,
    /// The round's environment read looked for its sessions (see [`DecidedAgent::checked`]).
    pub env_read: bool,
    /// Identities of the logs in `facts.logs`, same order.
    pub log_ids: Vec<DevIno>,
    pub warnings: Vec<String>,
    /// The agent's task: its folder handle for every later look at the agent's files.
    pub task: TaskDir,
}

impl AgentView {
    pub fn session_name(&self) -> String {
        self.id.session_name()
    }
}

/// One task as seen this round; its agents as viewed, then as decided
/// ([`TaskView::decided`]).
#[derive(Debug, Clone)]
pub struct TaskView<A = AgentView> {
    pub task: TaskDir,
    pub backend: Backend,
    pub agents: Vec<A>,
    /// `active_count` as read, to tell whether the counter drifted.
    pub active_count: Option<i64>,
    /// `active_count` recomputed from the statuses read.
    pub expected_active: Option<i64>,
    /// Entries we could not use (bad id, duplicate, not an object).
    pub warnings: Vec<String>,
    /// Ids listed more than once (skipped here; ambiguous for the whole pass).
    pub duplicates: Vec<AgentId>,
    /// The registry could not be read: the task is skipped this round.
    pub error: Option<String>,
    /// Agents already cleaned with nothing of theirs present: kept as id and status only
    /// (no view), so a registry of 300,000 cleaned agents costs little.
    pub quiet: Vec<QuietAgent>,
}

/// tmux's answer this round.
pub type TmuxView = Result<TmuxSnapshot, String>;

pub fn tmux_view(result: Result<TmuxSnapshot, TmuxError>) -> TmuxView {
    result.map_err(|e| e.to_string())
}

fn time_field(field: &Option<Box<str>>) -> Option<SystemTime> {
    field.as_deref().and_then(parse_timestamp)
}

/// How a stream log ends: with `{"type":"result", ...}` or not. Opened beneath the task
/// handle (`O_NOFOLLOW|O_NONBLOCK`, regular files only), its last line read backwards up to
/// the cap: missing, a FIFO, a device, a symlink or a last line over the cap is not.
pub fn stream_end(task: &Dir, rel: &Path) -> StreamEnd {
    let Ok(log) = task.open_file(rel, Purpose::Read) else {
        return StreamEnd::NoResult;
    };
    match last_line(&log.file, log.id.size, STREAM_TAIL_CAP) {
        Ok(LastLine::Line(line)) => result_line(&line),
        Ok(LastLine::Empty | LastLine::TooLong) | Err(_) => StreamEnd::NoResult,
    }
}

/// A log as found this round: which file, and when it was last written.
#[derive(Debug, Clone)]
pub struct LogStat {
    /// Which of the agent's files (see [`FileFact::path`]).
    pub path: TaskPath,
    pub id: DevIno,
    pub mtime: Option<SystemTime>,
    /// Hard links to it: more than one, and its writers are not evidence of the agent.
    pub nlink: u64,
}

fn mtime_of(id: &crate::fs::FileId) -> Option<SystemTime> {
    let (secs, nanos) = id.mtime;
    let secs = u64::try_from(secs).ok()?;
    let nanos = u32::try_from(nanos).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// What is at `rel` (one of the task's own names, below the task folder) if it is a
/// regular file, looked at through the task handle without opening it: a FIFO or device
/// costs nothing. The look at it is given (the task handle, or its listed subfolders).
fn stat_rel(
    task: &TaskDir,
    path: TaskPath,
    buf: &mut String,
    look: impl FnOnce(&Path) -> Result<Option<crate::fs::Entry>, crate::fs::FsError>,
) -> Result<Option<LogStat>, String> {
    use std::fmt::Write as _;
    buf.clear();
    let _ = write!(buf, "{path}");
    let rel = Path::new(buf.as_str());
    let whole = || task.dir.join(rel);
    match look(rel) {
        Ok(None) => Ok(None),
        Ok(Some(entry)) if entry.kind == EntryKind::File => Ok(Some(LogStat {
            path,
            id: (entry.id.dev, entry.id.ino),
            mtime: mtime_of(&entry.id),
            nlink: entry.nlink,
        })),
        Ok(Some(entry)) => Err(format!(
            "{}: is a {}, not a regular file; left alone",
            whole().display(),
            entry.kind.describe()
        )),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(format!("{e}; left alone")),
    }
}

fn result_line(line: &[u8]) -> StreamEnd {
    match serde_json::from_slice::<Value>(line) {
        Ok(v) if v.get("type").and_then(Value::as_str) == Some("result") => StreamEnd::Result {
            is_error: v.get("is_error").and_then(Value::as_bool).unwrap_or(false),
        },
        _ => StreamEnd::NoResult,
    }
}

/// Stats the logs that exist through the task handle: regular files only, reached without
/// a symlink on the way; anything else is a warning and left alone.
fn existing_logs(
    folders: &mut folders::Folders<'_>,
    task: &TaskDir,
    id: &AgentId,
    buf: &mut String,
    warnings: &mut Vec<String>,
) -> Vec<LogStat> {
    let mut out = Vec::new();
    for kind in LogKind::ALL {
        let file = AgentFile::new(id, Some(kind)).into();
        match stat_rel(task, file, buf, |rel| folders.metadata(rel)) {
            Ok(Some(log)) => out.push(log),
            Ok(None) => {}
            Err(w) => warnings.push(w),
        }
    }
    out
}

/// Judges a log: settled when nobody writes it and it has been quiet for `settle`.
pub fn file_state(
    mtime: Option<SystemTime>,
    writers: Option<&Vec<i32>>,
    settle: Duration,
    now: SystemTime,
) -> FileState {
    if let Some(pids) = writers.filter(|p| !p.is_empty()) {
        return FileState::Busy(format!("open for writing by pid {pids:?}"));
    }
    match mtime {
        Some(t) if age(now, t) < settle => FileState::Recent(format!(
            "written {:.1}s ago, settle {:?}",
            age(now, t).as_secs_f64(),
            settle
        )),
        _ => FileState::Settled,
    }
}

/// Everything needed to build facts, gathered once per round.
pub struct World<'a> {
    pub tmux: &'a TmuxView,
    pub table: &'a ProcTable,
    /// Who may never be in an agent's set (tmux, init, the daemon, other sessions' panes).
    pub procs: &'a SetContext<'a>,
    /// Where environments are read (the live /proc, or a fake).
    pub source: &'a dyn ProcessSource,
    /// Sessions agents ran in, remembered from earlier passes.
    pub pane_map: &'a PaneMap,
    /// The round's environment read: made by the first agent that needs it.
    pub env: &'a std::sync::OnceLock<EnvIndex>,
    /// When each session was first seen gone (kept across rounds by the daemon).
    pub gone_since: &'a HashMap<String, SystemTime>,
    pub settle: Duration,
    pub now: SystemTime,
}

/// An agent read from its registry, waiting for the round's writers scan (its raw
/// material: entry, log stats).
pub struct PendingAgent {
    /// The DB holds no cleanup record: an agent counts as recorded once nothing is left.
    db_backed: bool,
    id: AgentId,
    /// Its registry entry (the id taken out into `id`).
    entry: LeanAgent,
    logs: Vec<LogStat>,
    warnings: Vec<String>,
    task: TaskDir,
}

/// Builds the agents of one task registry. Call `agent_view` on each afterwards with the
/// writers of all logs so /proc is scanned once for every task together. `unseen`: no
/// session of the agent runs or is remembered (false whenever tmux did not answer); a
/// cleaned agent that is unseen and has no file present becomes a [`QuietAgent`].
pub fn task_view(
    task: &TaskDir,
    backend: Backend,
    registry: Result<LeanRegistry, String>,
    unseen: &dyn Fn(&AgentId) -> bool,
) -> (TaskView, Vec<PendingAgent>) {
    let mut view = TaskView {
        task: task.clone(),
        backend,
        agents: Vec::new(),
        active_count: None,
        expected_active: None,
        warnings: Vec::new(),
        duplicates: Vec::new(),
        error: None,
        quiet: Vec::new(),
    };
    let registry = match registry {
        Ok(registry) => registry,
        Err(e) => {
            view.error = Some(e);
            return (view, Vec::new());
        }
    };
    // One handle for the task folder, opened beneath the base without following a symlink
    // and pinned to the folder discovery saw: a folder swapped in since is refused.
    let task_dir = match task.handle() {
        Ok(dir) => dir,
        Err(e) => {
            view.error = Some(format!("task folder not opened: {e}"));
            return (view, Vec::new());
        }
    };
    view.active_count = registry.active_count;
    view.expected_active = registry.expected_active();
    let entries = registry.agents.unwrap_or_default();
    let twice = listed_twice(&entries);
    let db_backed = backend == Backend::Sqlite;
    let mut folders = folders::Folders::new(&task_dir, entries.len());
    // One buffer for every name looked up.
    let mut name = String::new();
    let mut pending = Vec::new();
    for mut entry in entries {
        let Some(raw_id) = entry.id.take() else {
            view.warnings
                .push("an agent entry has no string \"id\"; skipped".into());
            continue;
        };
        let listed_twice = twice.contains(&raw_id);
        let id = match AgentId::parse_owned(raw_id) {
            Ok(id) => id,
            Err(e) => {
                view.warnings.push(format!("{e}; skipped"));
                continue;
            }
        };
        if listed_twice {
            view.warnings
                .push(format!("agent id {id} is listed twice; skipped"));
            view.duplicates.push(id);
            continue;
        }
        let mut warnings = Vec::new();
        // tracked_files can only confirm the agent's own files: the files are always these.
        if let Some(tracked) = entry.tracked_files.as_deref() {
            let files = agent_files(task, &id);
            warnings.extend(tracked::check(
                id.as_str(),
                tracked,
                &task.task_id,
                &task.dir,
                &files,
            ));
        }
        let logs = existing_logs(&mut folders, task, &id, &mut name, &mut warnings);
        // Files are looked up in the one listing of each folder: a cleaned agent with none
        // present costs no view (a late log or a leftover prompt brings the full one back).
        if logs.is_empty()
            && warnings.is_empty()
            && let Some(status) = cleaned_status(&entry, db_backed)
            && unseen(&id)
            && matches!(
                stat_rel(task, AgentFile::new(&id, None).into(), &mut name, |rel| {
                    folders.metadata(rel)
                }),
                Ok(None)
            )
        {
            view.quiet.push(QuietAgent::new(id, pending.len(), status));
            continue;
        }
        pending.push(PendingAgent {
            db_backed,
            id,
            entry,
            logs,
            warnings,
            task: task.clone(),
        });
    }
    // Kept until the pass reports: no room left over from growing.
    view.quiet.shrink_to_fit();
    pending.shrink_to_fit();
    (view, pending)
}

/// The ids listed more than once (found without copying the others).
fn listed_twice(entries: &[LeanAgent]) -> HashSet<Box<str>> {
    let mut seen: HashSet<&str> = HashSet::with_capacity(entries.len());
    entries
        .iter()
        .filter_map(|e| e.id.as_deref())
        .filter(|id| !seen.insert(id))
        .map(Box::from)
        .collect()
}

impl PendingAgent {
    pub fn id(&self) -> &AgentId {
        &self.id
    }

    pub fn file_ids(&self) -> impl Iterator<Item = DevIno> + '_ {
        self.logs.iter().map(|l| l.id)
    }
}

/// One scan of `/proc/*/fd` for all logs of all pending agents.
pub fn scan_writers<'p>(
    source: &dyn ProcessSource,
    pending: impl IntoIterator<Item = &'p PendingAgent>,
) -> HashMap<DevIno, Vec<i32>> {
    let ids: HashSet<DevIno> = pending.into_iter().flat_map(|p| p.file_ids()).collect();
    if ids.is_empty() {
        return HashMap::new();
    }
    source.writers_of(&ids)
}

/// Turns a pending agent into its facts for this round.
pub fn agent_view(
    pending: PendingAgent,
    world: &World<'_>,
    writers: &HashMap<DevIno, Vec<i32>>,
) -> AgentView {
    let PendingAgent {
        db_backed,
        id,
        entry,
        logs,
        warnings,
        task,
    } = pending;
    let status: Arc<str> = entry.status_str().into();
    let session_name = id.session_name();
    let mut seen_session = None;
    let (session, pane_pids) = match world.tmux {
        Err(_) => (SessionFact::Unknown, Vec::new()),
        Ok(snapshot) => match snapshot.sessions.get(&session_name) {
            Some(info) => {
                let pane_pids: Vec<i32> = info.live_pane_pids();
                let panes_exited = info.panes.iter().all(|p| {
                    p.dead
                        || p.pid
                            .and_then(|pid| world.table.get(pid))
                            .is_none_or(|proc| proc.state == 'Z')
                });
                let window_activity = info.panes.iter().filter_map(|p| p.window_activity).max();
                if let (Some(server), Some(session_id)) = (&snapshot.server, info.id) {
                    seen_session = Some(Box::new(SessionIdentity {
                        server: server.clone(),
                        session_id,
                        pane_ids: info.panes.iter().filter_map(|p| p.id).collect(),
                        panes: pane_pids
                            .iter()
                            .filter_map(|p| world.table.get(*p).map(|i| i.key()))
                            .collect(),
                    }));
                }
                (
                    SessionFact::Alive {
                        panes_exited,
                        window_activity,
                    },
                    pane_pids,
                )
            }
            None => (
                SessionFact::Gone {
                    since: world
                        .gone_since
                        .get(&session_name)
                        .copied()
                        .unwrap_or(world.now),
                },
                Vec::new(),
            ),
        },
    };
    let mut evidence = Evidence::new(id.clone());
    evidence.panes = pane_pids
        .iter()
        .filter_map(|p| world.table.get(*p).map(|i| i.key()))
        .collect();
    evidence.sessions = world.pane_map.get(&id).to_vec();
    if let Some(seen) = &seen_session
        && !evidence.sessions.contains(seen)
    {
        evidence.sessions.push(SessionIdentity::clone(seen));
    }
    // A log hard-linked to some other file (st_nlink > 1) would make that file's writers
    // look like the agent's: only a log that is its own file is evidence.
    evidence.logs = Vec::with_capacity(logs.len());
    evidence
        .logs
        .extend(logs.iter().filter(|l| l.nlink == 1).map(|l| l.id));
    // Environments are read only where they can change the verdict: the agent looks dead
    // (session gone or every pane exited) and some session of it is known.
    let looks_dead = match session {
        SessionFact::Gone { .. } => true,
        SessionFact::Alive { panes_exited, .. } => panes_exited,
        SessionFact::Unknown => false,
    };
    let env = (looks_dead && evidence.has_sessions()).then(|| {
        world
            .env
            .get_or_init(|| world.procs.read_environments_from(world.source))
    });
    let processes = agent_set(world.procs, &evidence, env);
    let live_processes = processes
        .iter()
        .filter(|k| world.table.get(k.pid).is_some_and(|p| p.state != 'Z'))
        .count();
    let live_writers = evidence
        .logs
        .iter()
        .flat_map(|l| writers.get(l).into_iter().flatten())
        .collect::<HashSet<_>>()
        .len();
    // Sized once: kept for the whole pass (a vector grown from empty holds four).
    let mut log_facts = Vec::with_capacity(logs.len());
    let mut log_ids = Vec::with_capacity(logs.len());
    for log in logs {
        log_facts.push(FileFact {
            state: file_state(log.mtime, writers.get(&log.id), world.settle, world.now),
            path: log.path,
            mtime: log.mtime,
        });
        log_ids.push(log.id);
    }
    // The folder handle again (shared while the pass holds it, reopened and checked for
    // the same folder otherwise); without it nothing of the agent's is looked at.
    let task_dir = task.handle().ok();
    let mut name = String::new();
    let prompt = task_dir
        .as_deref()
        .and_then(|d| {
            stat_rel(&task, AgentFile::new(&id, None).into(), &mut name, |rel| {
                d.metadata(rel)
            })
            .ok()
            .flatten()
        })
        .map(|p| p.path);
    let class = classify_status(&status);
    // The end of the stream log only matters to a vanished active agent or a finished one
    // whose session still runs: the other agents' logs are not read.
    let end = match (class, &session, task_dir.as_deref()) {
        (StatusClass::Active, SessionFact::Gone { .. }, Some(d))
        | (StatusClass::Terminal, SessionFact::Alive { .. }, Some(d)) => {
            stream_end(d, agent_file_rel(&mut name, Some(LogKind::Stream), &id))
        }
        _ => StreamEnd::NoResult,
    };
    let facts = AgentFacts {
        class,
        last_update: time_field(&entry.last_update),
        finished_at: time_field(&entry.completed_at).or(time_field(&entry.terminated_at)),
        cleanup_recorded: db_backed || entry.cleanup_success.unwrap_or(false),
        session,
        live_processes,
        live_writers,
        stream_end: end,
        logs: log_facts,
        prompt,
        status,
    };
    AgentView {
        id,
        registry_status: facts.status.clone(),
        facts,
        pane_pids,
        processes,
        evidence,
        seen_session,
        env_read: env.is_some(),
        log_ids,
        warnings,
        task,
    }
}

/// Re-stats an agent's logs and re-judges them (after a stop or a settle wait).
pub fn refresh_logs(
    view: &mut AgentView,
    writers: &HashMap<DevIno, Vec<i32>>,
    settle: Duration,
    now: SystemTime,
) {
    let mut facts = Vec::new();
    let mut ids = Vec::new();
    // A task folder that can no longer be opened as the same folder: no log is judged.
    let task_dir = view.task.handle().ok();
    let mut buf = String::new();
    for (old, old_id) in view.facts.logs.iter().zip(&view.log_ids) {
        let Some(Ok(Some(log))) = task_dir.as_deref().map(|d| {
            stat_rel(&view.task, old.path.clone(), &mut buf, |rel| {
                d.metadata(rel)
            })
        }) else {
            continue;
        };
        let (id, mtime) = (log.id, log.mtime);
        // A file replaced under the same name since the first look starts over.
        let state = if id != *old_id {
            FileState::Busy("replaced since the first look".into())
        } else {
            file_state(mtime, writers.get(&id), settle, now)
        };
        facts.push(FileFact {
            path: old.path.clone(),
            state,
            mtime,
        });
        ids.push(id);
    }
    view.facts.logs = facts;
    view.log_ids = ids;
}

/// Remembers the sessions agents were seen alive in (not those of ambiguous ids, whose
/// session may be another agent's), so their helpers are found after the session ends.
pub fn remember_panes(
    views: &[TaskView],
    ambiguous: &std::collections::BTreeMap<AgentId, String>,
    map: &mut PaneMap,
) {
    for agent in views.iter().flat_map(|v| &v.agents) {
        if let Some(seen) = &agent.seen_session
            && !ambiguous.contains_key(&agent.id)
        {
            map.observe(&agent.id, SessionIdentity::clone(seen));
        }
    }
}

#[cfg(test)]
mod tests;
