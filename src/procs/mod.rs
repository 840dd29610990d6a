//! Process truth: tmux sessions, the /proc table, open files and stopping an agent's processes.

pub mod openfiles;
pub mod stop;
pub mod table;
pub mod tmux;

pub use stop::{StopPolicy, StopReport, StopRequest, stop_all};
pub use table::{ProcInfo, ProcKey, ProcTable, agent_processes};
pub use tmux::{
    KillSession, PaneInfo, SessionInfo, Tmux, TmuxClient, TmuxError, TmuxSnapshot, TmuxSocket,
};
