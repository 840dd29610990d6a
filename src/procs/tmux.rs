//! tmux: one snapshot of sessions and panes per round, exact-target kills, every answer classified.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

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

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TmuxSnapshot {
    /// By session name. "no server running" is a definite answer: an empty map.
    pub sessions: BTreeMap<String, SessionInfo>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SessionInfo {
    pub name: String,
    pub created: Option<SystemTime>,
    pub activity: Option<SystemTime>,
    pub panes: Vec<PaneInfo>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PaneInfo {
    pub pid: Option<i32>,
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

impl Tmux for TmuxClient {
    fn snapshot(&self) -> Result<TmuxSnapshot, TmuxError> {
        todo!("procs helper")
    }

    fn kill_session(&self, name: &str) -> Result<KillSession, TmuxError> {
        let _ = name;
        todo!("procs helper")
    }
}
