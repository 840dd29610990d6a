//! Entry point: parse the command line and map errors to exit codes.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = agent_reaper::cli::dispatch::Cli::parse();
    match agent_reaper::cli::dispatch::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("agent-reaper: error: {err:#}");
            ExitCode::from(1)
        }
    }
}
