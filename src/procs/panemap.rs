//! The remembered pane map: agent -> the tmux sessions (server, session id, panes) it ran in.
//!
//! Kept in the state dir (not a workspace) across passes and restarts, so helpers that were
//! orphaned after their session died can still be told apart by the `TMUX` environment
//! they inherited. An entry lives until its agent is cleaned with nothing left running.

use super::evidence::SessionIdentity;
use crate::model::AgentId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// File name inside the state dir.
pub const FILE_NAME: &str = "pane-map.json";
/// Sessions remembered per agent (a re-launched agent gets a new one) and panes per session.
const MAX_SESSIONS: usize = 4;
const MAX_PANES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum PaneMapError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a pane map ({source}); starting with an empty one (helpers of agents whose sessions already ended are found by their pane tree and logs only); delete the file to silence this"
    )]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    agents: BTreeMap<String, Vec<SessionIdentity>>,
}

#[derive(Debug, Default)]
pub struct PaneMap {
    /// `None`: kept in memory only (no state dir).
    path: Option<PathBuf>,
    agents: BTreeMap<String, Vec<SessionIdentity>>,
    dirty: bool,
}

impl PaneMap {
    /// A map that is never written (plan, tests).
    pub fn in_memory() -> Self {
        PaneMap::default()
    }

    /// Loads `<state_dir>/pane-map.json`; a missing file is an empty map. A corrupt one is
    /// reported with an empty map that replaces it at the next save.
    pub fn load(state_dir: &Path) -> (Self, Option<PaneMapError>) {
        let path = state_dir.join(FILE_NAME);
        let mut map = PaneMap {
            path: Some(path.clone()),
            ..Default::default()
        };
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (map, None),
            Err(source) => return (map, Some(PaneMapError::Read { path, source })),
        };
        match serde_json::from_slice::<OnDisk>(&bytes) {
            Ok(disk) => {
                map.agents = disk.agents;
                (map, None)
            }
            Err(source) => {
                map.dirty = true;
                (map, Some(PaneMapError::Corrupt { path, source }))
            }
        }
    }

    /// Stops writing (a plan reads the map but must change nothing).
    pub fn read_only(mut self) -> Self {
        self.path = None;
        self
    }

    pub fn get(&self, id: &AgentId) -> &[SessionIdentity] {
        self.agents
            .get(id.as_str())
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.agents.keys().map(String::as_str)
    }

    /// Records that `id` runs in `seen` now: panes are added to a known session, a new
    /// session is added (the oldest dropped past the cap).
    pub fn observe(&mut self, id: &AgentId, seen: SessionIdentity) {
        let sessions = self.agents.entry(id.to_string()).or_default();
        match sessions
            .iter_mut()
            .find(|s| s.server == seen.server && s.session_id == seen.session_id)
        {
            Some(known) => {
                for pane in seen.pane_ids {
                    if !known.pane_ids.contains(&pane) && known.pane_ids.len() < MAX_PANES {
                        known.pane_ids.push(pane);
                        self.dirty = true;
                    }
                }
                for key in seen.panes {
                    if !known.panes.contains(&key) && known.panes.len() < MAX_PANES {
                        known.panes.push(key);
                        self.dirty = true;
                    }
                }
            }
            None => {
                sessions.push(seen);
                if sessions.len() > MAX_SESSIONS {
                    sessions.remove(0);
                }
                self.dirty = true;
            }
        }
    }

    /// Forgets `id` (cleaned, nothing of it left).
    pub fn forget(&mut self, id: &str) {
        if self.agents.remove(id).is_some() {
            self.dirty = true;
        }
    }

    /// Writes the map if it changed: temp file, fsync, rename, fsync of the folder.
    pub fn save(&mut self) -> Result<(), PaneMapError> {
        let Some(path) = &self.path else {
            self.dirty = false;
            return Ok(());
        };
        if !self.dirty {
            return Ok(());
        }
        let disk = OnDisk {
            version: 1,
            agents: self.agents.clone(),
        };
        let bytes = serde_json::to_vec(&disk).expect("pane map serializes");
        crate::state_file::replace(path, &bytes).map_err(|source| PaneMapError::Write {
            path: path.clone(),
            source,
        })?;
        self.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procs::{ProcKey, TmuxServer};

    fn identity(session_id: u32, panes: &[u32]) -> SessionIdentity {
        SessionIdentity {
            server: TmuxServer {
                socket: "/tmp/s".into(),
                pid: 42,
            },
            session_id,
            pane_ids: panes.to_vec(),
            panes: vec![ProcKey {
                pid: 100 + session_id as i32,
                start_time: 7,
            }],
        }
    }

    #[test]
    fn survives_a_restart_and_merges_panes() {
        let dir = tempfile::tempdir().unwrap();
        let id = AgentId::parse("a.b-1").unwrap();
        let (mut map, err) = PaneMap::load(dir.path());
        assert!(err.is_none() && map.is_empty());
        map.observe(&id, identity(3, &[5]));
        map.observe(&id, identity(3, &[5, 6]));
        map.save().unwrap();
        let (mut again, err) = PaneMap::load(dir.path());
        assert!(err.is_none());
        assert_eq!(again.get(&id), &[identity(3, &[5, 6])]);
        for s in 4..10 {
            again.observe(&id, identity(s, &[]));
        }
        assert_eq!(again.get(&id).len(), MAX_SESSIONS);
        again.forget(id.as_str());
        again.save().unwrap();
        assert!(PaneMap::load(dir.path()).0.is_empty());
        // Nothing but the map itself is left in the state dir (no temp files).
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn corrupt_file_is_reported_and_replaced_and_read_only_never_writes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), b"{oops").unwrap();
        let (mut map, err) = PaneMap::load(dir.path());
        let msg = err.unwrap().to_string();
        assert!(
            msg.contains(FILE_NAME) && msg.contains("delete the file"),
            "{msg}"
        );
        map.save().unwrap();
        assert!(PaneMap::load(dir.path()).1.is_none());
        let (map, _) = PaneMap::load(dir.path());
        let mut ro = map.read_only();
        ro.observe(&AgentId::parse("x").unwrap(), identity(1, &[]));
        ro.save().unwrap();
        assert!(PaneMap::load(dir.path()).0.is_empty());
    }
}
