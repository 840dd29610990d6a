//! Carrying out decisions: stopping agents, archiving logs, deleting prompts, writing registries.

use crate::config::Config;
use crate::decide::{Action, Decision, SessionFact};
use crate::journal::Journal;
use crate::model::format_timestamp;
use crate::observe::TaskView;
use crate::procs::evidence::fresh_sets_from;
use crate::procs::openfiles::DevIno;
use crate::procs::{
    Evidence, KillSession, ProcTable, ProcessSource, SetContext, StopPolicy, StopRequest, Tmux,
};
use crate::reap::events::{OrphanOutcome, PassEvent, StatusStore};
use crate::reap::outcome::Outcome;
use crate::reap::report::OrphanReport;
use crate::registry::edit::{
    AgentChange, Applied, CleanupRecord, GlobalChange, GlobalEdit, TaskEdit,
};
use crate::registry::sqlite::tasks::{BaseDb, StatusWrite, StatusWritten, apply_transitions};
use crate::registry::{UpdateOptions, UpdateOutcome, rewrite_registry};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// Concurrent `tmux kill-session` calls at most.
const KILL_THREADS: usize = 8;

mod files;

/// Runs `kill-session` for each name on a few threads: many sessions must not queue behind each other.
pub fn kill_sessions(tmux: &dyn Tmux, names: &[String]) -> Vec<Result<KillSession, String>> {
    if names.is_empty() {
        return Vec::new();
    }
    let chunk = names.len().div_ceil(KILL_THREADS);
    std::thread::scope(|scope| {
        let handles: Vec<_> = names
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|n| tmux.kill_session(n).map_err(|e| e.to_string()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("kill-session thread panicked"))
            .collect()
    })
}

/// The cgroups that hold one agent's pane processes and nothing else (see `procs::cgroup`).
fn own_cgroups(
    source: &dyn ProcessSource,
    procs: &SetContext<'_>,
    agent: &crate::observe::AgentView,
) -> Vec<PathBuf> {
    if agent.pane_pids.is_empty() {
        return Vec::new();
    }
    let own = agent.session_name();
    let set: HashSet<i32> = agent.processes.iter().map(|k| k.pid).collect();
    let others: Vec<i32> = procs
        .all_panes()
        .filter(|(name, _)| *name != own)
        .map(|(_, pid)| pid)
        .chain(procs.protected.iter().copied())
        .collect();
    source.agent_cgroups(&agent.pane_pids, &set, &others)
}

