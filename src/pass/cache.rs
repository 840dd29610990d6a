//! The steady state: task registries a full pass found wholly cleaned are not read again
//! while their file (identity, size, mtime) stays the same and no live tmux session
//! carries one of their agents' names.

use super::read::{FileKey, registry_key};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;

/// A task whose agents were all cleaned, as last read.
#[derive(Debug, Clone)]
pub struct CleanTask {
    pub key: FileKey,
    pub agents: usize,
    /// Hashes of its agents' session names, sorted (a live one means: look again).
    pub sessions: Vec<u64>,
}

pub fn session_hash(name: &str) -> u64 {
    let mut h = DefaultHasher::new();
    name.hash(&mut h);
    h.finish()
}

impl CleanTask {
    pub fn sorted(mut self) -> Self {
        self.sessions.sort_unstable();
        self.sessions.dedup();
        self
    }

    /// Still clean: the registry is the one read then, and none of its sessions runs.
    /// `live`: `session_hash` of every live `agent_*` session.
    pub fn still_holds(&self, registry: &Path, live: &[u64]) -> bool {
        registry_key(registry) == Some(self.key)
            && !live.iter().any(|h| self.sessions.binary_search(h).is_ok())
    }
}
