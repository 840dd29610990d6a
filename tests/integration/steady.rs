//! The steady state across runs: `once` keeps the clean tasks it found in the state dir, so
//! a pass over a cleaned tree reads no registry, and a late log still gets archived.

use crate::common::*;
use serde_json::json;
use std::fs;

const TASKS: [&str; 2] = [
    "TASK-20261127-120000-steady01",
    "TASK-20261127-120000-steady02",
];

fn id(t: usize) -> String {
    format!("steady-00000{t}-00000a")
}

/// `once` with the debug line that says how many clean tasks it skipped: its stdout and
/// that line.
fn once(s: &Sandbox) -> (String, String) {
    let mut cmd = s.cmd(&["once"]);
    cmd.env("AGENT_REAPER_LOG", "agent_reaper=debug");
    let out = run_logged(cmd, &["once"]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let stdout = stdout_of_success(out, &["once"]);
    let line = stderr
        .lines()
        .find(|l| l.contains("steady state:"))
        .unwrap_or_else(|| panic!("no steady-state line in {stderr}"))
        .to_string();
    (stdout, line)
}

#[test]
fn a_cleaned_tree_is_not_read_again_and_a_late_log_is_still_archived() {
    let s = Sandbox::new();
    for (t, task) in TASKS.iter().enumerate() {
        write_task(&s.base(), task, json!([agent_entry(&id(t), "completed")]));
        let dir = s.task(task);
        fs::write(dir.join(format!("logs/{}_stream.jsonl", id(t))), "{}\n").unwrap();
        fs::write(dir.join(format!("agent_prompt_{}.txt", id(t))), "p").unwrap();
        age_files(&dir);
    }
    let (first, line) = once(&s);
    assert!(first.contains("2 cleaned"), "{first}");
    assert!(line.contains("0 clean task(s) skipped"), "{line}");

    // The tasks it cleaned are kept as clean: the next run reads neither registry.
    let (second, line) = once(&s);
    assert!(second.contains("0 cleaned"), "{second}");
    assert!(second.contains("2 agent(s) seen in 2 task(s)"), "{second}");
    assert!(
        line.contains("2 clean task(s) skipped, 0 task(s) read"),
        "{line}"
    );
    let (_, line) = once(&s);
    assert!(
        line.contains("2 clean task(s) skipped, 0 task(s) read"),
        "{line}"
    );

    // A late log in a cleaned task: that task is read again and the log archived.
    let late = s
        .task(TASKS[1])
        .join(format!("logs/{}_stream.jsonl", id(1)));
    fs::write(&late, "{\"late\":true}\n").unwrap();
    age_files(&s.task(TASKS[1]).join("logs"));
    let (third, line) = once(&s);
    assert!(
        line.contains("1 clean task(s) skipped, 1 task(s) read"),
        "{line}"
    );
    assert!(third.contains("1 file(s) archived"), "{third}");
    assert!(!late.exists(), "the late log was moved to the archive");

    // A damaged cache file costs one full read, never a wrong skip.
    fs::write(s.dir.path().join("state/clean-tasks.bin"), "garbage").unwrap();
    let out = s.run(&["once"]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("clean-tasks.bin"), "{stderr}");
    let (_, line) = once(&s);
    assert!(
        line.contains("2 clean task(s) skipped, 0 task(s) read"),
        "{line}"
    );
}
