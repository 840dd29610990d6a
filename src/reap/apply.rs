//! Carrying out decisions: stopping agents, archiving logs, deleting prompts, writing registries.

use crate::agent_file::TaskPath;
use crate::config::Config;
use crate::decide::{Action, Decision};
use crate::journal::Journal;
use crate::model::format_timestamp;
use crate::observe::{DecidedAgent, TaskView};
use crate::reap::events::{PassEvent, StatusStore};
use crate::reap::outcome::Outcome;
use crate::reap::parallel::Pool;
use crate::registry::edit::{
    AgentChange, Applied, CleanupRecord, GlobalChange, GlobalEdit, Record, TaskEdit,
};
use crate::registry::sqlite::tasks::{BaseDb, StatusWrite, StatusWritten, apply_transitions};
use crate::registry::{UpdateOptions, UpdateOutcome, rewrite_registry};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

mod files;
mod stop;

pub use stop::{stop_agents, stop_orphans};

/// Forgets the remembered sessions of agents that are cleaned with nothing left running,
/// and (in a full pass that read every registry) of ids no registry lists any more.
pub fn forget_cleaned(
    views: &[TaskView<DecidedAgent>],
    decisions: &[Vec<Decision>],
    outcomes: &[Vec<Outcome>],
    full_pass: bool,
    map: &mut crate::procs::panemap::PaneMap,
) {
    let mut listed: HashSet<&str> = HashSet::new();
    for (t, view) in views.iter().enumerate() {
        for (a, agent) in view.agents.iter().enumerate() {
            listed.insert(agent.id.as_str());
            let out = &outcomes[t][a];
            let nothing_left = agent.live_processes == 0 && out.survivors == 0;
            let cleaned = decisions[t][a].class == crate::decide::AgentClass::Cleaned
                || (out.recorded && out.errors.is_empty());
            if cleaned && nothing_left {
                map.forget(agent.id.as_str());
            }
        }
        listed.extend(view.duplicates.iter().map(|d| d.as_str()));
        listed.extend(view.quiet.iter().map(|q| q.id.as_str()));
    }
    if full_pass && views.iter().all(|v| v.error.is_none()) {
        let gone: Vec<String> = map
            .ids()
            .filter(|id| !listed.contains(id))
            .map(String::from)
            .collect();
        for id in gone {
            map.forget(&id);
        }
    }
}

/// Archives and deletes files, then records everything in the task registry under its lock.
/// Returns whether the registry was written.
/// `prompt_pool`: the pass's threads for prompt deletions (see [`prompt_pool_threads`]).
#[allow(clippy::too_many_arguments)]
pub fn apply_task<'p>(
    view: &'p TaskView<DecidedAgent>,
    decisions: &'p [Decision],
    outcomes: &mut [Outcome],
    config: &'p Config,
    opts: &UpdateOptions,
    journal: Option<&Mutex<Journal>>,
    now: SystemTime,
    prompt_pool: &Pool<'p>,
) -> Result<bool, String> {
    // DB-backed tasks had their transitions written before (one transaction per base).
    let db_backed = view.backend == crate::model::Backend::Sqlite;
    // Files first (archives, prompts), made durable before the registry says they moved.
    let earlier = apply_files(view, decisions, outcomes, config, journal, prompt_pool);
    let stamp: Arc<str> = format_timestamp(now).into();
    // Sized once: 40,000 changes grown by doubling held 8 MB at the last doubling.
    let mut changes = Vec::with_capacity(view.agents.len());
    let mut change_of = Vec::with_capacity(view.agents.len());
    for (a, (agent, decision)) in view.agents.iter().zip(decisions).enumerate() {
        let mut set_status = None;
        let mut record = false;
        for action in &decision.actions {
            match action {
                Action::SetStatus {
                    status,
                    termination_reason,
                } => set_status = Some((status, termination_reason)),
                Action::RecordCleanup => record = true,
                Action::Archive { .. } | Action::DeletePrompt { .. } | Action::Stop { .. } => {}
            }
        }
        if set_status.is_none() && !record {
            continue;
        }
        changes.push(AgentChange {
            id: agent.id.shared(),
            expect_status: agent.registry_status.clone(),
            set_status,
            // Made from the outcome when the entry is written (`cleanup_record`).
            cleanup: record.then_some(Record::Made),
            now: stamp.clone(),
        });
        change_of.push(a);
    }
    if outcomes.iter().any(|o| o.archives_made() > 0) {
        crate::failpoint::hit_in(crate::failpoint::AFTER_ARCHIVE, &view.task.dir);
    }
    if db_backed {
        // The DB holds no cleanup record: what is left on disk is the record.
        for (a, decision) in decisions.iter().enumerate() {
            if decision.actions.contains(&Action::RecordCleanup) && outcomes[a].errors.is_empty() {
                outcomes[a].recorded = true;
            }
        }
        return Ok(false);
    }
    let drift = view.active_count.is_some() && view.active_count != view.expected_active;
    if changes.is_empty() && !drift {
        return Ok(false);
    }
    let path = view.task.registry();
    let outcomes_read: &[Outcome] = outcomes;
    let maker = |c: usize| {
        let a = change_of[c];
        cleanup_record(&view.agents[a], &outcomes_read[a], &earlier[a])
    };
    let edited = rewrite_registry(&path, opts, &mut TaskEdit::with_records(&changes, &maker));
    match edited {
        Ok((written, applied)) => {
            for ((a, change), applied) in change_of.iter().zip(&changes).zip(applied) {
                let out = &mut outcomes[*a];
                match applied {
                    Applied::Done => {
                        out.status_applied = change.set_status.map(|(s, _)| s);
                        out.recorded = change.cleanup.is_some();
                        if let Some((s, reason)) = change.set_status {
                            out.done.push(PassEvent::Marked { status: s, reason });
                        }
                    }
                    Applied::StatusMoved => out.done.push(PassEvent::StatusKept {
                        store: StatusStore::Registry,
                    }),
                    Applied::Missing => out
                        .errors
                        .push("agent entry vanished from the registry meanwhile".into()),
                }
            }
            Ok(written == UpdateOutcome::Written)
        }
        Err(e) => {
            for a in change_of {
                outcomes[a]
                    .errors
                    .push(format!("registry not updated: {e}"));
            }
            Err(e.to_string())
        }
    }
}

