//! Bench: the daemon on 20,000 task folders (issue 12): time to READY (read from
//! `NOTIFY_SOCKET`), RSS after READY, and idle CPU, as `measured X (goal Y)` lines.
//!
//! The same after a restart that keeps the state dir (its clean-task cache).
//!
//! `cargo bench --bench startup`. `REAPER_BENCH_IDLE_SECS` (default 65) is the idle window,
//! from 10 s after READY, long enough to hold one periodic reconcile (every 60 s by
//! default; idle, with a healthy watch, it asks tmux for its sessions and runs no pass),
//! which is what an idle daemon spends its CPU on; the CPU is scaled to a minute.
//! `REAPER_BENCH_TASKS` changes the 20,000.

mod common;

use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

/// Seconds after READY left out of the idle window.
const SETTLING_SECS: u64 = 10;

fn main() {
    let tasks: usize = std::env::var("REAPER_BENCH_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let idle_secs: u64 = std::env::var("REAPER_BENCH_IDLE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(65);
    let cap = cap_from_env();
    let tmp = tempdir();
    let base = tmp.path().join("ws");
    // Months of history: every task folder holds one agent, cleaned long ago.
    for t in 0..tasks {
        let id = format!("old-{t:06}-{t:06x}");
        let mut e = finished_entry(&id);
        e["auto_cleanup_result"] = json!({"success": true, "tmux_session_killed": false,
            "prompt_file_deleted": true, "log_files_archived": true,
            "verified_no_zombies": true, "errors": [], "archived_files": []});
        write_registry(&base, &task_name("old", t), vec![e], false);
    }
    unsafe { libc::sync() };
    let started = Instant::now();
    let d = daemon_with_notify(tmp.path(), &base, "");
    let pid = d.child.id();
    if !d.wait_ready(cap) {
        println!(
            "{tasks} task folders, daemon READY: did not finish in {} s (goal <= 2 s) FAIL",
            cap.as_secs()
        );
        rss_line(
            &format!("{tasks} task folders, daemon RSS while starting"),
            vm_hwm_kib(pid),
            80 * 1024,
        );
        d.stop();
        return;
    }
    let ready = started.elapsed();
    println!(
        "{tasks} task folders, daemon READY on first start (empty state dir): measured {:.3} s (goal <= 2 s){}",
        ready.as_secs_f64(),
        verdict(ready <= Duration::from_secs(2))
    );
    // Right after READY the daemon finishes starting (a full pass that looks at every
    // registry, for what changed while the watch was being set up): said apart from idle.
    let settled = cpu_secs(pid);
    std::thread::sleep(Duration::from_secs(SETTLING_SECS));
    println!(
        "{tasks} task folders, CPU in the {SETTLING_SECS} s after READY (start-up tail, no goal): {:.2} s",
        cpu_secs(pid) - settled
    );
    let cpu_start = cpu_secs(pid);
    let children_start = children_cpu_secs(pid);
    std::thread::sleep(Duration::from_secs(idle_secs));
    let cpu = cpu_secs(pid) - cpu_start;
    let children = children_cpu_secs(pid) - children_start;
    let per_minute = cpu * 60.0 / idle_secs as f64;
    rss_line(
        &format!("{tasks} task folders, daemon RSS after READY (peak)"),
        vm_hwm_kib(pid),
        80 * 1024,
    );
    println!(
        "{tasks} task folders, daemon RSS now: {:.1} MB",
        vm_rss_kib(pid) as f64 / 1024.0
    );
    println!(
        "{tasks} task folders, idle CPU: measured {per_minute:.3} CPU-s per minute (goal <= 0.02; \
         {cpu:.2} s over {idle_secs} s scaled to 60 s, 10 ms tick resolution){}",
        verdict(per_minute <= 0.02)
    );
    println!(
        "{tasks} task folders, idle CPU of the daemon's children (tmux clients asked for \
         sessions, no goal): {:.3} CPU-s per minute",
        children * 60.0 / idle_secs as f64
    );
    d.stop();

    // A restart (upgrade, reboot): the clean-task cache the first run kept in the state dir
    // spares the first pass every registry.
    let _ = std::fs::remove_file(tmp.path().join("notify.sock"));
    unsafe { libc::sync() };
    let started = Instant::now();
    let d = daemon_with_notify(tmp.path(), &base, "");
    let pid = d.child.id();
    let ready = d.wait_ready(cap).then(|| started.elapsed());
    match ready {
        Some(ready) => println!(
            "{tasks} task folders, daemon READY on restart (state dir kept): measured {:.3} s \
             (goal <= 2 s){}",
            ready.as_secs_f64(),
            verdict(ready <= Duration::from_secs(2))
        ),
        None => println!(
            "{tasks} task folders, daemon READY on restart: did not finish in {} s (goal <= 2 s) FAIL",
            cap.as_secs()
        ),
    }
    rss_line(
        &format!("{tasks} task folders, daemon RSS on restart (peak at READY)"),
        vm_hwm_kib(pid),
        80 * 1024,
    );
    d.stop();
}

/// User + system CPU of `pid`'s waited-for children (`cutime` + `cstime`), in seconds.
fn children_cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<f64> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    (fields.get(13).unwrap_or(&0.0) + fields.get(14).unwrap_or(&0.0)) / 100.0
}
