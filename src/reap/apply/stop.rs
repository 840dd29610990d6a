//! Stopping what runs: agents' process sets and sessions, and orphan sessions, each only
//! on the evidence that ties the processes to it (`procs::evidence`).

use super::Outcome;
use crate::config::Config;
use crate::decide::{Decision, SessionFact};
use crate::observe::TaskView;
use crate::procs::evidence::fresh_sets_from;
use crate::procs::openfiles::DevIno;
use crate::procs::{
    Evidence, KillSession, ProcTable, ProcessSource, SetContext, StopPolicy, StopRequest, Tmux,
};
use crate::reap::events::{OrphanOutcome, PassEvent};
use crate::reap::report::OrphanReport;
use std::collections::HashSet;
use std::path::PathBuf;

/// Concurrent `tmux kill-session` calls at most.
const KILL_THREADS: usize = 8;

/// Runs `kill-session` for each name on a few threads: many sessions must not queue behind each other.
fn kill_sessions(tmux: &dyn Tmux, names: &[String]) -> Vec<Result<KillSession, String>> {
    crate::reap::parallel::map_ordered(names.iter().collect(), KILL_THREADS, |n| {
        tmux.kill_session(n).map_err(|e| e.to_string())
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

/// Stops every agent whose decision says so; returns their (task, agent) indexes and what
/// happened to each (the other agents' outcomes are made after the views go). Processes
/// first (rescanning for newcomers), then the sessions, then one fresh look after the last
/// signal: only that look may say nothing of an agent is left.
pub fn stop_agents(
    views: &[TaskView],
    decisions: &[Vec<Decision>],
    procs: &SetContext<'_>,
    (tmux, source): (&dyn Tmux, &dyn ProcessSource),
    config: &Config,
) -> Vec<((usize, usize), Outcome)> {
    let mut which = Vec::new();
    let mut requests = Vec::new();
    let mut evidence: Vec<&Evidence> = Vec::new();
    for (t, view) in views.iter().enumerate() {
        for (a, agent) in view.agents.iter().enumerate() {
            if decisions[t][a].stops() {
                which.push((t, a));
                let mut request = StopRequest::new(agent.id.clone(), agent.processes.clone());
                request.cgroups = own_cgroups(source, procs, agent);
                requests.push(request);
                evidence.push(&agent.evidence);
            }
        }
    }
    if which.is_empty() {
        return Vec::new();
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
    let mut outcomes = vec![Outcome::default(); which.len()];
    for (i, (out, report)) in outcomes.iter_mut().zip(&reports).enumerate() {
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
        let out = &mut outcomes[*i];
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
    which.into_iter().zip(outcomes).collect()
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