/// Prompt deletions per thread: a task with more deletes them on the pass's prompt threads.
const PROMPT_CHUNK: usize = 16;

/// Threads for one task's prompt deletions at most, and for the pass's prompt pool. An
/// unlink waits on the disk (inode eviction, and a synchronous discard where the
/// filesystem is mounted `discard`), and those waits overlap across threads (40,000
/// unlinks alone on this disk kind: 4.4 s on one thread, 2.0 s on four, 1.5 s on
/// sixteen; `/work/prof/unl.py`). Beside the moves into the archive, four do better than
/// sixteen: the rename-aside, look and unlink of each prompt are kernel time on the same
/// two cores, and sixteen threads contending for the task folder's lock spin on it while
/// the move thread waits for a core (40,000 finished agents, `once`: 3.33-3.55 s with
/// four, 4.03-4.11 s with sixteen; 10,000 in 100 tasks: 0.77 s and 0.81 s;
/// `/work/prof/med.sh` and the cost bench).
const PROMPT_THREADS: usize = 4;

/// The prompt threads for these decisions (a task's, or the pass's pool): none below one
/// chunk's worth of prompts to delete (each task then deletes its own), at most
/// `PROMPT_THREADS`.
pub fn prompt_pool_threads<'d>(decisions: impl Iterator<Item = &'d Decision>) -> usize {
    let prompts = decisions
        .flat_map(|d| &d.actions)
        .filter(|a| matches!(a, Action::DeletePrompt { .. }))
        .count();
    (prompts / PROMPT_CHUNK).min(PROMPT_THREADS)
}