/// Stops every agent whose decision says so; returns their (task, agent) indexes.
/// Processes first (rescanning for newcomers), then the sessions, then one fresh look
/// after the last signal: only that look may say nothing of an agent is left.
pub fn stop_agents(
    views: &[TaskView],
    decisions: &[Vec<Decision>],
    procs: &SetContext<'_>,
    (tmux, source): (&dyn Tmux, &dyn ProcessSource),
    config: &Config,
    outcomes: &mut [Vec<Outcome>],
) -> Vec<(usize, usize)> {
    let mut which = Vec::new();
    let mut requests = Vec::new();
    let mut evidence: Vec<&Evidence> = Vec::new();
    for (t, view) in views.iter().enumerate() {
        for (a, agent) in view.agents.iter().enumerate() {
            if decisions[t][a]
                .actions
                .iter()
                .any(|x| matches!(x, Action::Stop { .. }))
            {
                which.push((t, a));
                let mut request = StopRequest::new(agent.id.clone(), agent.processes.clone());
                request.cgroups = own_cgroups(source, procs, agent);
                requests.push(request);
                evidence.push(&agent.evidence);
            }
        }
    }
    if which.is_empty() {
        return which;
    }
    let policy = StopPolicy {
        term_steps: config.term_grace.clone(),
    };
    let logs: HashSet<DevIno> = evidence
        .iter()
        .flat_map(|e| e.logs.iter().copied())
        .collect();
    let read_env = evidence.iter().any(|e| e.has_sessions());
    let mut env_cache = crate::procs::environ::EnvCache::default();
    let mut rescan = || {
        let env = read_env.then_some(&mut env_cache);
        fresh_sets_from(source, procs, &evidence, &logs, env)
    };
    let reports = source.stop(&requests, procs.table, &policy, &mut rescan);
    // Sessions go after their processes, so nothing gets a SIGHUP mid-shutdown.
    let sessions: Vec<(usize, String)> = which
        .iter()
        .enumerate()
        .filter(|(_, (t, a))| {
            matches!(
                views[*t].agents[*a].facts.session,
                SessionFact::Alive { .. }
            )
        })
        .map(|(i, (t, a))| (i, views[*t].agents[*a].session_name()))
        .collect();
    let names: Vec<String> = sessions.iter().map(|(_, n)| n.clone()).collect();
    let kills = kill_sessions(tmux, &names);
    // The fresh look after the last signal (kill-session's SIGHUP included).
    let last_look = rescan();
    for (i, (&(t, a), report)) in which.iter().zip(&reports).enumerate() {
        let out = &mut outcomes[t][a];
        out.stopped = true;
        out.escalated = Some(report.escalated_to_sigkill);
        out.checked = evidence[i].checked(read_env);
        let left: Vec<String> = match &last_look {
            Some((fresh, sets)) => sets[i]
                .iter()
                .filter_map(|k| fresh.get(k.pid).filter(|p| p.state != 'Z'))
                .map(|p| {
                    let argv0 = p.cmdline.first().map(String::as_str).unwrap_or("?");
                    format!("{} ({argv0})", p.pid)
                })
                .collect(),
            None => vec!["/proc unreadable after the stop: nothing verified".into()],
        };
        out.survivors = left.len().max(report.survivors.len());
        // A pane's defunct process waits for tmux (its parent) to reap it, which tmux does on
        // its own time; like init's, that is not the agent's leftover.
        out.reaped = out.survivors == 0
            && report
                .defunct
                .iter()
                .all(|(_, ppid)| *ppid <= 1 || procs.protected.contains(ppid));
        out.defunct = report
            .defunct
            .iter()
            .map(|(pid, ppid)| format!("{pid} (parent {ppid})"))
            .collect();
        out.done.push(PassEvent::Stopped {
            processes: report.signalled.len(),
            joined: report.joined,
            escalated: report.escalated_to_sigkill,
        });
        for dir in &report.cgroups_killed {
            out.done.push(PassEvent::CgroupKilled {
                cgroup: dir.clone(),
            });
        }
        out.errors.extend(report.cgroup_errors.iter().cloned());
        for (key, why) in &report.refused {
            out.done.push(PassEvent::LeftAlone {
                pid: key.pid,
                why: why.clone(),
            });
        }
        if !left.is_empty() {
            out.errors
                .push(format!("still running after the stop: {}", left.join(", ")));
        } else if !report.survivors.is_empty() {
            out.errors.push(format!(
                "{} process(es) survived SIGKILL",
                report.survivors.len()
            ));
        }
    }
    for ((i, name), kill) in sessions.iter().zip(kills) {
        let (t, a) = which[*i];
        let out = &mut outcomes[t][a];
        match kill {
            Ok(KillSession::Killed) => {
                out.session_killed = true;
                out.done.push(PassEvent::SessionKilled {
                    session: name.clone(),
                });
            }
            Ok(KillSession::AlreadyGone) => {
                // The session ended with its last pane process, which we just stopped.
                out.session_killed = true;
                out.done.push(PassEvent::SessionEnded {
                    session: name.clone(),
                });
            }
            Err(e) => out.errors.push(format!("kill-session {name}: {e}")),
        }
    }
    which
}

