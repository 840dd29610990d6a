//! tmux: one snapshot of sessions and panes per round, exact-target kills, every answer classified.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TmuxSocket {
    /// `-L NAME`
    Name(String),
    /// `-S PATH`
    Path(PathBuf),
}

#[derive(Debug, Clone)]
pub struct TmuxClient {
    pub binary: PathBuf,
    pub socket: Option<TmuxSocket>,
    pub timeout: Duration,
}

impl Default for TmuxClient {
    /// `tmux` from `PATH`, the default server, 5 s timeout (DESIGN §3).
    fn default() -> Self {
        TmuxClient {
            binary: PathBuf::from("tmux"),
            socket: None,
            timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TmuxSnapshot {
    /// By session name. "no server running" is a definite answer: an empty map.
    pub sessions: BTreeMap<String, SessionInfo>,
    /// The server that answered (`None` when none runs): what its panes' `TMUX` names.
    pub server: Option<TmuxServer>,
}

/// A tmux server as its panes' environment names it: `TMUX=<socket>,<server pid>,<session>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct TmuxServer {
    pub socket: PathBuf,
    pub pid: i32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SessionInfo {
    pub name: String,
    /// `#{session_id}` without its `$`: unique for the server's lifetime, and the third
    /// field of `TMUX` in every pane's environment.
    pub id: Option<u32>,
    pub created: Option<SystemTime>,
    pub activity: Option<SystemTime>,
    pub panes: Vec<PaneInfo>,
}

impl SessionInfo {
    /// Newest of the session activity and every pane's window activity.
    pub fn last_activity(&self) -> Option<SystemTime> {
        self.panes
            .iter()
            .filter_map(|p| p.window_activity)
            .chain(self.activity)
            .max()
    }

    /// Pids of the panes whose process is still running (tmux keeps dead panes with `remain-on-exit`).
    pub fn live_pane_pids(&self) -> Vec<i32> {
        self.panes
            .iter()
            .filter(|p| !p.dead)
            .filter_map(|p| p.pid)
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PaneInfo {
    pub pid: Option<i32>,
    /// `#{pane_id}` without its `%`, as `TMUX_PANE=%<n>` names it.
    pub id: Option<u32>,
    pub dead: bool,
    pub window_activity: Option<SystemTime>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillSession {
    Killed,
    /// "can't find session" / "no server running": already gone.
    AlreadyGone,
}

/// Everything that is not a definite answer: callers must not destroy on these.
#[derive(Debug, thiserror::Error)]
pub enum TmuxError {
    #[error("tmux binary {0:?} not found; install tmux or set tmux_binary")]
    BinaryMissing(PathBuf),
    #[error("tmux did not answer within {0:?}")]
    Timeout(Duration),
    #[error("tmux {args} failed ({status}): {stderr}")]
    Failed {
        args: String,
        status: String,
        stderr: String,
    },
    #[error("tmux output unreadable: {0}")]
    BadOutput(String),
    #[error("running tmux: {0}")]
    Io(#[source] std::io::Error),
}

/// The seam the rest of the program talks to; tests inject fakes.
pub trait Tmux: Send + Sync {
    fn snapshot(&self) -> Result<TmuxSnapshot, TmuxError>;
    fn kill_session(&self, name: &str) -> Result<KillSession, TmuxError>;
}

/// Field separator of the `list-panes` format. A tab: tmux escapes control characters in
/// session names, and the name is the last field anyway, so a stray separator inside it
/// cannot shift the other fields.
const SEP: char = '\t';
const PANE_FORMAT: &str = "#{session_created}\t#{session_activity}\t#{pane_pid}\t#{pane_dead}\t#{window_activity}\t#{session_id}\t#{pane_id}\t#{pid}\t#{socket_path}\t#{session_name}";
const PANE_FIELDS: usize = 10;

/// What a finished tmux run said.
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// The server is definitely not there: its socket is missing or refuses connections.
fn no_server(stderr: &str) -> bool {
    stderr.contains("no server running")
        || (stderr.contains("error connecting to") && stderr.contains("No such file or directory"))
}

impl TmuxClient {
    pub fn new(binary: impl Into<PathBuf>, socket: Option<TmuxSocket>, timeout: Duration) -> Self {
        TmuxClient {
            binary: binary.into(),
            socket,
            timeout,
        }
    }

    /// Runs tmux once more when the server was exiting while we talked to it (its last
    /// session just ended): "server exited unexpectedly" is not a definite answer, but the
    /// retry gets one ("no server running" or the new server's state).
    fn run(&self, args: &[&str]) -> Result<Output, TmuxError> {
        let out = self.run_once(args)?;
        if !out.status.success() && out.stderr.contains("server exited unexpectedly") {
            std::thread::sleep(Duration::from_millis(50));
            return self.run_once(args);
        }
        Ok(out)
    }

    /// The tmux client command for `args`: this server's socket, never through a shell.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.binary);
        // Inside a tmux pane, TMUX would point the client at the daemon's own server.
        cmd.env_remove("TMUX");
        match &self.socket {
            Some(TmuxSocket::Name(n)) => {
                cmd.arg("-L").arg(n);
            }
            Some(TmuxSocket::Path(p)) => {
                cmd.arg("-S").arg(p);
            }
            None => {}
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Own process group, so a timeout can take the client and anything it spawned
        // still holding our pipes. (A server it starts daemonizes into its own session.)
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd
    }

    /// Runs tmux with `args` (never through a shell), bounded by `self.timeout`.
    fn run_once(&self, args: &[&str]) -> Result<Output, TmuxError> {
        let mut cmd = self.command(args);
        let mut tries = 0;
        let mut child = loop {
            match cmd.spawn() {
                Ok(c) => break c,
                // A binary just written (tests, package upgrades) can be briefly busy while
                // another thread's fork still holds it open for writing.
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 20 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(TmuxError::BinaryMissing(self.binary.clone()));
                }
                Err(e) => return Err(TmuxError::Io(e)),
            }
        };
        // Readers on threads so a chatty child never blocks on a full pipe while we wait.
        let out = child.stdout.take().map(spawn_reader);
        let err = child.stderr.take().map(spawn_reader);
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) => {}
                Err(e) => {
                    kill_group(&mut child);
                    return Err(TmuxError::Io(e));
                }
            }
            if Instant::now() >= deadline {
                kill_group(&mut child);
                // Reader threads are left to finish on their own once the pipes close.
                return Err(TmuxError::Timeout(self.timeout));
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let join = |h: Option<std::thread::JoinHandle<Vec<u8>>>| {
            h.and_then(|h| h.join().ok())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        Ok(Output {
            status,
            stdout: join(out),
            stderr: join(err),
        })
    }

    fn failed(args: &[&str], out: &Output) -> TmuxError {
        TmuxError::Failed {
            args: args.join(" "),
            status: out.status.to_string(),
            stderr: out.stderr.trim().to_string(),
        }
    }
}

fn spawn_reader<R: Read + Send + 'static>(mut r: R) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

fn kill_group(child: &mut std::process::Child) {
    let pgid = child.id() as i32;
    // The group we created at spawn; ESRCH (already gone) is fine.
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pgid),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = child.kill();
    let _ = child.wait();
}

fn epoch(field: &str) -> Result<Option<SystemTime>, String> {
    if field.is_empty() {
        return Ok(None);
    }
    let secs: u64 = field
        .parse()
        .map_err(|_| format!("bad timestamp {field:?}"))?;
    if secs == 0 {
        return Ok(None);
    }
    Ok(Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs)))
}

/// `$3` -> 3, `%12` -> 12; empty -> `None` (a tmux without the format).
fn prefixed_number(field: &str, prefix: char) -> Result<Option<u32>, String> {
    if field.is_empty() {
        return Ok(None);
    }
    field
        .strip_prefix(prefix)
        .and_then(|n| n.parse().ok())
        .map(Some)
        .ok_or_else(|| format!("bad id {field:?}"))
}

/// Parses `list-panes -a -F PANE_FORMAT` output: one line per pane, grouped by session.
pub fn parse_snapshot(stdout: &str) -> Result<TmuxSnapshot, TmuxError> {
    let mut snap = TmuxSnapshot::default();
    for line in stdout.lines() {
        if line.is_empty() {
            continue;
        }
        let bad = |why: &str| TmuxError::BadOutput(format!("{why} in line {line:?}"));
        let f: Vec<&str> = line.splitn(PANE_FIELDS, SEP).collect();
        if f.len() != PANE_FIELDS {
            return Err(bad("too few fields"));
        }
        let name = f[9];
        if name.is_empty() {
            return Err(bad("empty session name"));
        }
        let created = epoch(f[0]).map_err(|e| bad(&e))?;
        let activity = epoch(f[1]).map_err(|e| bad(&e))?;
        let pid = match f[2] {
            "" => None,
            p => Some(p.parse::<i32>().map_err(|_| bad("bad pane pid"))?),
        };
        let dead = match f[3] {
            "" | "0" => false,
            "1" => true,
            _ => return Err(bad("bad pane_dead")),
        };
        let window_activity = epoch(f[4]).map_err(|e| bad(&e))?;
        let session_id = prefixed_number(f[5], '$').map_err(|e| bad(&e))?;
        let pane_id = prefixed_number(f[6], '%').map_err(|e| bad(&e))?;
        // A tmux too old for `#{pid}`/`#{socket_path}` prints them empty: no environment
        // evidence then, everything else works.
        let server_pid = match f[7] {
            "" => None,
            p => Some(p.parse::<i32>().map_err(|_| bad("bad server pid"))?),
        };
        if snap.server.is_none()
            && let Some(pid) = server_pid
            && !f[8].is_empty()
        {
            snap.server = Some(TmuxServer {
                socket: PathBuf::from(f[8]),
                pid,
            });
        }
        let session = snap
            .sessions
            .entry(name.to_string())
            .or_insert_with(|| SessionInfo {
                name: name.to_string(),
                id: session_id,
                created,
                activity,
                panes: Vec::new(),
            });
        session.panes.push(PaneInfo {
            pid,
            id: pane_id,
            dead,
            window_activity,
        });
    }
    Ok(snap)
}

impl Tmux for TmuxClient {
    fn snapshot(&self) -> Result<TmuxSnapshot, TmuxError> {
        let args = ["list-panes", "-a", "-F", PANE_FORMAT];
        let out = self.run(&args)?;
        if !out.status.success() {
            if no_server(&out.stderr) {
                return Ok(TmuxSnapshot::default());
            }
            return Err(Self::failed(&args, &out));
        }
        parse_snapshot(&out.stdout)
    }

    fn kill_session(&self, name: &str) -> Result<KillSession, TmuxError> {
        // `=` makes the target exact: without it `agent_abc` would match `agent_abcx`.
        let target = format!("={name}");
        let args = ["kill-session", "-t", target.as_str()];
        let out = self.run(&args)?;
        if out.status.success() {
            return Ok(KillSession::Killed);
        }
        if no_server(&out.stderr) || out.stderr.contains("can't find session") {
            return Ok(KillSession::AlreadyGone);
        }
        Err(Self::failed(&args, &out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn fake(dir: &tempfile::TempDir, body: &str) -> TmuxClient {
        let path = dir.path().join("faketmux");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        TmuxClient::new(path, None, Duration::from_millis(500))
    }

    #[test]
    fn parses_panes_grouped_by_session() {
        let dir = tempfile::tempdir().unwrap();
        let c = fake(
            &dir,
            "printf '100\\t200\\t42\\t0\\t300\\t$1\\t%%4\\t9\\t/s\\tagent_a\\n100\\t200\\t43\\t1\\t250\\t$1\\t%%5\\t9\\t/s\\tagent_a\\n5\\t6\\t7\\t0\\t8\\t$2\\t%%6\\t9\\t/s\\tweird\\tname x\\n'",
        );
        let s = c.snapshot().unwrap();
        assert_eq!(s.sessions.len(), 2);
        let a = &s.sessions["agent_a"];
        assert_eq!(a.panes.len(), 2);
        assert_eq!(a.live_pane_pids(), vec![42]);
        assert_eq!(
            a.last_activity(),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(300))
        );
        assert!(s.sessions.contains_key("weird\tname x"));
        assert_eq!(a.id, Some(1));
        assert_eq!(a.panes[1].id, Some(5));
        assert_eq!(
            s.server,
            Some(TmuxServer {
                socket: "/s".into(),
                pid: 9
            })
        );
    }

    #[test]
    fn no_server_is_an_empty_snapshot_and_already_gone() {
        let dir = tempfile::tempdir().unwrap();
        let c = fake(
            &dir,
            "echo 'no server running on /tmp/tmux-1000/default' >&2; exit 1",
        );
        assert_eq!(c.snapshot().unwrap(), TmuxSnapshot::default());
        assert_eq!(c.kill_session("agent_a").unwrap(), KillSession::AlreadyGone);
        let c = fake(
            &dir,
            "echo 'error connecting to /tmp/x (No such file or directory)' >&2; exit 1",
        );
        assert_eq!(c.snapshot().unwrap(), TmuxSnapshot::default());
    }

    #[test]
    fn cant_find_session_is_already_gone() {
        let dir = tempfile::tempdir().unwrap();
        let c = fake(&dir, "echo \"can't find session: agent_a\" >&2; exit 1");
        assert_eq!(c.kill_session("agent_a").unwrap(), KillSession::AlreadyGone);
    }

    #[test]
    fn other_failures_are_not_definite() {
        let dir = tempfile::tempdir().unwrap();
        let c = fake(
            &dir,
            "echo 'error connecting to /tmp/x (Permission denied)' >&2; exit 1",
        );
        assert!(matches!(c.snapshot(), Err(TmuxError::Failed { .. })));
        assert!(matches!(
            c.kill_session("agent_a"),
            Err(TmuxError::Failed { .. })
        ));
    }

    #[test]
    fn unparsable_output_is_bad_output() {
        let dir = tempfile::tempdir().unwrap();
        let c = fake(&dir, "echo 'garbage'");
        assert!(matches!(c.snapshot(), Err(TmuxError::BadOutput(_))));
        let c = fake(
            &dir,
            "printf '1\\t2\\tx\\t0\\t3\\t$1\\t%%1\\t9\\t/s\\tagent_a\\n'",
        );
        assert!(matches!(c.snapshot(), Err(TmuxError::BadOutput(_))));
        let c = fake(
            &dir,
            "printf '1\\t2\\t3\\t0\\t3\\t$1\\t%%1\\tx\\t/s\\tagent_a\\n'",
        );
        assert!(matches!(c.snapshot(), Err(TmuxError::BadOutput(_))));
    }

    #[test]
    fn an_old_tmux_without_server_formats_still_gives_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let c = fake(&dir, "printf '1\\t2\\t3\\t0\\t3\\t\\t\\t\\t\\tagent_a\\n'");
        let s = c.snapshot().unwrap();
        assert_eq!(s.server, None);
        assert_eq!(s.sessions["agent_a"].id, None);
        assert_eq!(s.sessions["agent_a"].live_pane_pids(), vec![3]);
    }

    #[test]
    fn exiting_server_is_asked_again() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("once");
        let c = fake(
            &dir,
            &format!(
                "if [ -e '{0}' ]; then echo 'no server running on /x' >&2; else : > '{0}'; echo 'server exited unexpectedly' >&2; fi; exit 1",
                flag.display()
            ),
        );
        assert_eq!(c.kill_session("agent_a").unwrap(), KillSession::AlreadyGone);
        let c = fake(&dir, "echo 'server exited unexpectedly' >&2; exit 1");
        assert!(matches!(c.snapshot(), Err(TmuxError::Failed { .. })));
    }

    #[test]
    fn hanging_tmux_times_out_and_is_reaped() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let c = fake(
            &dir,
            &format!("echo $$ > '{}'; sleep 30; sleep 30", pidfile.display()),
        );
        let t = Instant::now();
        assert!(matches!(c.snapshot(), Err(TmuxError::Timeout(_))));
        assert!(t.elapsed() < Duration::from_secs(3));
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Reaped (no zombie left behind) and its sleep child killed with the group.
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn missing_binary_is_reported() {
        let c = TmuxClient::new("/nonexistent/tmux", None, Duration::from_secs(1));
        assert!(matches!(c.snapshot(), Err(TmuxError::BinaryMissing(_))));
    }

    #[test]
    fn args_and_env_reach_tmux_without_a_shell() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("args");
        let mut c = fake(
            &dir,
            &format!(
                "printf '%s|' \"$@\" > '{}'; echo \"TMUX=${{TMUX-unset}}\" >> '{}'",
                log.display(),
                log.display()
            ),
        );
        c.socket = Some(TmuxSocket::Name("priv".into()));
        // The client drops an inherited TMUX (which would point it at the server of the pane
        // the daemon runs in). Checked on the command rather than by setting TMUX here: the
        // environment is process-wide and the other tests run as threads of this process.
        assert!(
            c.command(&[])
                .get_envs()
                .any(|(k, v)| k == "TMUX" && v.is_none()),
            "TMUX is not removed from tmux's environment"
        );
        assert_eq!(
            c.kill_session("agent_$(touch x); a").unwrap(),
            KillSession::Killed
        );
        let got = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            got,
            "-L|priv|kill-session|-t|=agent_$(touch x); a|TMUX=unset\n"
        );
    }
}
