//! Shared by the cost benches: workspace generators, a child's wall time and peak RSS with
//! a cap, and `measured X (goal Y)` lines.
#![allow(dead_code)]

mod floor;
#[allow(unused_imports)]
pub use floor::{floor_line, floors};

use serde_json::{Value, json};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

/// One registry entry of a finished agent, as the 2025 orchestrator writes it.
pub fn finished_entry(id: &str) -> Value {
    json!({"id": id, "type": "bench", "tmux_session": format!("agent_{id}"),
           "parent": "orchestrator", "depth": 1, "status": "completed",
           "started_at": "2026-11-27T10:00:00.000001", "progress": 100,
           "last_update": "2026-11-27T10:30:00.000001",
           "completed_at": "2026-11-27T10:30:00.000002", "prompt": "bench agent"})
}

/// Writes `<base>/<task>/AGENT_REGISTRY.json` (compact when `compact`) with `agents`;
/// returns the registry's size in bytes.
pub fn write_registry(base: &Path, task: &str, agents: Vec<Value>, compact: bool) -> u64 {
    let dir = base.join(task);
    for sub in ["logs", "progress", "findings"] {
        fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let n = agents.len();
    let active = agents
        .iter()
        .filter(|a| a["status"] == "working" || a["status"] == "running")
        .count();
    let root = json!({"task_id": task, "agents": agents, "total_spawned": n,
                      "active_count": active, "completed_count": n - active});
    let text = if compact {
        serde_json::to_string(&root).unwrap()
    } else {
        serde_json::to_string_pretty(&root).unwrap()
    };
    let path = dir.join("AGENT_REGISTRY.json");
    fs::write(&path, &text).unwrap();
    text.len() as u64
}

/// The four files of a finished agent (three logs and its prompt), an hour old.
pub fn write_agent_files(base: &Path, task: &str, id: &str, stream_body: &[u8]) {
    let dir = base.join(task);
    let old = SystemTime::now() - Duration::from_secs(3600);
    for (path, body) in [
        (
            dir.join(format!("progress/{id}_progress.jsonl")),
            &b"{\"progress\":100}\n"[..],
        ),
        (
            dir.join(format!("findings/{id}_findings.jsonl")),
            &b"{\"finding\":1}\n"[..],
        ),
        (dir.join(format!("logs/{id}_stream.jsonl")), stream_body),
        (dir.join(format!("agent_prompt_{id}.txt")), &b"prompt"[..]),
    ] {
        let mut f = fs::File::create(&path).unwrap();
        f.write_all(body).unwrap();
        f.set_modified(old).unwrap();
    }
}

pub const RESULT_LINE: &[u8] = b"{\"type\":\"result\",\"is_error\":false}\n";

/// A task of `n` finished agents with their files; returns the registry's size.
pub fn finished_task(base: &Path, task: &str, ids: &[String]) -> u64 {
    let size = write_registry(
        base,
        task,
        ids.iter().map(|id| finished_entry(id)).collect(),
        false,
    );
    for id in ids {
        write_agent_files(base, task, id, RESULT_LINE);
    }
    size
}

/// The binary under test; `REAPER_BENCH_BIN` points at another build (a "before" copy).
pub fn reaper_bin() -> PathBuf {
    std::env::var_os("REAPER_BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_agent-reaper")))
}

