//! Process truth: tmux sessions, the /proc table, open files, an agent's process set and stopping it.

pub(crate) mod ambiguity;
pub(crate) mod cgroup;
pub(crate) mod environ;
pub mod evidence;
#[cfg(test)]
pub(crate) mod fakes;
pub mod openfiles;
pub(crate) mod panemap;
pub(crate) mod source;
pub mod stop;
pub mod table;
pub(crate) mod tmux;

pub use evidence::{Evidence, SessionIdentity, SetContext, agent_processes, agent_set};
pub use source::{LiveProcesses, ProcessSource};
pub use stop::{StopPolicy, StopReport, StopRequest, stop_all};
pub use table::{ProcInfo, ProcKey, ProcTable};
pub use tmux::{
    KillSession, PaneInfo, SessionInfo, Tmux, TmuxClient, TmuxError, TmuxServer, TmuxSnapshot,
    TmuxSocket,
};
