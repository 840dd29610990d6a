//! Running one hook process: its own process group, output logged line by line, killed at its timeout.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A line longer than this is cut (the rest of it is dropped, not logged as more lines).
const MAX_LINE: usize = 4096;
/// Lines logged per run at most; a chatty hook cannot flood the journal.
const MAX_LINES: usize = 1000;
/// After a kill, how long the output pipes get to close before they are abandoned.
const AFTER_KILL: Duration = Duration::from_secs(2);

/// How one run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    Exited(ExitStatus),
    /// Killed (with its process group) at the timeout.
    TimedOut,
    SpawnFailed(String),
}

impl RunEnd {
    pub fn success(&self) -> bool {
        matches!(self, RunEnd::Exited(s) if s.success())
    }

    pub fn describe(&self, timeout: Duration) -> String {
        match self {
            RunEnd::Exited(s) => s.to_string(),
            RunEnd::TimedOut => format!(
                "no exit within its timeout ({} ms): its process group was killed",
                timeout.as_millis()
            ),
            RunEnd::SpawnFailed(e) => format!("could not start: {e}"),
        }
    }
}

/// Which pipe a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Runs `argv` with `env` added, stdin from /dev/null, in a new process group; hands each
/// output line to `on_line`; kills the whole group (SIGKILL) when `timeout` passes. Its
/// processes are signalled only while the group leader is unreaped, so the group id is
/// still ours (a zombie leader keeps it from being reused).
pub fn run(
    argv: &[String],
    env: &[(String, String)],
    timeout: Duration,
    on_start: impl FnOnce(u32),
    on_line: &(dyn Fn(Stream, &str) + Sync),
) -> RunEnd {
    let deadline = Instant::now() + timeout;
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .envs(env.iter().map(|(k, v)| (k, v)))
        // systemd's channels are the daemon's, not its hooks'.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_PID")
        .env_remove("WATCHDOG_USEC")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return RunEnd::SpawnFailed(format!("{}: {e}", argv[0])),
    };
    on_start(child.id());
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let pipes: Vec<(Stream, Box<dyn Read + Send>)> = vec![
        (
            Stream::Stdout,
            Box::new(child.stdout.take().expect("piped")),
        ),
        (
            Stream::Stderr,
            Box::new(child.stderr.take().expect("piped")),
        ),
    ];
    let lines = std::sync::atomic::AtomicUsize::new(0);
    let lines = &lines;
    std::thread::scope(|scope| {
        for (stream, pipe) in pipes {
            let done = done_tx.clone();
            scope.spawn(move || {
                read_lines(pipe, |line| {
                    let n = lines.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n < MAX_LINES {
                        on_line(stream, line);
                    } else if n == MAX_LINES {
                        on_line(stream, "(further output not logged)");
                    }
                });
                let _ = done.send(());
            });
        }
        drop(done_tx);
        let kill = || {
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        };
        let timed_out = !wait_exit(&child, deadline);
        if timed_out {
            kill();
        }
        // The pipes close when every process holding them is gone; a leftover in the group
        // that holds them past the deadline is killed too (the leader is still unreaped).
        let mut open = 2;
        while open > 0 {
            let until = if timed_out {
                Instant::now().max(deadline) + AFTER_KILL
            } else {
                deadline
            };
            match done_rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(()) => open -= 1,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    kill();
                    // Anything still holding them now is outside the group: stop reading.
                    match done_rx.recv_timeout(AFTER_KILL) {
                        Ok(()) => open -= 1,
                        Err(_) => break,
                    }
                }
            }
        }
        let status = child.wait();
        match (timed_out, status) {
            (true, _) => RunEnd::TimedOut,
            (false, Ok(s)) => RunEnd::Exited(s),
            (false, Err(e)) => RunEnd::SpawnFailed(format!("waiting for it: {e}")),
        }
    })
}

