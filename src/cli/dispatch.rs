//! Command line: flags and subcommands, and what each command runs and prints.

use crate::archive::retention;
use crate::config::Config;
use crate::config::layer::{Overrides, resolve_config, tmux_client};
use crate::reap::pass::{Mode, PassReport, Reaper};
use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::SystemTime;

const ABOUT: &str = "Cleans up after Claude Orchestrator agents: stops finished, zombie and stale \
agents' processes, archives their logs once settled, and records it all in the registries.";

const AFTER_HELP: &str = "\
Workspace bases: --workspace-base (repeatable), else workspace_bases in the config file, \
else $CLAUDE_ORCHESTRATOR_WORKSPACE, else ./.agent-workspace.

Examples:
  agent-reaper plan                      what a pass would do, changing nothing
  agent-reaper once                      one cleanup pass, then exit
  agent-reaper status --json             agents per task by class, as JSON
  agent-reaper validate --config /etc/agent-reaper/agent-reaper.toml";

#[derive(Debug, Clone, Parser)]
#[command(name = "agent-reaper", version, about = ABOUT, after_help = AFTER_HELP)]
pub struct Cli {
    /// Configuration file (TOML; every key documented in config/agent-reaper.toml).
    #[arg(long, global = true, env = "AGENT_REAPER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A workspace base holding TASK-*/ folders; repeat for several. Overrides the config file.
    #[arg(long = "workspace-base", global = true, value_name = "DIR")]
    pub workspace_bases: Vec<PathBuf>,
    /// The daemon's state directory (lock file, journal). Overrides the config file.
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run as a daemon: watch the workspaces and clean up as agents finish.
    Run {
        /// Decide and log, but change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// One cleanup pass over every task, then exit (non-zero only on a fatal error).
    Once {
        /// Print the pass report as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print every action a pass would take, per task and agent; change nothing.
    Plan {
        /// Print the plan as JSON (the same report `once --json` gives).
        #[arg(long)]
        json: bool,
    },
    /// Show agents per task by class: active, settling, zombie, stale, finished, cleaned.
    Status {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check the configuration (file and flags) and print the settings in force.
    Validate,
    /// Watch the daemon clean up after three fake agents (one finishes, one crashes, one
    /// hangs) in a throwaway workspace; needs tmux; removes everything afterwards.
    Demo,
}

impl Cli {
    /// What these flags set over the config file.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            config_file: self.config.clone(),
            workspace_bases: self.workspace_bases.clone(),
            state_dir: self.state_dir.clone(),
        }
    }
}

fn check_bases(config: &Config) -> Result<()> {
    let missing: Vec<_> = config
        .workspace_bases
        .iter()
        .filter(|b| !b.is_dir())
        .collect();
    if missing.len() == config.workspace_bases.len() {
        bail!(
            "no workspace base found ({}); pass --workspace-base DIR, set workspace_bases in \
             the config file, or set CLAUDE_ORCHESTRATOR_WORKSPACE",
            missing
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for m in missing {
        tracing::warn!("workspace base {} does not exist; skipped", m.display());
    }
    Ok(())
}

/// Progress on stderr only for a person at a terminal (not in pipes, not under systemd).
fn progress_printer() -> Option<Box<dyn FnMut(usize, usize) + Send>> {
    let interactive = std::io::stderr().is_terminal()
        && std::env::var_os("JOURNAL_STREAM").is_none()
        && std::env::var_os("INVOCATION_ID").is_none();
    if !interactive {
        return None;
    }
    Some(Box::new(|done, total| {
        if total >= 20 {
            eprint!("\rtasks {done}/{total}");
            if done == total {
                eprintln!();
            }
        }
    }))
}

/// Prints a pass's report (JSON serialized straight into the buffered output, not into a
/// string first), then lets it go without dropping it: the process is about to exit, and a
/// large pass's report is a million small allocations the kernel takes back at once (40,000
/// agents: 145 -> 110 ms from the pass's end to the output's, with the agent lines written
/// as they come in `render`).
fn print(
    report: PassReport,
    json: bool,
    text: fn(&PassReport, &mut dyn std::io::Write) -> std::io::Result<()>,
) -> Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let written = if json {
        serde_json::to_writer_pretty(&mut out, &report)
            .map_err(std::io::Error::from)
            .and_then(|()| out.write_all(b"\n"))
    } else {
        text(&report, &mut out)
    }
    .and_then(|()| out.flush());
    std::mem::forget(report);
    match written {
        // A reader that stopped early (`| head`) has all it wanted: not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

pub fn run(cli: Cli) -> Result<()> {
    if let Command::Demo = cli.command {
        return crate::cli::demo::run();
    }
    let config = resolve_config(&cli.overrides())?;
    let log_file = match cli.command {
        Command::Run { .. } => config.log_file.clone(),
        _ => None,
    };
    let _guard = crate::logging::init(log_file.as_deref())?;
    match cli.command {
        Command::Validate => {
            // A hook whose program cannot run would fail every transition: refuse it here.
            let mut bad = Vec::new();
            for check in crate::hooks::check_programs(&config.hooks) {
                match check {
                    Ok((name, program)) => println!("hook {name:?}: runs {}", program.display()),
                    Err(e) => bad.push(e),
                }
            }
            if !bad.is_empty() {
                bail!("{}", bad.join("\n"));
            }
            println!("configuration OK");
            match &cli.config {
                Some(p) => println!("  file: {}", p.display()),
                None => println!("  file: none (defaults)"),
            }
            println!("{config:#?}");
            Ok(())
        }
        Command::Demo => unreachable!("handled above"),
        Command::Run { dry_run } => {
            check_bases(&config)?;
            crate::daemon::run(cli.overrides(), config, dry_run)
        }
        Command::Once { json } => {
            check_bases(&config)?;
            // One reaper per state directory: `once` beside a running daemon would race it.
            let state = crate::state::state_dir(&config)?;
            let _lock = crate::state::InstanceLock::acquire(&state)?;
            // One reaper per workspace base, whatever its state directory: wait for another
            // (a daemon, an admin's `once`) up to lock_timeout, then say who holds it.
            let _bases = crate::state::BaseLocks::acquire(
                &config.workspace_bases,
                Some(config.lock_timeout),
                |base, holder| {
                    eprintln!(
                        "agent-reaper: another agent-reaper (pid {holder}) is reaping {}; \
                         waiting up to {:?} (lock_timeout)",
                        base.display(),
                        config.lock_timeout
                    )
                },
            )?;
            let mut reaper = Reaper::new(config.clone(), Box::new(tmux_client(&config)));
            reaper.journal = Some(crate::state::open_journal(&state, config.trusted_roots())?);
            reaper.pane_map = crate::state::load_pane_map(&state);
            reaper.clean_tasks = crate::reap::cache::CleanTasks::load_or_warn(&state);
            reaper.progress = progress_printer();
            let mut report = reaper.run(Mode::Execute {
                wait_for_settle: true,
            });
            // After the pass, on what it saw: the same survey `plan` prints.
            if config.retention.is_enabled() {
                // Clean tasks skipped unread count as the pass found them: cleaned.
                let mut seen = report.seen_tasks();
                seen.extend(reaper.clean_tasks.unread_seen());
                let mut archives = retention::survey(&config, &seen, SystemTime::now());
                retention::remove(&mut archives);
                report.archives = Some(archives);
            }
            print(report, json, crate::cli::render::once)
        }
        Command::Plan { json } => {
            check_bases(&config)?;
            let mut reaper = Reaper::new(config.clone(), Box::new(tmux_client(&config)));
            // Read, never written: a plan changes nothing.
            if let Ok(state) = crate::state::state_dir(&config) {
                reaper.pane_map = crate::state::load_pane_map(&state).read_only();
            }
            let mut report = reaper.run(Mode::Plan);
            if config.retention.is_enabled() {
                report.archives = Some(retention::survey(
                    &config,
                    &report.seen_tasks(),
                    SystemTime::now(),
                ));
            }
            print(report, json, crate::cli::render::plan)
        }
        Command::Status { json } => {
            check_bases(&config)?;
            let mut reaper = Reaper::new(config.clone(), Box::new(tmux_client(&config)));
            if let Ok(state) = crate::state::state_dir(&config) {
                reaper.pane_map = crate::state::load_pane_map(&state).read_only();
            }
            let mut report = reaper.run(Mode::Plan);
            report.archives = Some(retention::survey(
                &config,
                &report.seen_tasks(),
                SystemTime::now(),
            ));
            print(report, json, crate::cli::render::status)
        }
    }
}
