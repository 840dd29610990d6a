//! Transition hooks: a configured command run after a pass has committed agents' transitions.
//!
//! `config::hooks` is the configuration and argv templates (pure), `pending` the durable list of runs
//! owed, `exec` one process, `runner` the worker threads. Delivery is at least once: a run
//! is remembered before it starts and forgotten only when it exits 0, so hooks must be
//! idempotent.

use super::pending::{PendingRun, PendingStore};
use super::runner::{self, Runner};
use crate::config::Config;
use crate::config::hooks::{HookSpec, Values, resolve_program};
use serde::Serialize;
use std::path::PathBuf;
use std::time::SystemTime;

/// One committed (or, in `plan`, decided) transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub values: Values,
}

/// What the pass wants from its hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookMode {
    /// `plan` and dry runs: list what would run, run nothing.
    List,
    /// The daemon: start the runs on the worker threads and go on.
    Run,
    /// `once`: start them and wait for them (the process exits after the pass).
    RunAndWait,
}

/// One hook run in a pass report.
#[derive(Debug, Clone, Serialize)]
pub struct HookReport {
    pub hook: String,
    pub task_id: String,
    pub agent_id: String,
    pub status: String,
    pub argv: Vec<String>,
    /// `would run`, `pending retry`, `queued`, `ok`, `failed`, `given up`.
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The long-lived hook state of a reaper: its runner, started at the first pass that runs hooks.
#[derive(Default)]
pub struct Hooks {
    runner: Option<Runner>,
}

/// The settings the hooks read from the configuration.
struct HookSettings<'a> {
    specs: &'a [HookSpec],
    concurrency: usize,
    /// The state directory (where pending runs are kept), or why there is none.
    state_dir: Result<PathBuf, String>,
}

impl Hooks {
    /// Called once per pass after its transitions are committed (registry written, DB
    /// transaction done) and its file work is over. Returns the runs for the report; errors
    /// (store unreadable or unsaved) go to `errors`. Never blocks on a hook in `Run` mode.
    pub fn after_pass(
        &mut self,
        config: &Config,
        mode: HookMode,
        transitions: Vec<Transition>,
        errors: &mut Vec<String>,
    ) -> Vec<HookReport> {
        let settings = HookSettings {
            specs: &config.hooks,
            concurrency: config.hook_concurrency,
            state_dir: crate::state::state_dir(config).map_err(|e| e.to_string()),
        };
        let now = SystemTime::now();
        let wanted = runs_for(settings.specs, &transitions);
        if mode == HookMode::List {
            return list(settings, wanted, now, errors);
        }
        if settings.specs.is_empty() && self.runner.is_none() {
            return Vec::new();
        }
        let runner = match &self.runner {
            Some(r) => {
                if r.set_specs(settings.specs) {
                    warn_unrunnable(settings.specs);
                }
                r
            }
            None => {
                let dir = match settings.state_dir {
                    Ok(d) => d,
                    Err(e) => {
                        errors.push(format!("hooks not run: {e}"));
                        return Vec::new();
                    }
                };
                warn_unrunnable(settings.specs);
                match Runner::start(&dir, settings.specs.to_vec(), settings.concurrency) {
                    Ok((r, warning)) => {
                        if let Some(w) = warning {
                            errors.push(w.to_string());
                        }
                        self.runner.insert(r)
                    }
                    Err(e) => {
                        errors.push(format!("hooks not run: {e}"));
                        return Vec::new();
                    }
                }
            }
        };
        if mode == HookMode::Run {
            // Already logged by the workers; nobody waits for them here.
            drop(runner.take_finished());
        }
        let (queued, error) = runner.submit(wanted, now);
        if let Some(e) = error {
            errors.push(format!(
                "{e}; the hooks still run, but a crash before they succeed forgets them"
            ));
        }
        let spec_of = |name: &str| settings.specs.iter().find(|s| s.name == name);
        if mode == HookMode::Run {
            return queued
                .iter()
                .filter_map(|r| Some(report(r, spec_of(&r.hook)?, "queued", None)))
                .collect();
        }
        runner
            .wait_idle()
            .into_iter()
            .filter_map(|f| {
                let state = match (f.ok, f.gave_up) {
                    (true, _) => "ok",
                    (false, true) => "given up",
                    (false, false) => "failed",
                };
                let detail = (!f.ok).then(|| f.outcome.clone());
                let mut r = report(&f.run, spec_of(&f.run.hook)?, state, detail);
                r.attempt = Some(f.attempt);
                Some(r)
            })
            .collect()
    }
}

/// Every (hook, transition) pair whose `on` names the transition's status.
fn runs_for(specs: &[HookSpec], transitions: &[Transition]) -> Vec<PendingRun> {
    transitions
        .iter()
        .flat_map(|t| {
            specs
                .iter()
                .filter(|s| s.fires_on(&t.values.status))
                .map(|s| PendingRun::new(&s.name, t.values.clone()))
        })
        .collect()
}