/// Forgets the remembered sessions of agents that are cleaned with nothing left running,
/// and (in a full pass that read every registry) of ids no registry lists any more.
pub fn forget_cleaned(
    views: &[TaskView],
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
            let nothing_left = agent.facts.live_processes == 0 && out.survivors == 0;
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

/// Stops the orphan sessions marked `stop`: their panes' process trees (as for an agent),
/// then the sessions.
pub fn stop_orphans(
    orphans: &mut [OrphanReport],
    table: &ProcTable,
    (tmux, source): (&dyn Tmux, &dyn ProcessSource),
    config: &Config,
) {
    let chosen: Vec<&mut OrphanReport> = orphans.iter_mut().filter(|o| o.stop).collect();
    if chosen.is_empty() {
        return;
    }
    let requests: Vec<StopRequest> = chosen
        .iter()
        .map(|o| {
            StopRequest::new(
                // Only a label for the report: the set comes from the panes, not from the name.
                crate::model::AgentId::parse(o.session.trim_start_matches("agent_"))
                    .unwrap_or_else(|_| crate::model::AgentId::parse("orphan").expect("valid id")),
                table
                    .descendants_and_self(o.pane_pids.iter().copied().filter(|&p| p > 1))
                    .into_iter()
                    .filter_map(|pid| table.get(pid).map(|p| p.key()))
                    .collect(),
            )
        })
        .collect();
    let policy = StopPolicy {
        term_steps: config.term_grace.clone(),
    };
    let reports = source.stop(&requests, table, &policy, &mut || None);
    let names: Vec<String> = chosen.iter().map(|o| o.session.clone()).collect();
    let kills = kill_sessions(tmux, &names);
    for ((orphan, report), kill) in chosen.into_iter().zip(reports).zip(kills) {
        let processes = report.signalled.len();
        orphan.outcome = Some(match kill {
            Ok(KillSession::Killed) => OrphanOutcome::SessionKilled { processes },
            Ok(KillSession::AlreadyGone) => OrphanOutcome::SessionEnded { processes },
            Err(error) => OrphanOutcome::KillFailed { processes, error },
        });
    }
}

/// Archives and deletes files, then records everything in the task registry under its lock.
/// Returns whether the registry was written.
pub fn apply_task(
    view: &TaskView,
    decisions: &[Decision],
    outcomes: &mut [Outcome],
    config: &Config,
    opts: &UpdateOptions,
    journal: Option<&Mutex<Journal>>,
    now: SystemTime,
) -> Result<bool, String> {
    // DB-backed tasks had their transitions written before (one transaction per base).
    let db_backed = view.backend == crate::model::Backend::Sqlite;
    // Files first (archives, prompts), made durable before the registry says they moved.
    let earlier = apply_files(view, decisions, outcomes, config, journal);
    let stamp = format_timestamp(now);
    let mut changes = Vec::new();
    let mut change_of = Vec::new();
    for (a, ((agent, decision), earlier)) in
        view.agents.iter().zip(decisions).zip(earlier).enumerate()
    {
        let out = &mut outcomes[a];
        let mut set_status = None;
        let mut record = false;
        for action in &decision.actions {
            match action {
                Action::SetStatus {
                    status,
                    termination_reason,
                } => set_status = Some((*status, *termination_reason)),
                Action::RecordCleanup => record = true,
                Action::Archive { .. } | Action::DeletePrompt { .. } | Action::Stop { .. } => {}
            }
        }
        if set_status.is_none() && !record {
            continue;
        }
        // Stopped agents had their facts refreshed after the stop, so this holds for both.
        let no_zombies = agent.facts.live_processes == 0 && out.survivors == 0 && out.reaped;
        let cleanup = record.then(|| CleanupRecord {
            success: out.errors.is_empty() && no_zombies,
            tmux_session_killed: out.session_killed,
            prompt_file_deleted: out.prompt_deleted,
            log_files_archived: !out.archived.is_empty(),
            verified_no_zombies: no_zombies,
            errors: out.errors.clone(),
            archived_files: archived_files(&out.archived, earlier),
            escalated_to_sigkill: out.escalated,
            defunct_processes: out.defunct.clone(),
            processes_checked: if out.checked.is_empty() {
                agent.checked.clone()
            } else {
                out.checked.clone()
            },
        });
        changes.push(AgentChange {
            id: agent.id.to_string(),
            expect_status: agent.registry_status.clone(),
            set_status,
            cleanup,
            now: stamp.clone(),
        });
        change_of.push(a);
    }
    if outcomes.iter().any(|o| !o.archived.is_empty()) {
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
    match rewrite_registry(&path, opts, &mut TaskEdit::new(&changes)) {
        Ok((written, applied)) => {
            for ((a, change), applied) in change_of.iter().zip(&changes).zip(applied) {
                let out = &mut outcomes[*a];
                match applied {
                    Applied::Done => {
                        out.status_applied = change.set_status.map(|(s, _)| s.to_string());
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

/// Prompt deletions per thread: a task with more deletes them on threads of their own.
const PROMPT_CHUNK: usize = 16;

/// Threads for one task's prompt deletions at most. An unlink waits on the disk (inode
/// eviction, and a synchronous discard where the filesystem is mounted `discard`), and
/// those waits overlap across threads (40,000 unlinks on this disk kind: 4.4 s on one
/// thread, 2.0 s on four, 1.5 s on sixteen; `/work/prof/unl.py`).
const PROMPT_THREADS: usize = 16;

/// Carries out the agents' file actions (archives, prompt deletions), then fsyncs every
/// folder touched once. Returns, per agent that records its cleanup, the archives of its
/// logs an earlier pass made.
///
/// The moves into the archive run on this thread, in agent order: cross-folder renames
/// serialize on the filesystem's rename lock, so more threads only spin on it (120,000
/// renames: 1.3 s on one thread, 1.8 s on two). A task's many prompt deletions (renames
/// within their folder and unlinks, which wait on the disk) run meanwhile on threads of
/// their own; agents' files are disjoint.
fn apply_files(
    view: &TaskView,
    decisions: &[Decision],
    outcomes: &mut [Outcome],
    config: &Config,
    journal: Option<&Mutex<Journal>>,
) -> Vec<Vec<PathBuf>> {
    let asking = decisions
        .iter()
        .flat_map(|d| &d.actions)
        .filter(|a| matches!(a, Action::RecordCleanup | Action::Archive { .. }))
        .count();
    // Many archives and records each ask what the archive folder holds (a compressed
    // archive of a log, the logs an earlier pass archived): one listing of it answers
    // "surely not" for most, instead of a lookup per log.
    let listing = (asking >= files::LIST_ABOVE)
        .then(|| files::archive_listing(view, config))
        .flatten()
        .map(std::sync::Arc::new);
    let prompts: Vec<(usize, &Path)> = decisions
        .iter()
        .enumerate()
        .flat_map(|(a, d)| {
            d.actions.iter().filter_map(move |x| match x {
                Action::DeletePrompt { path } => Some((a, path.as_path())),
                _ => None,
            })
        })
        .collect();
    let prompt_threads = (prompts.len() / PROMPT_CHUNK).min(PROMPT_THREADS);
    std::thread::scope(|scope| {
        let deleting: Vec<_> = if prompt_threads > 1 {
            prompts
                .chunks(prompts.len().div_ceil(prompt_threads))
                .map(|part| {
                    scope.spawn(move || {
                        let mut files = files::TaskFiles::new(view, config, None);
                        part.iter()
                            .map(|&(a, path)| (a, path, files.delete_prompt(path)))
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
        // Where each agent's prompt deletion belongs in its outcome (events, errors), for
        // the ones done on the other threads.
        let mut slots = vec![(0, 0); if inline { 0 } else { view.agents.len() }];
        for (a, ((agent, decision), out)) in view
            .agents
            .iter()
            .zip(decisions)
            .zip(outcomes.iter_mut())
            .enumerate()
        {
            for action in &decision.actions {
                match action {
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
                files.archives_of(agent, &out.archived)
            } else {
                Vec::new()
            });
        }
        for handle in deleting {
            for (a, path, deleted) in handle.join().expect("prompt thread panicked") {
                files.record_prompt(path, deleted, &mut outcomes[a], slots[a]);
            }
        }
        files::sync_all([&mut files]);
        earlier
    })
}

/// What the record lists as archived: this pass's archives, then the archives of the
/// agent's logs already in its archive folder (a pass that died before recording, or one
/// that archived a log while another still settled). Each is checked to be there now: the
/// record lists what exists, not what was once attempted.
fn archived_files(this_pass: &[PathBuf], on_disk: Vec<PathBuf>) -> Vec<String> {
    let mut files: Vec<String> = this_pass.iter().map(|p| path_string(p)).collect();
    for path in on_disk {
        let listed = path_string(&path);
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
pub fn update_global(
    path: &Path,
    views: &[TaskView],
    outcomes: &[Vec<Outcome>],
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
            let status = out
                .status_applied
                .as_deref()
                .unwrap_or(agent.registry_status.as_str());
            let status = crate::model::TERMINAL_STATUSES
                .iter()
                .find(|s| **s == status)?;
            Some(GlobalChange {
                id: agent.id.to_string(),
                status,
                now: stamp.clone(),
            })
        })
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
    views: &[TaskView],
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
                    } => Some((*status, *termination_reason)),
                    _ => None,
                }) else {
                    continue;
                };
                writes.push(StatusWrite {
                    task: view.task.clone(),
                    agent_id: agent.id.to_string(),
                    expect_status: agent.registry_status.clone(),
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
                            out.status_applied = Some(write.status.to_string());
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
