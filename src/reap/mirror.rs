//! The global registry's mirrors still counted live: the ids `<base>/registry/GLOBAL_REGISTRY.json`
//! lists with a non-terminal status. The orchestrator's unlocked rewrite can put back an
//! agent's old mirror after the reaper recorded its end; a pass restores such mirrors, so
//! clean tasks holding one of these ids are read (not skipped by the steady-state cache) and
//! their quiet agents' mirrors are written too.

use crate::model::TERMINAL_STATUSES;
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::path::Path;

#[derive(Deserialize)]
struct Global {
    #[serde(default)]
    agents: Option<HashMap<Box<str>, Mirror>>,
}

#[derive(Deserialize)]
struct Mirror {
    #[serde(default)]
    status: Option<serde_json::Value>,
}

/// The ids the global registry at `path` lists with a status that is not terminal (a
/// missing or non-string status counts as live, as the orchestrator's own count does).
/// Empty when the file is absent, unreadable, over `max_bytes` or not in this shape: then
/// the pass restores only the mirrors of the agents it reads anyway (as before).
pub fn live_mirrors(path: &Path, max_bytes: u64) -> HashSet<Box<str>> {
    // The same capped read through `fs/` as a task registry's.
    let Some((bytes, _)) = super::read::read_fast(path, max_bytes) else {
        return HashSet::new();
    };
    let Ok(global) = serde_json::from_slice::<Global>(&bytes) else {
        return HashSet::new();
    };
    global
        .agents
        .into_iter()
        .flatten()
        .filter(|(_, m)| {
            !m.status
                .as_ref()
                .and_then(serde_json::Value::as_str)
                .is_some_and(|s| TERMINAL_STATUSES.contains(&s))
        })
        .map(|(id, _)| id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_mirrors_not_terminal_count_as_live() {
        let dir = tempfile::tempdir().unwrap();
        let reg = dir.path().join("registry");
        std::fs::create_dir(&reg).unwrap();
        let path = reg.join("GLOBAL_REGISTRY.json");
        std::fs::write(
            &path,
            r#"{"agents": {"a-1": {"status": "working"}, "b-2": {"status": "completed"},
                "c-3": {"status": "terminated"}, "d-4": {}, "e-5": {"status": 7}},
               "active_agents": 3}"#,
        )
        .unwrap();
        let mut live: Vec<_> = live_mirrors(&path, 1 << 20).into_iter().collect();
        live.sort();
        assert_eq!(live, ["a-1".into(), "d-4".into(), "e-5".into()]);
        // Too large, missing, or another shape: nothing (the pass goes on as before).
        assert!(live_mirrors(&path, 10).is_empty());
        assert!(live_mirrors(&reg.join("missing.json"), 1 << 20).is_empty());
        std::fs::write(&path, r#"{"agents": ["a-1"]}"#).unwrap();
        assert!(live_mirrors(&path, 1 << 20).is_empty());
    }
}
