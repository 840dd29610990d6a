//! Bench: 4 tasks x 10 finished agents whose tmux sessions still run (issue 12):
//! `agent-reaper once` (the median of five runs, each printed) against one iteration of the shell daemon it replaces
//! (`../shared/orchestrator/2025-10/resource_cleanup_daemon.sh`), same workload; prints
//! both times and the ratio. Skips with one line when the shell daemon is absent.
//!
//! `cargo bench --bench vs_shell`.

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Runs of `agent-reaper once` whose median is compared.
const OURS_RUNS: usize = 5;

/// `$AGENT_REAPER_ORCHESTRATOR_SRC`, else `../shared/orchestrator` beside the repository.
fn shell_daemon() -> Option<PathBuf> {
    let dir = std::env::var_os("AGENT_REAPER_ORCHESTRATOR_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/orchestrator"));
    let path = dir.join("2025-10/resource_cleanup_daemon.sh");
    path.is_file().then_some(path)
}

/// Four tasks of ten finished agents, each with a live `sleep` tmux session.
fn workload(root: &Path, base: &Path) {
    let tmux = root.join("tmux");
    fs::create_dir_all(&tmux).unwrap();
    for t in 0..4 {
        let ids: Vec<String> = (0..10)
            .map(|a| format!("live-{t:03}{a:03}-{:06x}", t * 100 + a))
            .collect();
        finished_task(base, &task_name("live", t), &ids);
        for id in &ids {
            let ok = Command::new("tmux")
                .env("TMUX_TMPDIR", &tmux)
                .env_remove("TMUX")
                .args([
                    "new-session",
                    "-d",
                    "-s",
                    &format!("agent_{id}"),
                    "sleep 600",
                ])
                .status()
                .unwrap()
                .success();
            assert!(ok, "tmux new-session");
        }
    }
}

fn kill_tmux(root: &Path) {
    let _ = Command::new("tmux")
        .env("TMUX_TMPDIR", root.join("tmux"))
        .env_remove("TMUX")
        .arg("kill-server")
        .stderr(Stdio::null())
        .status();
}

/// A temp copy of the shell daemon that survives its own `set -e` (`((x++))` is status 1
/// when x was 0) and stops after one iteration instead of sleeping.
fn patched_copy(src: &Path, dir: &Path) -> PathBuf {
    let text = fs::read_to_string(src).unwrap();
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("((") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        match after.find("++))") {
            Some(j)
                if after[..j]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_') =>
            {
                let var = &after[..j];
                out.push_str(&format!("{var}=$(({var}+1))"));
                rest = &after[j + 4..];
            }
            _ => {
                out.push_str("((");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    let out = out.replace("sleep \"$CHECK_INTERVAL\"", "break");
    assert!(out.contains("break"), "the shell daemon's loop changed");
    let path = dir.join("resource_cleanup_daemon.sh");
    fs::write(&path, out).unwrap();
    path
}

fn main() {
    let Some(script) = shell_daemon() else {
        println!(
            "vs_shell: skipped, 2025-10/resource_cleanup_daemon.sh is absent \
             (../shared/orchestrator or $AGENT_REAPER_ORCHESTRATOR_SRC)"
        );
        return;
    };
    let cap = cap_from_env();
    // agent-reaper: the median of a few runs, each on a fresh workload (one run of 0.2 s
    // moves by a third with the machine's load; the shell daemon's 130 s does not).
    let mut runs: Vec<Run> = (0..OURS_RUNS)
        .map(|_| {
            let tmp = tempdir();
            let base = tmp.path().join("ws");
            workload(tmp.path(), &base);
            let run = run_capped(once(tmp.path(), &base), cap);
            kill_tmux(tmp.path());
            run
        })
        .collect();
    let each: Vec<String> = runs
        .iter()
        .map(|r| {
            r.took
                .map_or("-".into(), |t| format!("{:.3}", t.as_secs_f64()))
        })
        .collect();
    println!(
        "4x10 agent-reaper once, {OURS_RUNS} runs: {} s",
        each.join(", ")
    );
    runs.sort_by_key(|r| r.took.unwrap_or(Duration::MAX));
    let ours = runs.swap_remove(OURS_RUNS / 2);
    // The shell daemon: its base is `.agent-workspace` in its working directory.
    let tmp2 = tempdir();
    let base2 = tmp2.path().join(".agent-workspace");
    workload(tmp2.path(), &base2);
    let copy = patched_copy(&script, tmp2.path());
    let mut cmd = Command::new("bash");
    cmd.arg(&copy)
        .current_dir(tmp2.path())
        .env("TMUX_TMPDIR", tmp2.path().join("tmux"))
        .env_remove("TMUX")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // The shell daemon takes minutes here (a few tmux and ps runs per agent, each behind
    // a `sleep` watchdog): its own cap, `REAPER_BENCH_SHELL_CAP_SECS` (default 400 s).
    let shell_cap = Duration::from_secs(
        std::env::var("REAPER_BENCH_SHELL_CAP_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(400),
    );
    let shell = run_capped(cmd, shell_cap);
    let left = Command::new("tmux")
        .env("TMUX_TMPDIR", tmp2.path().join("tmux"))
        .env_remove("TMUX")
        .args(["list-sessions"])
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
        .unwrap_or(0);
    kill_tmux(tmp2.path());
    let secs = |r: &Run| r.took.map(|t| t.as_secs_f64());
    match (secs(&ours), secs(&shell)) {
        (Some(a), Some(b)) => {
            println!(
                "4x10 finished agents, live sessions: agent-reaper once {a:.3} s (median), shell daemon one iteration {b:.3} s"
            );
            println!(
                "4x10 ratio shell/agent-reaper: measured {:.0}x (goal: keep about 400x)",
                b / a
            );
        }
        (a, b) => println!(
            "4x10: agent-reaper {}, shell daemon {}",
            a.map_or(
                format!("did not finish in {} s", cap.as_secs()),
                |a| format!("{a:.3} s")
            ),
            b.map_or(
                format!("did not finish in {} s", shell_cap.as_secs()),
                |b| format!("{b:.3} s")
            ),
        ),
    }
    println!(
        "  agent-reaper: {}; shell daemon left {left} session(s) running{}",
        ours.summary(),
        if shell.success {
            ""
        } else {
            " [shell exit non-zero]"
        }
    );
}
