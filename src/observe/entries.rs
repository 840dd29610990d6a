//! A registry as a pass reads it: per agent the few fields it decides on (`reap::lean`
//! parses a file straight into these; no `Value` tree of the whole registry is built).

use crate::model::{ACTIVE_STATUSES, StatusClass, TERMINAL_STATUSES, classify_status};
use serde_json::Value;

/// The parts of a registry the pass decides on.
#[derive(Debug, Default, PartialEq)]
pub struct LeanRegistry {
    /// `active_count` when it is an integer.
    pub active_count: Option<i64>,
    /// `None` when `agents` is missing or not an array.
    pub agents: Option<Vec<LeanAgent>>,
}

/// One `agents` entry: its string fields (a non-string counts as absent, as the full read
/// treats it) and what `auto_cleanup_result.success` says.
#[derive(Debug, Default, PartialEq)]
pub struct LeanAgent {
    pub id: Option<Box<str>>,
    pub status: Option<Status>,
    pub last_update: Option<Box<str>>,
    pub completed_at: Option<Box<str>>,
    pub terminated_at: Option<Box<str>>,
    pub cleanup_success: Option<bool>,
    /// `tracked_files` (rare, small): from a file when it is an object, from DB rows when
    /// it is not null (what the rule warns about differs; see `tracked::check`).
    pub tracked_files: Option<Box<Value>>,
}

/// A status: the known ones shared, any other kept as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Known(&'static str),
    Other(Box<str>),
}

impl Status {
    pub fn new(s: Box<str>) -> Status {
        match ACTIVE_STATUSES
            .iter()
            .chain(TERMINAL_STATUSES)
            .find(|k| **k == &*s)
        {
            Some(k) => Status::Known(k),
            None => Status::Other(s),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Status::Known(s) => s,
            Status::Other(s) => s,
        }
    }
}

impl LeanRegistry {
    /// `active_count` recomputed from the statuses read (`None` without an `agents` array).
    pub fn expected_active(&self) -> Option<i64> {
        self.agents.as_ref().map(|agents| {
            agents
                .iter()
                .filter(|a| {
                    a.status
                        .as_ref()
                        .is_some_and(|s| classify_status(s.as_str()) == StatusClass::Active)
                })
                .count() as i64
        })
    }
}

impl LeanAgent {
    pub fn status_str(&self) -> &str {
        self.status.as_ref().map_or("", Status::as_str)
    }
}

/// From an already parsed registry value (the tolerant read's).
pub fn from_value(value: &Value) -> LeanRegistry {
    LeanRegistry {
        active_count: value.get("active_count").and_then(Value::as_i64),
        agents: value
            .get("agents")
            .and_then(Value::as_array)
            .map(|a| lean_agents(a, Value::is_object)),
    }
}

/// From the state DB's rows of one task (they carry no `active_count`).
pub fn from_rows(rows: &[Value]) -> LeanRegistry {
    LeanRegistry {
        active_count: None,
        agents: Some(lean_agents(rows, |t| !t.is_null())),
    }
}

fn lean_agents(agents: &[Value], keep_tracked: fn(&Value) -> bool) -> Vec<LeanAgent> {
    agents
        .iter()
        .map(|e| {
            let s = |k: &str| e.get(k).and_then(Value::as_str).map(Box::from);
            LeanAgent {
                id: s("id"),
                status: s("status").map(Status::new),
                last_update: s("last_update"),
                completed_at: s("completed_at"),
                terminated_at: s("terminated_at"),
                cleanup_success: e
                    .get("auto_cleanup_result")
                    .and_then(|r| r.get("success"))
                    .and_then(Value::as_bool),
                tracked_files: e
                    .get("tracked_files")
                    .filter(|t| keep_tracked(t))
                    .map(|t| Box::new(t.clone())),
            }
        })
        .collect()
}