/// Waits until the child has exited (without reaping it) or `deadline` passes; true if it exited.
fn wait_exit(child: &std::process::Child, deadline: Instant) -> bool {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("a child pid is positive");
    match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            let mut fds = [nix::poll::PollFd::new(
                fd.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            match nix::poll::poll(
                &mut fds,
                nix::poll::PollTimeout::try_from(ms).unwrap_or(nix::poll::PollTimeout::MAX),
            ) {
                Ok(n) if n > 0 => return true,
                Ok(_) => return false,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return exited_by_polling(pid, deadline),
            }
        },
        // Kernels before 5.3 have no pidfd: ask waitid without reaping, a few times a second.
        Err(_) => exited_by_polling(pid, deadline),
    }
}

fn exited_by_polling(pid: rustix::process::Pid, deadline: Instant) -> bool {
    use rustix::process::{WaitIdOptions, waitid};
    loop {
        let opts = WaitIdOptions::EXITED | WaitIdOptions::NOWAIT | WaitIdOptions::NOHANG;
        match waitid(rustix::process::WaitId::Pid(pid), opts) {
            Ok(Some(_)) => return true,
            Ok(None) => {}
            Err(_) => return true,
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Splits `pipe` into lines (lossy UTF-8, cut at `MAX_LINE`) until EOF.
fn read_lines(pipe: impl Read, mut each: impl FnMut(&str)) {
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        // Read at most MAX_LINE + 1 bytes of this line, then skip the rest of it.
        let n = match (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
        {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let complete = buf.last() == Some(&b'\n');
        if !complete && n > MAX_LINE {
            let mut rest = Vec::new();
            let _ = reader.read_until(b'\n', &mut rest);
            buf.truncate(MAX_LINE);
            buf.extend_from_slice("…".as_bytes());
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\n', '\r']);
        each(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn sh(script: &str, timeout: Duration) -> (RunEnd, Vec<(Stream, String)>) {
        let lines = Mutex::new(Vec::new());
        let end = run(
            &["/bin/sh".into(), "-c".into(), script.into()],
            &[("HOOK_TEST".into(), "v a l".into())],
            timeout,
            |_| {},
            &|s, l| lines.lock().unwrap().push((s, l.to_string())),
        );
        (end, lines.into_inner().unwrap())
    }

    #[test]
    fn output_lines_are_handed_over_per_stream() {
        let (end, lines) = sh(
            "echo \"$HOOK_TEST\"; echo oops >&2; exit 3",
            Duration::from_secs(10),
        );
        assert!(!end.success());
        assert_eq!(
            end,
            RunEnd::Exited(std::os::unix::process::ExitStatusExt::from_raw(3 << 8))
        );
        assert!(
            lines.contains(&(Stream::Stdout, "v a l".into())),
            "{lines:?}"
        );
        assert!(
            lines.contains(&(Stream::Stderr, "oops".into())),
            "{lines:?}"
        );
    }

    #[test]
    fn a_hang_is_killed_with_its_whole_group_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("bg.pid");
        // A background child in the same group keeps the pipes open too.
        let script = format!("sleep 600 & echo $! > {}; wait", pidfile.display());
        let started = Instant::now();
        let (end, _) = sh(&script, Duration::from_millis(500));
        assert_eq!(end, RunEnd::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(30));
        let bg: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // SIGKILLed with its group: its files are closed early in its exit, so it may still
        // be finishing that exit for a moment; then gone, or a zombie waiting for init.
        let dead = || {
            let state = std::fs::read_to_string(format!("/proc/{bg}/stat")).unwrap_or_default();
            state.is_empty() || state.contains(") Z")
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !dead() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(dead(), "background child {bg} still runs");
    }

    #[test]
    fn a_missing_program_is_a_spawn_failure() {
        let end = run(
            &["/nonexistent/hook".into()],
            &[],
            Duration::from_secs(1),
            |_| {},
            &|_, _| {},
        );
        assert!(matches!(end, RunEnd::SpawnFailed(ref e) if e.contains("/nonexistent/hook")));
    }

    #[test]
    fn long_lines_are_cut() {
        let (end, lines) = sh(
            "head -c 10000 /dev/zero | tr '\\0' x; echo; echo next",
            Duration::from_secs(10),
        );
        assert!(end.success());
        assert!(
            lines[0].1.len() < 5000 && lines[0].1.ends_with('…'),
            "{}",
            lines[0].1.len()
        );
        assert_eq!(lines[1].1, "next");
    }
}
