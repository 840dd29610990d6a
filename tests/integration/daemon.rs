//! `agent-reaper run` as a daemon: event-driven cleanup, no lost lines, reload, signals, sd_notify.

use crate::common::*;
use crate::common_sqlite::{agent_row, empty_state_db, orchestrator_conn};
use serde_json::{Value, json};
use std::fs;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const TASK: &str = "TASK-20261127-140000-0000cccc";
const ID: &str = "worker-140000-abcdef";
const WAIT: Duration = Duration::from_secs(20);

/// The daemon under test; killed when the test ends, passed or not.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(s: &Sandbox) -> Daemon {
        Daemon::start_with(s, |_| {})
    }

    fn start_with(s: &Sandbox, tweak: impl FnOnce(&mut std::process::Command)) -> Daemon {
        let log = s.dir.path().join(format!("daemon-{}.log", rand_suffix()));
        let mut cmd = s.cmd(&["run"]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap());
        tweak(&mut cmd);
        let child = cmd.spawn().unwrap();
        Daemon { child, log }
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_log(&self, needle: &str) -> bool {
        wait_until(WAIT, || self.log_text().contains(needle))
    }

    /// `sig` to the daemon, which must still run (a reaped child's pid may be another
    /// process's by now: see `common::pinned`).
    fn signal(&self, sig: nix::sys::signal::Signal) {
        assert!(
            crate::common::pinned::signal_child(&self.child, sig),
            "the daemon exited before {sig}\n{}",
            self.log_text()
        );
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("--- daemon log\n{}", self.log_text());
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn daemon_config(s: &Sandbox, settle: &str) {
    s.write_config(&format!(
        "settle = \"{settle}\"\nreconcile_interval = \"1h\"\nsession_poll_interval = \"200ms\"\n\
         zombie_grace = \"200ms\"\nterm_grace = [\"200ms\"]\n"
    ));
}

fn registry(s: &Sandbox) -> PathBuf {
    s.task(TASK).join("AGENT_REGISTRY.json")
}

fn progress(s: &Sandbox) -> PathBuf {
    s.task(TASK).join(format!("progress/{ID}_progress.jsonl"))
}

fn archived_progress(s: &Sandbox) -> PathBuf {
    s.task(TASK).join(format!("archive/{ID}_progress.jsonl"))
}

/// Rewrites the registry the way the orchestrator's unlocked writers do: open('w') + dump.
fn set_status(s: &Sandbox, status: &str) {
    let mut root = read_json(&registry(s));
    root["agents"][0]["status"] = json!(status);
    root["agents"][0]["completed_at"] = json!("2026-11-27T14:00:00.000000");
    fs::write(registry(s), serde_json::to_string_pretty(&root).unwrap()).unwrap();
}

fn recorded(s: &Sandbox) -> bool {
    fs::read(registry(s))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .is_some_and(|r| r["agents"][0]["auto_cleanup_result"]["success"] == true)
}

/// Appends one line the way progress updates do: open('a'), write, close.
fn append_line(path: &Path, line: &str) {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(line.as_bytes()).unwrap();
}

fn running_agent(s: &Sandbox) {
    write_task(&s.base(), TASK, json!([agent_entry(ID, "working")]));
    append_line(&progress(s), "{\"line\":0}\n");
    s.start_session(&format!("agent_{ID}"), "sleep 600");
}

fn ready(s: &Sandbox) -> bool {
    wait_until(WAIT, || s.base().join(".daemon_health").exists())
}

#[test]
fn a_status_flip_is_archived_and_recorded_without_waiting_for_reconcile() {
    let s = Sandbox::new();
    daemon_config(&s, "300ms");
    running_agent(&s);
    let d = Daemon::start(&s);
    assert!(ready(&s), "no health file");
    assert!(!recorded(&s));
    let _ = s
        .tmux()
        .args(["kill-session", "-t", &format!("=agent_{ID}")])
        .status();
    set_status(&s, "completed");
    assert!(wait_until(WAIT, || recorded(&s)), "not recorded");
    assert_eq!(
        fs::read_to_string(archived_progress(&s)).unwrap(),
        "{\"line\":0}\n"
    );
    assert!(!progress(&s).exists());
    // What it did is in its log, with the agent's id as a field.
    assert!(
        d.wait_log(&format!("agent_id={ID}")),
        "no log line for the agent"
    );
}

#[test]
fn a_writer_still_appending_after_the_flip_loses_no_line_and_late_lines_land_once() {
    let s = Sandbox::new();
    daemon_config(&s, "300ms");
    running_agent(&s);
    let _d = Daemon::start(&s);
    assert!(ready(&s));
    let _ = s
        .tmux()
        .args(["kill-session", "-t", &format!("=agent_{ID}")])
        .status();
    set_status(&s, "completed");
    // Lines every 10 ms for 1 s after the flip.
    let path = progress(&s);
    let mut expected = vec!["{\"line\":0}".to_string()];
    let start = Instant::now();
    let mut n = 1;
    while start.elapsed() < Duration::from_secs(1) {
        let line = format!("{{\"line\":{n}}}");
        append_line(&path, &format!("{line}\n"));
        expected.push(line);
        n += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        wait_until(WAIT, || recorded(&s) && !path.exists()),
        "not archived"
    );
    let lines = |p: &Path| -> Vec<String> {
        fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    };
    assert_eq!(lines(&archived_progress(&s)), expected);

    // A late progress line after archiving: appended to the archive, exactly once.
    append_line(&path, "{\"line\":\"late\"}\n");
    expected.push("{\"line\":\"late\"}".into());
    assert!(
        wait_until(WAIT, || !path.exists()),
        "late line not archived"
    );
    assert_eq!(lines(&archived_progress(&s)), expected);
    let archive_dir = s.task(TASK).join("archive");
    let names: Vec<_> = fs::read_dir(&archive_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn sighup_keeps_the_old_config_when_the_new_one_is_bad_and_applies_a_good_one() {
    use nix::sys::signal::Signal;
    let s = Sandbox::new();
    daemon_config(&s, "1h");
    write_task(&s.base(), TASK, json!([agent_entry(ID, "completed")]));
    append_line(&progress(&s), "{\"line\":0}\n");
    let d = Daemon::start(&s);
    assert!(ready(&s));
    // settle = 1h: the fresh log is settling.
    s.write_config("settle = \"2 parsecs\"\n");
    d.signal(Signal::SIGHUP);
    assert!(d.wait_log("reload refused"), "bad config not reported");
    assert!(
        d.log_text().contains("agent-reaper.toml"),
        "the file is not named"
    );
    assert!(progress(&s).exists(), "archived under the old settle");
    daemon_config(&s, "200ms");
    d.signal(Signal::SIGHUP);
    assert!(d.wait_log("configuration reloaded"));
    assert!(wait_until(WAIT, || recorded(&s)), "new settle not in force");
    assert!(archived_progress(&s).exists());
}

#[test]
fn sigterm_during_work_exits_zero_with_nothing_half_done() {
    use nix::sys::signal::Signal;
    let s = Sandbox::new();
    daemon_config(&s, "200ms");
    let ids: Vec<String> = (0..300).map(|i| format!("bulk-140000-{i:06x}")).collect();
    let agents: Vec<Value> = ids.iter().map(|id| agent_entry(id, "completed")).collect();
    write_task(&s.base(), TASK, Value::Array(agents));
    for id in &ids {
        for sub in ["progress", "findings"] {
            append_line(
                &s.task(TASK).join(format!("{sub}/{id}_{sub}.jsonl")),
                &format!("{{\"id\":\"{id}\"}}\n"),
            );
        }
    }
    age_files(&s.task(TASK));
    let mut d = Daemon::start(&s);
    // Stop it as soon as it has started working.
    assert!(wait_until(WAIT, || s.task(TASK).join("archive").exists()));
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit().code(), Some(0), "{}", d.log_text());
    // Every log is either still in place or archived, once; the registry parses.
    let root = read_json(&registry(&s));
    assert_eq!(root["agents"].as_array().unwrap().len(), 300);
    for id in &ids {
        for sub in ["progress", "findings"] {
            let name = format!("{id}_{sub}.jsonl");
            let live = s.task(TASK).join(sub).join(&name).exists();
            let archived = s.task(TASK).join("archive").join(&name).exists();
            assert!(live ^ archived, "{name}: live {live}, archived {archived}");
        }
    }
    let leftovers: Vec<_> = fs::read_dir(s.task(TASK))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".reaper") || n.ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_second_instance_refuses_to_start() {
    let s = Sandbox::new();
    daemon_config(&s, "200ms");
    let _first = Daemon::start(&s);
    assert!(ready(&s));
    let out = s.run(&["run"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already running"), "{err}");
}

#[test]
fn systemd_notifications_ready_watchdog_reload_stopping() {
    use nix::sys::signal::Signal;
    let s = Sandbox::new();
    daemon_config(&s, "200ms");
    let sock_path = s.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut d = Daemon::start_with(&s, |cmd| {
        cmd.env("NOTIFY_SOCKET", &sock_path)
            .env("WATCHDOG_USEC", "400000")
            .env_remove("WATCHDOG_PID");
    });
    let mut seen: Vec<String> = Vec::new();
    let recv_until = |want: &str, seen: &mut Vec<String>| -> bool {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            let mut buf = [0u8; 4096];
            if let Ok(n) = sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let hit = msg.lines().any(|l| l.starts_with(want));
                seen.push(msg);
                if hit {
                    return true;
                }
            }
        }
        false
    };
    assert!(recv_until("READY=1", &mut seen), "{seen:?}");
    assert!(seen.iter().any(|m| m.contains("STATUS=")), "{seen:?}");
    assert!(recv_until("WATCHDOG=1", &mut seen), "{seen:?}");
    d.signal(Signal::SIGHUP);
    assert!(recv_until("RELOADING=1", &mut seen), "{seen:?}");
    let reload = seen.last().unwrap().clone();
    assert!(reload.contains("MONOTONIC_USEC="), "{reload}");
    assert!(recv_until("READY=1", &mut seen), "{seen:?}");
    d.signal(Signal::SIGTERM);
    assert!(recv_until("STOPPING=1", &mut seen), "{seen:?}");
    assert_eq!(d.wait_exit().code(), Some(0));
}

/// A pass stuck on a registry another process keeps locked (lock_timeout 1 h): the
/// watchdog stops being fed, and SIGTERM still ends the daemon after shutdown_timeout,
/// saying what the pass was doing, with nothing half-written.
#[test]
fn a_stuck_pass_starves_the_watchdog_and_sigterm_still_exits_within_shutdown_timeout() {
    use nix::sys::signal::Signal;
    use rustix::fs::{FlockOperation, flock};
    let s = Sandbox::new();
    s.write_config(
        "settle = \"200ms\"\nreconcile_interval = \"1h\"\nlock_timeout = \"1h\"\n\
         shutdown_timeout = \"1s\"\n",
    );
    write_task(&s.base(), TASK, json!([agent_entry(ID, "completed")]));
    append_line(&progress(&s), "{\"line\":0}\n");
    age_files(&s.task(TASK));
    let before = fs::read(registry(&s)).unwrap();
    // The orchestrator's protocol lock, held for the whole test.
    let holder = fs::File::open(registry(&s)).unwrap();
    flock(&holder, FlockOperation::LockExclusive).unwrap();
    let sock_path = s.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut d = Daemon::start_with(&s, |cmd| {
        cmd.env("NOTIFY_SOCKET", &sock_path)
            .env("WATCHDOG_USEC", "400000")
            .env_remove("WATCHDOG_PID");
    });
    let drain = || -> Vec<String> {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        got
    };
    // The pass is stuck once the daemon says it withholds the watchdog.
    assert!(d.wait_log("watchdog not fed"), "watchdog still fed");
    let _ = drain();
    // Ten watchdog periods later, not one WATCHDOG=1 more (the pass is still stuck).
    let quiet_until = Instant::now() + Duration::from_secs(2);
    let mut late = Vec::new();
    while Instant::now() < quiet_until {
        late.extend(drain().into_iter().filter(|m| m.contains("WATCHDOG=1")));
    }
    assert!(late.is_empty(), "fed while stuck: {late:?}");
    assert!(!d.log_text().contains("ready:"), "the stuck pass finished?");
    let signalled = Instant::now();
    d.signal(Signal::SIGTERM);
    let status = d.wait_exit();
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "{}", d.log_text());
    // shutdown_timeout is 1 s; WAIT (20 s) bounds wait_exit, this bounds the behaviour.
    assert!(took < Duration::from_secs(8), "exit took {took:?}");
    let log = d.log_text();
    assert!(log.contains("shutdown_timeout"), "{log}");
    assert!(log.contains("the pass in flight has run"), "{log}");
    // The registry was never written under the other holder's lock.
    assert_eq!(fs::read(registry(&s)).unwrap(), before);
    drop(holder);
}

/// Idle, with a healthy watch and every agent cleaned, a periodic reconcile only asks tmux
/// for its sessions (no pass); a session that comes back for a cleaned agent writes no
/// file, and that look still finds it: the full pass runs and the session is stopped.
#[test]
fn idle_reconciles_only_look_at_tmux_and_still_find_a_session_back_for_a_cleaned_agent() {
    let s = Sandbox::new();
    s.write_config(
        "settle = \"200ms\"\nreconcile_interval = \"300ms\"\nsession_poll_interval = \"1h\"\n\
         terminal_grace = \"0s\"\nterm_grace = [\"200ms\"]\n",
    );
    write_task(&s.base(), TASK, json!([agent_entry(ID, "completed")]));
    append_line(&progress(&s), "{\"line\":0}\n");
    age_files(&s.task(TASK));
    let d = Daemon::start_with(&s, |cmd| {
        cmd.env("AGENT_REAPER_LOG", "debug");
    });
    assert!(wait_until(WAIT, || recorded(&s)), "not recorded");
    assert!(
        d.wait_log("steady: tmux sessions unchanged"),
        "periodic reconciles still run whole passes"
    );
    let session = format!("agent_{ID}");
    s.start_session(&session, "sleep 600");
    let alive = || {
        s.tmux()
            .args(["has-session", "-t", &format!("={session}")])
            .status()
            .is_ok_and(|st| st.success())
    };
    assert!(wait_until(WAIT, || !alive()), "session left running");
}

/// In the steady state a periodic reconcile that finds tmux's sessions unchanged runs no
/// pass; a change of the state DB still does. Here the orchestrator deploys an agent in the
/// DB whose session is already gone (it came and went between two looks, as in a fast
/// deploy-and-crash): tmux's list is as it was, and only the DB's change tells. The agent is
/// marked failed at once, not after the steady look's 60 skips (a minute here, an hour by
/// default).
#[test]
fn a_state_db_change_in_the_steady_state_is_looked_at_though_tmux_is_unchanged() {
    const DB_TASK: &str = "TASK-20261127-141000-0000dddd";
    const DB_AGENT: &str = "builder-141001-abcdef";
    let s = Sandbox::new();
    s.write_config(
        "settle = \"200ms\"\nreconcile_interval = \"1s\"\nsession_poll_interval = \"1h\"\n\
         zombie_grace = \"200ms\"\nterm_grace = [\"200ms\"]\n",
    );
    let db = empty_state_db(&s.base());
    let d = Daemon::start_with(&s, |cmd| {
        cmd.env("AGENT_REAPER_LOG", "debug");
    });
    assert!(
        d.wait_log("steady: tmux sessions unchanged"),
        "no steady state reached\n{}",
        d.log_text()
    );
    let task_dir = s.base().join(DB_TASK);
    fs::create_dir_all(task_dir.join("progress")).unwrap();
    let an_hour_ago = "2026-11-27T13:00:00.000001";
    let conn = orchestrator_conn(&db);
    conn.execute(
        "INSERT INTO tasks VALUES (?1, ?2, ?3, 'deployed', 'ACTIVE', 'P1', ?3, ?4, ?4, 0)",
        rusqlite::params![DB_TASK, task_dir.to_str(), s.base().to_str(), an_hour_ago],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO agents (agent_id, task_id, type, model, tmux_session, parent, depth, \
         phase_index, tracked_files, started_at, status, progress, last_update) \
         VALUES (?1, ?2, 'builder', 'sonnet', ?3, 'orchestrator', 1, 0, NULL, ?4, 'running', \
         10, ?4)",
        rusqlite::params![DB_AGENT, DB_TASK, format!("agent_{DB_AGENT}"), an_hour_ago],
    )
    .unwrap();
    drop(conn);
    assert!(
        wait_until(WAIT, || agent_row(&db, DB_AGENT).status.as_deref()
            == Some("failed")),
        "the agent deployed in the DB was not looked at: {:?}\n{}",
        agent_row(&db, DB_AGENT),
        d.log_text()
    );
}