/// `agent-reaper once` on `base`, with a private (empty) tmux socket directory and a
/// private state dir (the default one is shared: another reaper's lock would make the run
/// wait and fail).
pub fn once(root: &Path, base: &Path) -> Command {
    let tmux = root.join("tmux");
    fs::create_dir_all(&tmux).unwrap();
    let mut cmd = Command::new(reaper_bin());
    cmd.arg("once")
        .arg("--workspace-base")
        .arg(base)
        .arg("--state-dir")
        .arg(root.join("state"))
        .env("TMUX_TMPDIR", tmux)
        .env("AGENT_REAPER_LOG", "error")
        .env_remove("TMUX")
        .env_remove("AGENT_REAPER_CONFIG")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// What a capped run of a child measured.
pub struct Run {
    /// `None`: killed at the cap.
    pub took: Option<Duration>,
    pub peak_rss_kib: u64,
    pub stdout: String,
    pub stderr: String,
    pub success: bool,
}

impl Run {
    pub fn summary(&self) -> String {
        self.stdout
            .lines()
            .find(|l| l.starts_with("Summary:"))
            .unwrap_or("")
            .to_string()
    }
}

/// Runs `cmd` to its end or `cap`: wall time, and peak RSS from the kernel's own count for
/// that child (`wait4`'s `ru_maxrss`; `VmHWM` just before the kill when capped).
pub fn run_capped(mut cmd: Command, cap: Duration) -> Run {
    // Flush the setup's dirty pages first, so the run is not charged for their writeback.
    unsafe { libc::sync() };
    let start = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let pid = child.id() as i32;
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out, &mut s).ok();
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut err, &mut s).ok();
        s
    });
    // The child's own peak, read while it runs: `ru_maxrss` of a child spawned with
    // `CLONE_VM` (posix_spawn, as `Command` does) starts from this bench's own high-water
    // mark at the exec, so it charged the child with the tree this bench built (99 MB for
    // the 40k case whatever the binary did). `VmHWM` is the exec'd image's own; it only
    // rises, so the last reading before the exit is the peak (to within the poll).
    let hwm = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let (hwm, running) = (hwm.clone(), running.clone());
        std::thread::spawn(move || {
            while running.load(std::sync::atomic::Ordering::Relaxed) {
                // A zombie has no `VmHWM` line: 0, not kept.
                let now = vm_hwm_kib(pid as u32);
                hwm.fetch_max(now, std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut status = 0;
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        let _ = tx.send((r, status, Instant::now()));
    });
    let peak = |hwm: &std::sync::atomic::AtomicU64| {
        running.store(false, std::sync::atomic::Ordering::Relaxed);
        hwm.load(std::sync::atomic::Ordering::Relaxed)
    };
    let (took, peak, success) = match rx.recv_timeout(cap) {
        Ok((_, status, end)) => (
            Some(end - start),
            peak(&hwm),
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        ),
        Err(_) => {
            let last = peak(&hwm).max(vm_hwm_kib(pid as u32));
            let _ = child.kill();
            let _ = rx.recv();
            (None, last, false)
        }
    };
    let _ = watcher.join();
    std::mem::forget(child); // reaped by wait4 above
    Run {
        took,
        peak_rss_kib: peak,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
        success,
    }
}

pub fn vm_hwm_kib(pid: u32) -> u64 {
    status_field_kib(pid, "VmHWM:")
}

pub fn vm_rss_kib(pid: u32) -> u64 {
    status_field_kib(pid, "VmRSS:")
}

fn status_field_kib(pid: u32, field: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

/// User + system CPU seconds of a live process.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// `measured X (goal Y)` for a duration with a `<=` goal; "did not finish" when capped.
pub fn time_line(what: &str, run: &Run, goal: Duration, cap: Duration) {
    match run.took {
        Some(t) => println!(
            "{what}: measured {:.3} s (goal <= {:.3} s){}{}",
            t.as_secs_f64(),
            goal.as_secs_f64(),
            verdict(t <= goal),
            if run.success {
                String::new()
            } else {
                format!(
                    " [exit status non-zero: {}]",
                    run.stderr.lines().last().unwrap_or("")
                )
            }
        ),
        None => println!(
            "{what}: did not finish in {} s (goal <= {:.3} s) FAIL",
            cap.as_secs(),
            goal.as_secs_f64()
        ),
    }
}

pub fn rss_line(what: &str, kib: u64, goal_kib: u64) {
    println!(
        "{what}: measured {:.1} MB peak RSS (goal <= {:.1} MB){}",
        kib as f64 / 1024.0,
        goal_kib as f64 / 1024.0,
        verdict(kib <= goal_kib)
    );
}

pub fn verdict(ok: bool) -> &'static str {
    if ok { " ok" } else { " FAIL" }
}

pub fn cap_from_env() -> Duration {
    Duration::from_secs(
        std::env::var("REAPER_BENCH_CAP_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60),
    )
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

pub fn task_name(prefix: &str, t: usize) -> String {
    format!("TASK-20261127-{:06}-{prefix}{t:04}", 100000 + t % 900000)
}

/// A daemon child with `NOTIFY_SOCKET` pointing at a socket we read READY from.
pub struct Notified {
    pub child: Child,
    pub socket: std::os::unix::net::UnixDatagram,
}

pub fn daemon_with_notify(root: &Path, base: &Path, config: &str) -> Notified {
    let cfg = root.join("bench.toml");
    fs::write(&cfg, config).unwrap();
    let sock_path: PathBuf = root.join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    fs::create_dir_all(root.join("tmux")).unwrap();
    let child = Command::new(reaper_bin())
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .arg("--workspace-base")
        .arg(base)
        .arg("--state-dir")
        .arg(root.join("state"))
        .env("TMUX_TMPDIR", root.join("tmux"))
        .env("AGENT_REAPER_LOG", "warn")
        .env("NOTIFY_SOCKET", &sock_path)
        .env_remove("TMUX")
        .env_remove("WATCHDOG_USEC")
        .env_remove("AGENT_REAPER_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Notified { child, socket }
}

impl Notified {
    /// Waits for a `READY=1` datagram; `false` after `deadline`.
    pub fn wait_ready(&self, deadline: Duration) -> bool {
        let end = Instant::now() + deadline;
        self.socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        while Instant::now() < end {
            let mut buf = [0u8; 4096];
            if let Ok(n) = self.socket.recv(&mut buf)
                && String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l == "READY=1")
            {
                return true;
            }
        }
        false
    }

    pub fn stop(mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}
