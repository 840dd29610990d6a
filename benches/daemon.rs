//! Bench: the daemon's latency from a status flip to archived+recorded, its idle CPU with
//! 1,000 task folders, and its peak RSS. Prints a table.
//!
//! `cargo bench --bench daemon` (`REAPER_BENCH_IDLE_SECS` shortens the 60 s idle window).

use serde_json::{Value, json};
use std::fs;
use std::io::{Seek, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

fn entry(id: &str, status: &str) -> Value {
    json!({"id": id, "type": "bench", "tmux_session": format!("agent_{id}"),
           "parent": "orchestrator", "depth": 1, "status": status,
           "started_at": "2026-11-27T10:00:00.000001", "progress": 50,
           "last_update": agent_reaper::model::format_timestamp(SystemTime::now()),
           "prompt": "bench"})
}

fn write_task(base: &Path, task: &str, agents: Vec<Value>, aged: bool) -> PathBuf {
    let dir = base.join(task);
    for sub in ["logs", "progress", "findings"] {
        fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let old = SystemTime::now() - Duration::from_secs(3600);
    for a in &agents {
        let id = a["id"].as_str().unwrap();
        let p = dir.join(format!("progress/{id}_progress.jsonl"));
        fs::write(&p, "{\"progress\":50}\n").unwrap();
        if aged {
            fs::File::options()
                .append(true)
                .open(&p)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
    }
    let n = agents.len();
    let root = json!({"task_id": task, "agents": agents, "total_spawned": n,
                      "active_count": n, "completed_count": 0});
    let path = dir.join("AGENT_REGISTRY.json");
    fs::write(&path, serde_json::to_string_pretty(&root).unwrap()).unwrap();
    path
}

/// The orchestrator's locked update: flock, read, modify, seek 0, write, truncate.
fn locked_update(path: &Path, f: impl FnOnce(&mut Value)) {
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    rustix::fs::flock(file.as_fd(), rustix::fs::FlockOperation::LockExclusive).unwrap();
    let mut root: Value = serde_json::from_reader(&file).unwrap();
    f(&mut root);
    file.rewind().unwrap();
    let text = serde_json::to_string_pretty(&root).unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file.set_len(text.len() as u64).unwrap();
}

fn daemon(root: &Path, base: &Path, config: &str) -> Child {
    let cfg = root.join("bench.toml");
    fs::write(&cfg, config).unwrap();
    Command::new(env!("CARGO_BIN_EXE_agent-reaper"))
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .arg("--workspace-base")
        .arg(base)
        .arg("--state-dir")
        .arg(root.join("state"))
        .env("TMUX_TMPDIR", root.join("tmux"))
        .env(
            "AGENT_REAPER_LOG",
            std::env::var("REAPER_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env_remove("TMUX")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_for(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

fn cpu_secs(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn peak_rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

fn stop(mut child: Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let mut rows: Vec<(String, String)> = Vec::new();

    // 1. Flip -> archived + recorded, 200 agents in 10 tasks, flipped one every 20 ms.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let base = root.join("ws");
    fs::create_dir_all(root.join("tmux")).unwrap();
    let mut registries = Vec::new();
    for t in 0..10 {
        let ids: Vec<String> = (0..20)
            .map(|a| format!("lat-{t:02}{a:04}-{:06x}", t * 100 + a))
            .collect();
        let agents = ids.iter().map(|id| entry(id, "working")).collect();
        // Fresh: alive as far as the daemon can tell, until flipped.
        let path = write_task(
            &base,
            &format!("TASK-20261127-1500{t:02}-lat{t:05}"),
            agents,
            false,
        );
        registries.push((path, ids));
    }
    // zombie_grace 1h keeps the sessionless "working" agents waiting until flipped.
    let child = daemon(
        root,
        &base,
        "settle = \"100ms\"\nzombie_grace = \"1h\"\nreconcile_interval = \"1h\"\n",
    );
    assert!(wait_for(Duration::from_secs(30), || base
        .join(".daemon_health")
        .exists()));
    // A watcher thread notes when each record appears, while the flips go on.
    let seen: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<(usize, usize), Instant>>> =
        Default::default();
    let stop_watch = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (seen, stop_watch) = (seen.clone(), stop_watch.clone());
        let paths: Vec<PathBuf> = registries.iter().map(|(p, _)| p.clone()).collect();
        std::thread::spawn(move || {
            while !stop_watch.load(std::sync::atomic::Ordering::Relaxed) {
                for (t, path) in paths.iter().enumerate() {
                    let Ok(bytes) = fs::read(path) else { continue };
                    let Ok(r) = serde_json::from_slice::<Value>(&bytes) else {
                        continue;
                    };
                    let now = Instant::now();
                    let mut seen = seen.lock().unwrap();
                    for (a, agent) in r["agents"].as_array().into_iter().flatten().enumerate() {
                        if agent["auto_cleanup_result"]["success"] == true {
                            seen.entry((t, a)).or_insert(now);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let mut flips: Vec<(usize, usize, Instant)> = Vec::new();
    for a in 0..20 {
        for (t, (path, _)) in registries.iter().enumerate() {
            locked_update(path, |r| {
                r["agents"][a]["status"] = json!("completed");
                r["agents"][a]["completed_at"] = json!("2026-11-27T15:00:00.000000");
            });
            flips.push((t, a, Instant::now()));
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let all = wait_for(Duration::from_secs(60), || {
        seen.lock().unwrap().len() == flips.len()
    });
    stop_watch.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.join().unwrap();
    let seen = seen.lock().unwrap().clone();
    let done: Vec<Option<Instant>> = flips
        .iter()
        .map(|(t, a, _)| seen.get(&(*t, *a)).copied())
        .collect();
    let rss_latency = peak_rss_kib(child.id());
    stop(child);
    let mut lat: Vec<Duration> = flips
        .iter()
        .zip(&done)
        .filter_map(|((_, _, at), d)| d.map(|d| d - *at))
        .collect();
    lat.sort();
    rows.push((
        format!(
            "flip -> archived+recorded, {} of 200 agents (settle 100ms)",
            lat.len()
        ),
        format!(
            "p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms{}",
            percentile(&lat, 0.5).as_secs_f64() * 1e3,
            percentile(&lat, 0.99).as_secs_f64() * 1e3,
            lat.last().unwrap().as_secs_f64() * 1e3,
            if all { "" } else { " (some never finished)" }
        ),
    ));
    rows.push((
        "peak RSS during the latency run".into(),
        format!("{} KiB", rss_latency),
    ));

    // 2. Idle CPU with 1,000 task folders (each with one cleaned agent).
    let idle_secs: u64 = std::env::var("REAPER_BENCH_IDLE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let base = root.join("ws");
    fs::create_dir_all(root.join("tmux")).unwrap();
    for t in 0..1000 {
        let id = format!("idle-{t:06}-{t:06x}");
        let mut e = entry(&id, "completed");
        e["auto_cleanup_result"] = json!({"success": true, "tmux_session_killed": false,
            "prompt_file_deleted": true, "log_files_archived": true, "verified_no_zombies": true,
            "errors": [], "archived_files": []});
        let path = write_task(
            &base,
            &format!("TASK-20261127-16{t:04}-idle{t:04}"),
            vec![e],
            true,
        );
        // Already cleaned: no live logs, counters right.
        fs::remove_file(base.join(format!(
            "TASK-20261127-16{t:04}-idle{t:04}/progress/{id}_progress.jsonl"
        )))
        .unwrap();
        locked_update(&path, |r| r["active_count"] = json!(0));
    }
    let started = Instant::now();
    let child = daemon(root, &base, "");
    assert!(wait_for(Duration::from_secs(60), || base
        .join(".daemon_health")
        .exists()));
    let ready_after = started.elapsed();
    let cpu_start = cpu_secs(child.id());
    std::thread::sleep(Duration::from_secs(idle_secs));
    let cpu = cpu_secs(child.id()) - cpu_start;
    let rss = peak_rss_kib(child.id());
    stop(child);
    rows.push((
        "startup to READY, 1,000 task folders".into(),
        format!("{:.0} ms", ready_after.as_secs_f64() * 1e3),
    ));
    rows.push((
        format!("CPU over {idle_secs} s idle, 1,000 task folders (reconcile 60s)"),
        format!("{cpu:.2} s"),
    ));
    rows.push(("peak RSS, 1,000 task folders".into(), format!("{rss} KiB")));

    println!("\n{:<62} result", "measure");
    for (k, v) in rows {
        println!("{k:<62} {v}");
    }
}
