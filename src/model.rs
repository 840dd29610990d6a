//! Domain vocabulary: agent ids, statuses, timestamps as the orchestrator writes them.

use chrono::{DateTime, Local, NaiveDateTime, TimeZone};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Longest id we accept; real ids are `<type>-<HHMMSS>-<6hex>`, well below this.
const MAX_ID_LEN: usize = 200;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModelError {
    #[error("agent id is empty")]
    EmptyId,
    #[error("agent id is {0} characters long (at most {MAX_ID_LEN})")]
    IdTooLong(usize),
    #[error("agent id {0:?} has a character outside [A-Za-z0-9_.-]")]
    IdBadChar(String),
    #[error("agent id {0:?} starts with '.' or '-'")]
    IdBadStart(String),
    #[error("agent id {0:?} contains '..'")]
    IdDotDot(String),
}

/// An agent id that is safe to use as a file-name part and a tmux target.
///
/// Ids come from registries written by agents, so they are untrusted: only
/// `[A-Za-z0-9_.-]`, not starting with `.` or `-` (so never `..`, never an option).
///
/// Shared (`Arc<str>`): a pass clones an agent's id into its evidence, its registry change and
/// the pass-wide checks, and 40,000 agents' copies were megabytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentId(std::sync::Arc<str>);

impl AgentId {
    pub fn parse(raw: &str) -> Result<Self, ModelError> {
        Self::check(raw)?;
        Ok(AgentId(raw.into()))
    }

    /// [`AgentId::parse`] of an id already owned.
    pub fn parse_owned(raw: Box<str>) -> Result<Self, ModelError> {
        Self::check(&raw)?;
        Ok(AgentId(raw.into()))
    }

    fn check(raw: &str) -> Result<(), ModelError> {
        if raw.is_empty() {
            return Err(ModelError::EmptyId);
        }
        if raw.len() > MAX_ID_LEN {
            return Err(ModelError::IdTooLong(raw.len()));
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err(ModelError::IdBadChar(raw.to_string()));
        }
        if raw.starts_with('.') || raw.starts_with('-') {
            return Err(ModelError::IdBadStart(raw.to_string()));
        }
        // `..` anywhere (`TASK-..`, `a..b`) is refused: no name we join into a path may
        // even look like it climbs.
        if raw.contains("..") {
            return Err(ModelError::IdDotDot(raw.to_string()));
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as shared text (no copy).
    pub fn shared(&self) -> std::sync::Arc<str> {
        std::sync::Arc::clone(&self.0)
    }

    pub fn into_string(self) -> String {
        self.0.to_string()
    }

    /// The tmux session the orchestrator starts for this agent, as tmux stores it: tmux
    /// replaces `.` and `:` in session names with `_` (`api.v2-1` runs as `agent_api_v2-1`),
    /// so two ids can share one session name (see `procs::ambiguity`).
    pub fn session_name(&self) -> String {
        stored_session_name(&format!("agent_{}", self.0))
    }
}

/// A session name as tmux stores it: `.` and `:` become `_` (tmux's `session_check_name`).
pub fn stored_session_name(requested: &str) -> String {
    requested.replace(['.', ':'], "_")
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How the rules treat a status string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    Active,
    Terminal,
    /// Anything we do not know: never destroy on it.
    Unknown,
}

pub const ACTIVE_STATUSES: &[&str] = &["running", "working", "blocked", "reviewing"];
pub const TERMINAL_STATUSES: &[&str] = &[
    "completed",
    "failed",
    "error",
    "terminated",
    "killed",
    "phase_completed",
];

pub fn classify_status(status: &str) -> StatusClass {
    if ACTIVE_STATUSES.contains(&status) {
        StatusClass::Active
    } else if TERMINAL_STATUSES.contains(&status) {
        StatusClass::Terminal
    } else {
        StatusClass::Unknown
    }
}

/// Parses the orchestrator's timestamps: naive local ISO-8601 (microseconds
/// optional), sometimes with an offset or `Z`.
pub fn parse_timestamp(raw: &str) -> Option<SystemTime> {
    let raw = raw.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(raw) {
        return Some(dt.into());
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(raw, fmt) {
            // An ambiguous local time (DST fold) takes the earlier instant.
            return Local
                .from_local_datetime(&naive)
                .earliest()
                .map(SystemTime::from);
        }
    }
    None
}

/// Formats like Python's `datetime.now().isoformat()`: naive local, microseconds.
pub fn format_timestamp(at: SystemTime) -> String {
    let local: DateTime<Local> = at.into();
    local.format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
}

pub fn epoch_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

pub fn from_epoch_secs(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH
    }
}

/// How long ago `then` was, zero when it lies in the future (clock skew).
pub fn age(now: SystemTime, then: SystemTime) -> Duration {
    now.duration_since(then).unwrap_or_default()
}

/// Where a task's agents are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `AGENT_REGISTRY.json` in the task folder.
    Json,
    /// `<base>/registry/state.sqlite3` (newer orchestrators), which has rows for the task.
    Sqlite,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Json => "json",
            Backend::Sqlite => "sqlite",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_ids_are_accepted() {
        for id in [
            "jsonl_test_agent-212417-4b12e2",
            "code_auditor-213536-71587d",
            "a",
            "x.y-1",
        ] {
            assert!(AgentId::parse(id).is_ok(), "{id}");
        }
    }

    #[test]
    fn hostile_ids_are_refused() {
        for id in [
            "",
            "../../x",
            "a/b",
            "..",
            ".hidden",
            "-rf",
            "a b",
            "a;rm -rf /",
            "a\nb",
            "a\0b",
            "é",
        ] {
            assert!(AgentId::parse(id).is_err(), "{id:?}");
        }
        assert_eq!(
            AgentId::parse(&"x".repeat(10_000)),
            Err(ModelError::IdTooLong(10_000))
        );
    }

    #[test]
    fn session_names_are_what_tmux_stores() {
        let id = AgentId::parse("api.v2-120000-abcdef").unwrap();
        assert_eq!(id.session_name(), "agent_api_v2-120000-abcdef");
        assert_eq!(
            AgentId::parse("a_b").unwrap().session_name(),
            AgentId::parse("a.b").unwrap().session_name()
        );
        assert_eq!(stored_session_name("x:y.z"), "x_y_z");
    }

    #[test]
    fn statuses_classify() {
        assert_eq!(classify_status("working"), StatusClass::Active);
        assert_eq!(classify_status("reviewing"), StatusClass::Active);
        assert_eq!(classify_status("phase_completed"), StatusClass::Terminal);
        assert_eq!(classify_status("Completed"), StatusClass::Unknown);
        assert_eq!(classify_status("paused"), StatusClass::Unknown);
    }

    #[test]
    fn timestamps_round_trip_in_local_form() {
        let t = parse_timestamp("2025-10-29T23:02:51.838962").unwrap();
        assert_eq!(format_timestamp(t), "2025-10-29T23:02:51.838962");
        let no_micros = parse_timestamp("2025-10-29T23:02:51").unwrap();
        assert_eq!(age(t, no_micros), Duration::from_micros(838_962));
        let with_offset = parse_timestamp("2025-10-29T23:02:51+00:00").unwrap();
        assert_eq!(epoch_secs(with_offset), 1_761_778_971);
        assert!(parse_timestamp("yesterday").is_none());
    }
}