/// Carries out the agents' file actions (archives, prompt deletions), then fsyncs every
/// folder touched once. Returns, per agent that records its cleanup, the archives of its
/// logs an earlier pass made.
///
/// The moves into the archive run on this thread, in agent order: cross-folder renames
/// serialize on the filesystem's rename lock, so more threads only spin on it (120,000
/// renames: 1.3 s on one thread, 1.8 s on two). A task's many prompt deletions (renames
/// within their folder and unlinks, which wait on the disk) run meanwhile on the pass's
/// prompt threads; agents' files are disjoint.
fn apply_files<'p>(
    view: &'p TaskView<DecidedAgent>,
    decisions: &'p [Decision],
    outcomes: &mut [Outcome],
    config: &'p Config,
    journal: Option<&Mutex<Journal>>,
    prompt_pool: &Pool<'p>,
) -> Vec<Vec<PathBuf>> {
    let asking = decisions
        .iter()
        .flat_map(|d| d.actions.iter())
        .filter(|a| matches!(a, Action::RecordCleanup | Action::Archive { .. }))
        .count();
    // Many archives and records each ask what the archive folder holds (a compressed
    // archive of a log, the logs an earlier pass archived): one listing of it answers
    // "surely not" for most, instead of a lookup per log.
    let listing = (asking >= files::LIST_ABOVE)
        .then(|| files::archive_listing(view, config))
        .flatten()
        .map(std::sync::Arc::new);
    // Even beside the other tasks' threads: on aged files (a discard per unlink) 100 tasks
    // of 100 agents took 1.18 s with these deletions on threads beside each task's, 1.28 s
    // with each task's unlinks on the task's own thread (`/work/prof/ab.sh 10k 5 sync`).
    let prompt_threads = prompt_pool_threads(decisions.iter());
    let deleting: Vec<_> = if prompt_threads > 1 {
        let prompts: Vec<(usize, TaskPath)> = decisions
            .iter()
            .enumerate()
            .flat_map(|(a, d)| {
                d.actions.iter().filter_map(move |x| match x {
                    Action::DeletePrompt { path } => Some((a, path)),
                    _ => None,
                })
            })
            .collect();
        let per_thread = prompts.len().div_ceil(prompt_threads);
        let mut prompts = prompts.into_iter();
        (0..prompt_threads)
            .map(|_| {
                let part: Vec<_> = prompts.by_ref().take(per_thread).collect();
                prompt_pool.run(move || {
                    let mut files = files::TaskFiles::new(view, config, None);
                    part.into_iter()
                        .map(|(a, path)| {
                            let deleted = files.delete_prompt(&path);
                            (a, path, deleted)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    let inline = deleting.is_empty();
    let mut files = files::TaskFiles::new(view, config, listing);
    let mut earlier = Vec::with_capacity(view.agents.len());
    // Where each agent's prompt deletion belongs in its outcome (events, errors), for the
    // ones done on the prompt threads.
    let mut slots = vec![(0, 0); if inline { 0 } else { view.agents.len() }];
    for (a, ((agent, decision), out)) in view
        .agents
        .iter()
        .zip(decisions)
        .zip(outcomes.iter_mut())
        .enumerate()
    {
        for action in &decision.actions {
            match &action {
                // One archive per log: a log whose archive exists is appended to it.
                Action::Archive { path } => files.archive(path, journal, out),
                Action::DeletePrompt { path } if inline => {
                    let deleted = files.delete_prompt(path);
                    files.record_prompt(path, deleted, out, (out.done.len(), out.errors.len()));
                }
                Action::DeletePrompt { .. } => slots[a] = (out.done.len(), out.errors.len()),
                _ => {}
            }
        }
        earlier.push(if decision.actions.contains(&Action::RecordCleanup) {
            files.compress_leftovers(agent, journal, out);
            files.archives_of(agent, &out.archived())
        } else {
            Vec::new()
        });
    }
    for pending in deleting {
        for (a, path, deleted) in pending.wait() {
            files.record_prompt(&path, deleted, &mut outcomes[a], slots[a]);
        }
    }
    files::sync_all([&mut files]);
    earlier
}

/// An agent's `auto_cleanup_result`, from what this pass did to it (`out`) and the
/// archives of its logs an earlier pass made (`earlier`). Stopped agents had their facts
/// refreshed after the stop, so this holds for both.
fn cleanup_record(agent: &DecidedAgent, out: &Outcome, earlier: &[PathBuf]) -> CleanupRecord {
    let no_zombies = agent.live_processes == 0 && out.survivors == 0 && out.reaped;
    CleanupRecord {
        success: out.errors.is_empty() && no_zombies,
        tmux_session_killed: out.session_killed,
        prompt_file_deleted: out.prompt_deleted,
        log_files_archived: out.archives_made() > 0,
        verified_no_zombies: no_zombies,
        errors: out.errors.clone(),
        archived_files: archived_files(&agent.task.dir, &out.archived(), earlier),
        escalated_to_sigkill: out.escalated,
        defunct_processes: out.defunct.clone(),
        processes_checked: if out.checked.is_empty() {
            agent.checked()
        } else {
            out.checked.clone()
        },
    }
}

/// What the record lists as archived: this pass's archives, then the archives of the
/// agent's logs already in its archive folder (a pass that died before recording, or one
/// that archived a log while another still settled). Each is checked to be there now: the
/// record lists what exists, not what was once attempted.
fn archived_files(task_dir: &Path, this_pass: &[TaskPath], on_disk: &[PathBuf]) -> Vec<String> {
    let mut files: Vec<String> = this_pass
        .iter()
        .map(|p| path_string(&p.whole(task_dir)))
        .collect();
    for path in on_disk {
        let listed = path_string(path);
        if !files.contains(&listed) {
            files.push(listed);
        }
    }
    files
}

fn path_string(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Mirrors this pass's transitions into `<base>/registry/GLOBAL_REGISTRY.json`.
/// `live`: the ids the global registry counted live when the pass began (see
/// `reap::mirror`); quiet agents among them get their mirror restored too.
pub fn update_global(
    path: &Path,
    (views, outcomes): (&[TaskView<DecidedAgent>], &[Vec<Outcome>]),
    live: Option<&HashSet<Box<str>>>,
    base: &Path,
    opts: &UpdateOptions,
    now: SystemTime,
) -> Result<bool, String> {
    // `<base>/registry/` is reached beneath the base, never through a symlink.
    let exists = crate::fs::open_parent_below(path, 2).and_then(|(dir, name)| dir.exists(name));
    match exists {
        Ok(true) => {}
        Ok(false) => return Ok(false),
        Err(e) if e.is_not_found() => return Ok(false),
        Err(e) => return Err(e.to_string()),
    }
    let stamp = format_timestamp(now);
    let changes: Vec<GlobalChange> = views
        .iter()
        .zip(outcomes)
        .filter(|(v, _)| v.task.base == base)
        .flat_map(|(v, outs)| v.agents.iter().zip(outs))
        .filter_map(|(agent, out)| {
            // This pass's transition, else the task registry's terminal status: a mirror an
            // unlocked global rewrite wiped is restored (entries already terminal stay as
            // they are), so `active_agents` does not count finished agents forever.
            let status = out.status_applied.unwrap_or(&agent.registry_status);
            let status = crate::model::TERMINAL_STATUSES
                .iter()
                .find(|s| **s == status)?;
            Some(GlobalChange {
                id: agent.id.to_string(),
                status,
                now: stamp.clone(),
            })
        })
        .chain(
            views
                .iter()
                .filter(|v| v.task.base == base)
                .flat_map(|v| &v.quiet)
                .filter(|q| live.is_some_and(|l| l.contains(q.id.as_str())))
                .map(|q| GlobalChange {
                    id: q.id.to_string(),
                    status: q.status(),
                    now: stamp.clone(),
                }),
        )
        .collect();
    rewrite_registry(path, opts, &mut GlobalEdit::new(&changes))
        .map(|(written, ())| written == UpdateOutcome::Written)
        .map_err(|e| e.to_string())
}

/// Writes the status changes of DB-backed tasks, one transaction per base, and records
/// what became of each in its agent's outcome. Returns the tasks to skip this round: those
/// of a base whose DB another writer held past the timeout.
pub fn apply_db_transitions(
    state_dbs: &HashMap<PathBuf, BaseDb>,
    views: &[TaskView<DecidedAgent>],
    decisions: &[Vec<Decision>],
    outcomes: &mut [Vec<Outcome>],
    opts: &UpdateOptions,
    now: SystemTime,
    errors: &mut Vec<String>,
) -> HashSet<usize> {
    let mut skip = HashSet::new();
    for (base, db) in state_dbs {
        let mut writes = Vec::new();
        let mut which = Vec::new();
        let mut tasks = Vec::new();
        for (t, view) in views.iter().enumerate() {
            if view.backend != crate::model::Backend::Sqlite || &view.task.base != base {
                continue;
            }
            tasks.push(t);
            for (a, (agent, decision)) in view.agents.iter().zip(&decisions[t]).enumerate() {
                let Some((status, reason)) = decision.actions.iter().find_map(|x| match x {
                    Action::SetStatus {
                        status,
                        termination_reason,
                    } => Some((status, termination_reason)),
                    _ => None,
                }) else {
                    continue;
                };
                writes.push(StatusWrite {
                    task: view.task.clone(),
                    agent_id: agent.id.to_string(),
                    expect_status: agent.registry_status.to_string(),
                    status,
                    reason,
                });
                which.push((t, a));
            }
        }
        match apply_transitions(&db.db, &writes, opts, now) {
            Ok(results) => {
                for ((&(t, a), write), result) in which.iter().zip(&writes).zip(results) {
                    let out = &mut outcomes[t][a];
                    match result {
                        StatusWritten::Done { side_errors } => {
                            out.status_applied = Some(write.status);
                            out.done.push(PassEvent::Marked {
                                status: write.status,
                                reason: write.reason,
                            });
                            out.errors.extend(side_errors);
                        }
                        StatusWritten::StatusMoved => out.done.push(PassEvent::StatusKept {
                            store: StatusStore::StateDb,
                        }),
                        StatusWritten::Missing => out
                            .errors
                            .push("agent row vanished from the state DB meanwhile".into()),
                    }
                }
            }
            Err(e) => {
                errors.push(format!(
                    "{e}; {} task(s) of {} wait for the next round",
                    tasks.len(),
                    base.display()
                ));
                skip.extend(tasks);
            }
        }
    }
    skip
}