fn report(run: &PendingRun, spec: &HookSpec, state: &str, detail: Option<String>) -> HookReport {
    HookReport {
        hook: run.hook.clone(),
        task_id: run.values.task_id.clone(),
        agent_id: run.values.agent_id.clone(),
        status: run.values.status.clone(),
        argv: spec.argv(&run.values),
        state: state.into(),
        attempt: None,
        detail,
    }
}

/// `plan`: the runs this pass would start, then the retries owed from earlier passes.
fn list(
    settings: HookSettings<'_>,
    wanted: Vec<PendingRun>,
    now: SystemTime,
    errors: &mut Vec<String>,
) -> Vec<HookReport> {
    let spec_of = |name: &str| settings.specs.iter().find(|s| s.name == name);
    let mut out: Vec<HookReport> = wanted
        .iter()
        .filter_map(|r| Some(report(r, spec_of(&r.hook)?, "would run", None)))
        .collect();
    let pending = match &settings.state_dir {
        Ok(dir) => PendingStore::peek(dir).unwrap_or_else(|e| {
            errors.push(format!("pending hook runs: {e}"));
            Vec::new()
        }),
        Err(_) => Vec::new(),
    };
    for run in pending {
        let Some(spec) = spec_of(&run.hook) else {
            continue;
        };
        let wait = runner::retry_in(&run, now);
        let when = if wait.is_zero() {
            "due now".to_string()
        } else {
            format!("due in {} s", wait.as_secs())
        };
        let detail = match &run.last_error {
            Some(e) => format!("{when}; last attempt: {e}"),
            None => when,
        };
        let mut r = report(&run, spec, "pending retry", Some(detail));
        r.attempt = Some(run.attempts + 1);
        out.push(r);
    }
    out
}

/// A hook that cannot start fails every run: say so when the hooks are (re)loaded.
fn warn_unrunnable(specs: &[HookSpec]) {
    for e in check_programs(specs).into_iter().filter_map(Result::err) {
        tracing::warn!("{e}; its runs fail until it is fixed");
    }
}

/// `validate`: each hook's program, resolved as it would be run; errors name the hook.
pub fn check_programs(specs: &[HookSpec]) -> Vec<Result<(String, PathBuf), String>> {
    let path = std::env::var_os("PATH");
    specs
        .iter()
        .map(|s| {
            resolve_program(s.program(), path.as_deref())
                .map(|p| (s.name.clone(), p))
                .map_err(|e| format!("hook {:?}: {e}", s.name))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(state: &std::path::Path) -> Config {
        let text = format!(
            "state_dir = {:?}\n[[hooks]]\nname = \"h\"\non = [\"failed\", \"terminated\"]\n\
             command = [\"/bin/sh\", \"-c\", \"exit 1\", \"x\", \"{{agent_id}}\", \"{{reason}}\"]\n",
            state.to_string_lossy()
        );
        Config::from_toml(&text, std::path::Path::new("t.toml")).unwrap()
    }

    fn transition(agent: &str, status: &str) -> Transition {
        Transition {
            values: Values {
                task_id: "TASK-20260427-120000-a1b2c3d4".into(),
                agent_id: agent.into(),
                status: status.into(),
                reason: "session_not_found".into(),
                workspace_base: "/ws".into(),
            },
        }
    }

    #[test]
    fn plan_lists_matching_runs_and_owed_retries_and_runs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let mut hooks = Hooks::default();
        let mut errors = Vec::new();
        let t = vec![
            transition("a-1-aaaaaa", "failed"),
            transition("b-1-bbbbbb", "completed"),
        ];
        // `completed` is not in `on`: one run, listed, nothing started or saved.
        let listed = hooks.after_pass(&config, HookMode::List, t.clone(), &mut errors);
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].state, "would run");
        assert_eq!(listed[0].argv[4..], ["a-1-aaaaaa", "session_not_found"]);
        assert!(PendingStore::peek(dir.path()).unwrap().is_empty());
        // `once`: it runs, fails, and is owed; `plan` then shows the retry.
        let ran = hooks.after_pass(&config, HookMode::RunAndWait, t, &mut errors);
        assert_eq!(ran.len(), 1);
        assert_eq!((ran[0].state.as_str(), ran[0].attempt), ("failed", Some(1)));
        let listed = Hooks::default().after_pass(&config, HookMode::List, vec![], &mut errors);
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].state, "pending retry");
        assert_eq!(listed[0].attempt, Some(2));
        assert!(
            listed[0]
                .detail
                .as_deref()
                .unwrap()
                .contains("exit status: 1")
        );
        assert!(errors.is_empty(), "{errors:?}");
    }
}
