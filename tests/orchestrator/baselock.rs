//! One reaper per workspace base: a second reaper (another state dir, a stand-in holder) waits or refuses, and no line is written twice (mostly judged with the 2026 orchestrator's own code).

use crate::common::{age_files, wait_until};
use crate::harness::{Generation, WAIT, World};
use crate::sqlite2026::{
    DAEMON_CONFIG, LIVE, NEVER, TASK, create_task, judge, progress_lines, task_file, write_stream,
};
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Stdio};

fn lock_file(w: &World) -> PathBuf {
    w.base().join("registry/.agent-reaper.lock")
}

/// The system service works a base; an admin runs `once` with another state dir: it waits
/// up to `lock_timeout`, then names the daemon's pid and exits non-zero, touching nothing.
/// `plan` runs beside it (no lock). Every progress line ends up archived exactly once.
#[test]
fn once_with_another_state_dir_refuses_while_the_daemon_works_the_base() {
    let Some(w) = World::new(Generation::Sqlite2026) else {
        return;
    };
    w.write_config(DAEMON_CONFIG);
    create_task(&w, true, &[NEVER, LIVE]);
    write_stream(&w, NEVER);
    w.start_session(&format!("agent_{LIVE}"), "sleep 600");
    let daemon = w.spawn_daemon(|_| {});
    let pid = daemon.child.id().to_string();
    assert!(
        wait_until(WAIT, || fs::read_to_string(lock_file(&w))
            .is_ok_and(|t| t.trim() == pid)),
        "the daemon never took the base lock\n{}",
        daemon.log_text()
    );
    let other_state = w.sandbox.dir.path().join("admin-state");
    let out = w
        .reaper_with_state_dir(&other_state, &["once"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "once ran beside the daemon: {stderr}"
    );
    assert!(
        stderr.contains(&format!("pid {pid}")) && stderr.contains("lock_timeout"),
        "{stderr}"
    );
    let plan = w
        .reaper_with_state_dir(&other_state, &["plan"])
        .output()
        .unwrap();
    assert!(plan.status.success(), "plan takes no lock");

    // The daemon does the work alone.
    assert!(
        wait_until(WAIT, || task_file(
            &w,
            &format!("archive/{NEVER}_progress.jsonl")
        )
        .exists()
            && !task_file(&w, &format!("progress/{NEVER}_progress.jsonl"))
                .exists()),
        "{}",
        daemon.log_text()
    );
    let mut daemon = daemon;
    assert!(daemon.stop().success());
    // With the daemon gone, the admin's `once` runs and has nothing left to do.
    let out = w
        .reaper_with_state_dir(&other_state, &["once"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = progress_lines(&w, NEVER);
    let statuses: Vec<&str> = all.iter().map(|l| l["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["working", "failed"], "{all:#?}");
    assert_eq!(judge(&w, true)["agents"][NEVER]["status"], "failed");
}

/// Another reaper (here a stand-in holding the flock, pid written as agent-reaper writes it)
/// works the base when the daemon starts: the daemon says once whom it waits for, touches
/// nothing meanwhile, and does the work when the lock is free.
#[test]
fn the_daemon_waits_for_the_reaper_holding_the_base() {
    let Some(w) = World::new(Generation::Sqlite2026) else {
        return;
    };
    w.write_config(DAEMON_CONFIG);
    create_task(&w, false, &[NEVER]);
    write_stream(&w, NEVER);
    age_files(&w.task(TASK));
    let mut holder = hold_base_lock(&w);
    let daemon = w.spawn_daemon(|_| {});
    let holder_pid = holder.id().to_string();
    assert!(
        daemon.wait_log(&format!("pid {holder_pid}")),
        "{}",
        daemon.log_text()
    );
    let before = judge(&w, false);
    assert_eq!(before["agents"][NEVER]["status"], "working");
    assert!(!w.base().join(".daemon_health").exists(), "a pass ran");
    assert_eq!(daemon.log_text().matches("is reaping it").count(), 1);

    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());
    assert!(
        wait_until(WAIT, || judge(&w, false)["agents"][NEVER]["status"]
            == "failed"),
        "{}",
        daemon.log_text()
    );
    assert_eq!(
        fs::read_to_string(lock_file(&w)).unwrap().trim(),
        daemon.child.id().to_string()
    );
}

/// A stand-in for another reaper: holds the flock on the base folder (and notes its pid as
/// agent-reaper does) until its stdin closes. The base is the script's first argument.
const HOLDER: &str = r#"
import fcntl, os, sys
base = sys.argv[1]
fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
fcntl.flock(fd, fcntl.LOCK_EX)
os.makedirs(os.path.join(base, "registry"), exist_ok=True)
with open(os.path.join(base, "registry", ".agent-reaper.lock"), "w") as f:
    f.write(f"{os.getpid()}\n")
print("locked", flush=True)
sys.stdin.readline()
"#;

/// Starts [`HOLDER`] on `base` and returns once it holds the lock.
fn spawn_holder(base: &std::path::Path) -> Child {
    let mut holder = std::process::Command::new("python3")
        .arg("-c")
        .arg(HOLDER)
        .arg(base)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");
    holder
}

fn hold_base_lock(w: &World) -> Child {
    spawn_holder(&w.base())
}

/// An admin's `once` started while another reaper holds the base waits (within
/// `lock_timeout`), says for whom, and runs once the lock is free.
#[test]
fn once_waits_for_the_reaper_holding_the_base_then_runs() {
    let Some(w) = World::new(Generation::Sqlite2026) else {
        return;
    };
    w.write_config("settle = \"200ms\"\nzombie_grace = \"0s\"\nlock_timeout = \"20s\"\n");
    create_task(&w, false, &[NEVER]);
    write_stream(&w, NEVER);
    age_files(&w.task(TASK));
    let mut holder = hold_base_lock(&w);
    let holder_pid = holder.id().to_string();
    let mut once = w
        .reaper_with_state_dir(&w.sandbox.dir.path().join("admin-state"), &["once"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It says whom it waits for, and waits: nothing is written meanwhile.
    let mut err = BufReader::new(once.stderr.take().unwrap());
    let mut said = String::new();
    while !said.contains("waiting up to") {
        let mut line = String::new();
        if err.read_line(&mut line).unwrap() == 0 {
            break;
        }
        said.push_str(&line);
    }
    assert!(
        said.contains(&format!("pid {holder_pid}")) && said.contains("waiting up to"),
        "{said}"
    );
    assert!(once.try_wait().unwrap().is_none(), "once did not wait");
    assert_eq!(judge(&w, false)["agents"][NEVER]["status"], "working");
    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());
    let out = once.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(judge(&w, true)["agents"][NEVER]["status"], "failed");
    let statuses: Vec<String> = progress_lines(&w, NEVER)
        .iter()
        .map(|l| l["status"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(statuses, ["working", "failed"]);
}

/// A base that appears after the daemon started is served from its first pass, unless
/// another reaper holds it: then it is left out (said once) until the lock is free. Needs
/// no orchestrator code: the base is in the JSON generation's format.
#[test]
fn a_base_created_later_waits_for_its_holder_then_is_reaped() {
    let s = crate::common::Sandbox::new();
    s.write_config(
        "settle = \"200ms\"\nreconcile_interval = \"1s\"\nsession_poll_interval = \"200ms\"\n\
         zombie_grace = \"200ms\"\n",
    );
    let late = s.dir.path().join("late-ws");
    let log = s.dir.path().join("daemon.log");
    let child = s
        .cmd(&["run", "--workspace-base", late.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut daemon = crate::harness::Daemon { child, log };
    assert!(
        wait_until(WAIT, || s.base().join(".daemon_health").exists()),
        "{}",
        daemon.log_text()
    );
    // The base appears, already held by another reaper, with a zombie in it: made under
    // another name, locked by the holder and filled, then moved into place, so the daemon
    // can never take the lock first (it would keep it and the holder would wait forever).
    const LATE_TASK: &str = "TASK-20261128-000000-0000abcd";
    const ID: &str = "worker-000001-abcdef";
    let staging = s.dir.path().join("late-ws.staging");
    fs::create_dir_all(&staging).unwrap();
    let mut holder = spawn_holder(&staging);
    crate::common::write_task(
        &staging,
        LATE_TASK,
        serde_json::json!([crate::common::agent_entry(ID, "working")]),
    );
    fs::write(
        staging
            .join(LATE_TASK)
            .join(format!("progress/{ID}_progress.jsonl")),
        "{\"line\": 1}\n",
    )
    .unwrap();
    age_files(&staging);
    fs::rename(&staging, &late).unwrap();
    let registry = late.join(LATE_TASK).join("AGENT_REGISTRY.json");
    let holder_pid = holder.id().to_string();
    assert!(
        daemon.wait_log(&format!("pid {holder_pid}) is reaping it")),
        "{}",
        daemon.log_text()
    );
    // Passes go on (the first base is served: its health file moves on) but the held one
    // is not touched, and the wait is said once.
    let health = s.base().join(".daemon_health");
    let seen = fs::read_to_string(&health).unwrap();
    assert!(
        wait_until(WAIT, || fs::read_to_string(&health)
            .is_ok_and(|t| t != seen)),
        "no pass ran while the late base was held\n{}",
        daemon.log_text()
    );
    let passes = daemon.log_text().matches("waiting for").count();
    assert_eq!(passes, 1, "said once: {}", daemon.log_text());
    let entry = |r: &std::path::Path| crate::common::read_json(r)["agents"][0]["status"].clone();
    assert_eq!(entry(&registry), "working");
    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());
    assert!(
        wait_until(WAIT, || entry(&registry) == "terminated"),
        "{}",
        daemon.log_text()
    );
    assert!(daemon.log_text().contains("lock taken"));
    assert!(daemon.stop().success());
}
