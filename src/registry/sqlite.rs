//! The newer orchestrators' SQLite state DB (`<base>/registry/state.sqlite3`): agent rows read as JSON entries, CAS status updates.
//!
//! The DB belongs to the orchestrator: we never create it, never change its schema or journal
//! mode, never repair it. Reads happen in one read transaction; writes in one `BEGIN
//! IMMEDIATE` transaction per round, with the same columns its `update_agent_status` sets.
//!
//! The schema has no place for `termination_reason` or `auto_cleanup_result`: the reason goes
//! into the `agent_progress_latest.message` (see [`terminal_message`]) and the terminal progress
//! line; the cleanup record is not persisted in the DB. Where a DB-backed task also has an
//! `AGENT_REGISTRY.json`, the integrator may record it there.
//!
//! Every call blocks (up to the busy timeout on a held write lock): run it off the async loop.

mod dbfile;
mod index;
mod progress;
pub mod tasks;

pub use index::discover_bases;
pub use progress::{
    append_progress_line, append_progress_line_in, progress_line, terminal_message,
};

use crate::registry::edit::Applied;
use rusqlite::config::DbConfig;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The orchestrator's own `busy_timeout`: we wait for its writers as long as it waits for ours.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The first 16 bytes of every SQLite database file.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

#[derive(Debug, thiserror::Error)]
pub enum SqliteError {
    #[error("{path}: cannot stat: {source}")]
    Stat {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: is a symlink; refused")]
    Symlink { path: PathBuf },
    #[error("{path}: not a regular file; skipped")]
    NotRegular { path: PathBuf },
    #[error("{path}: corrupt or not an sqlite database ({detail}); left untouched")]
    Corrupt { path: PathBuf, detail: String },
    #[error("{path}: locked by another writer for {waited:?} (busy timeout); skipped this round")]
    Busy { path: PathBuf, waited: Duration },
    #[error("{path}: {what}: {source}")]
    Sqlite {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{path}: cannot append the progress line: {source}")]
    Append {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `<base>/registry/state.sqlite3`.
pub fn state_db_path(base: &Path) -> PathBuf {
    base.join("registry").join("state.sqlite3")
}

/// The `-wal` beside a DB: it changes on every commit, so it is the change signal to watch.
pub fn wal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// `~/.claude-orchestrator/global_registry.sqlite3`, the cross-project index.
pub fn default_index_path(home: &Path) -> PathBuf {
    home.join(".claude-orchestrator")
        .join("global_registry.sqlite3")
}

/// `~/.claude-orchestrator/workspaces`, where the index's orchestrators keep their bases by default.
pub fn default_indexed_base(home: &Path) -> PathBuf {
    home.join(".claude-orchestrator").join("workspaces")
}

/// One status transition to make in the DB, compare-and-set on the status we decided on.
#[derive(Debug, Clone, PartialEq)]
pub struct DbChange {
    pub task_id: String,
    pub agent_id: String,
    /// The status we decided on; if the row now says otherwise, nothing is written.
    pub expect_status: String,
    /// New status and termination reason; `None` checks the row and writes nothing.
    pub set_status: Option<(&'static str, Option<&'static str>)>,
    /// For `agent_progress_latest.message` and the progress line (see [`terminal_message`]).
    pub message: String,
}

/// What [`StateDb::apply_detailed`] did with one change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbApplied {
    pub applied: Applied,
    /// The row's progress after a written transition (for the progress line); `None` if nothing was written.
    pub progress: Option<i64>,
}

/// An open orchestrator state DB.
#[derive(Debug)]
pub struct StateDb {
    conn: Connection,
    path: PathBuf,
    journal_mode: String,
}

/// Maps an SQLite error: corruption and lock timeouts get their own variants.
fn classify(path: &Path, what: &'static str, started: Instant, e: rusqlite::Error) -> SqliteError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => SqliteError::Corrupt {
            path: path.to_path_buf(),
            detail: e.to_string(),
        },
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => SqliteError::Busy {
            path: path.to_path_buf(),
            waited: started.elapsed(),
        },
        _ => SqliteError::Sqlite {
            path: path.to_path_buf(),
            what,
            source: e,
        },
    }
}

impl StateDb {
    /// [`StateDb::open_with_timeout`] with the orchestrator's 10 s busy timeout.
    pub fn open(path: &Path) -> Result<Option<StateDb>, SqliteError> {
        Self::open_with_timeout(path, DEFAULT_BUSY_TIMEOUT)
    }

    /// Opens an existing DB read-write; `None` when there is no file (or an empty one, not yet
    /// written by the orchestrator). Never creates one.
    pub fn open_with_timeout(
        path: &Path,
        busy_timeout: Duration,
    ) -> Result<Option<StateDb>, SqliteError> {
        let Some(expected) = dbfile::check_db_file(path)? else {
            return Ok(None);
        };
        let started = Instant::now();
        let err = |what, e| classify(path, what, started, e);
        // No CREATE: a DB deleted between the stat and here must not come back empty.
        // NOFOLLOW closes the window between our lstat and SQLite's open. No URI: the path is
        // a path, never `file:...?mode=` options.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NOFOLLOW
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = match Connection::open_with_flags(path, flags) {
            Ok(conn) => conn,
            Err(e) if e.sqlite_error_code() == Some(ErrorCode::CannotOpen) => {
                // Gone since the look, or swapped for a symlink: look again to say which.
                return match dbfile::check_db_file(path)? {
                    None => Ok(None),
                    Some(_) => Err(err("open", e)),
                };
            }
            Err(e) => return Err(err("open", e)),
        };
        conn.busy_timeout(busy_timeout)
            .map_err(|e| err("busy_timeout", e))?;
        // Our close must neither checkpoint nor delete the -wal: the daemon watches that file,
        // and its own reads must not wake it.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
            .map_err(|e| err("no_ckpt_on_close", e))?;
        // As the orchestrator connects: a row it would reject must not get in through us.
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(|e| err("foreign_keys", e))?;
        // Reading the mode (never setting it) also reads the header: a bad file fails here.
        let journal_mode: String = conn
            .pragma_query_value(None, "journal_mode", |row| row.get(0))
            .map_err(|e| err("journal_mode", e))?;
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
            .map_err(|e| err("reading the schema", e))?;
        if !dbfile::sqlite_holds(&expected) {
            return Err(SqliteError::Symlink {
                path: path.to_path_buf(),
            });
        }
        Ok(Some(StateDb {
            conn,
            path: path.to_path_buf(),
            journal_mode,
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The journal mode the orchestrator set (`wal` normally); only read, never changed.
    pub fn journal_mode(&self) -> &str {
        &self.journal_mode
    }

    /// Every agent row as a JSON-registry agent entry, by task id, from one consistent snapshot.
    ///
    /// `agent_id` becomes `id`, `prompt_preview` becomes `prompt`, `tracked_files` is parsed
    /// (left out unless it is a JSON object); NULL columns are left out, as a JSON entry leaves
    /// out fields not yet set; `task_id` is the map key; the pid columns are left out (always
    /// NULL, and a stale pid is nothing to signal); any other column keeps its name. Rows come
    /// in `rowid` order, the order the orchestrator spawned them. A DB without an `agents`
    /// table (being created) reads as empty.
    pub fn agents_by_task(&self) -> Result<BTreeMap<String, Vec<Value>>, SqliteError> {
        let started = Instant::now();
        let err = |what, e| classify(&self.path, what, started, e);
        // A read transaction: the table check and the rows come from the same snapshot.
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(|e| err("begin", e))?;
        let has_agents: bool = tx
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'agents')",
                [],
                |row| row.get(0),
            )
            .map_err(|e| err("reading the schema", e))?;
        let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        if has_agents {
            let mut stmt = tx
                .prepare("SELECT * FROM agents ORDER BY rowid")
                .map_err(|e| err("reading agents", e))?;
            let names: Vec<String> = stmt.column_names().map(String::from).collect();
            let mut rows = stmt.query([]).map_err(|e| err("reading agents", e))?;
            while let Some(row) = rows.next().map_err(|e| err("reading agents", e))? {
                let mut cells = Vec::with_capacity(names.len());
                for i in 0..names.len() {
                    cells.push(row.get_ref(i).map_err(|e| err("reading agents", e))?);
                }
                if let Some((task, entry)) = row_to_entry(&names, &cells) {
                    out.entry(task).or_default().push(entry);
                }
            }
        }
        tx.commit().map_err(|e| err("end of read", e))?;
        Ok(out)
    }

    /// [`StateDb::apply_detailed`] without the progress values.
    pub fn apply(&mut self, changes: &[DbChange], now: &str) -> Result<Vec<Applied>, SqliteError> {
        Ok(self
            .apply_detailed(changes, now)?
            .into_iter()
            .map(|d| d.applied)
            .collect())
    }

    /// Applies a round's transitions in one `BEGIN IMMEDIATE` transaction, all or nothing.
    ///
    /// Per change: the orchestrator's `update_agent_status` columns, compare-and-set on
    /// `expect_status` (a row whose status moved is left as is), the
    /// `agent_progress_latest` upsert, and `tasks.updated_at` of each task with a written
    /// transition (its dashboard sorts and its staleness checks read it). A writer holding the DB past the busy timeout gives one
    /// [`SqliteError::Busy`] and nothing written: the caller skips the round. After `Ok`, the
    /// caller appends [`progress_line`] for each `Done` with a progress value.
    pub fn apply_detailed(
        &mut self,
        changes: &[DbChange],
        now: &str,
    ) -> Result<Vec<DbApplied>, SqliteError> {
        self.apply_detailed_then(changes, now, |_| {})
    }

    /// [`StateDb::apply_detailed`], running `before_commit` with the results while the
    /// transaction still holds the DB's write lock: what else must say the same (the progress
    /// line, a JSON registry) is written before any orchestrator writer can act on the new
    /// rows. Not run when the transaction fails before it (busy, an error): then nothing is
    /// written anywhere.
    pub fn apply_detailed_then(
        &mut self,
        changes: &[DbChange],
        now: &str,
        before_commit: impl FnOnce(&[DbApplied]),
    ) -> Result<Vec<DbApplied>, SqliteError> {
        let path = self.path.clone();
        let started = Instant::now();
        let err = |what, e| classify(&path, what, started, e);
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        // Dropping `tx` on any error rolls back: no partial round.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| err("begin immediate", e))?;
        let mut out = Vec::with_capacity(changes.len());
        let mut touched_tasks: Vec<&str> = Vec::new();
        {
            let mut update = tx
                .prepare_cached(
                    "UPDATE agents SET status = ?1, last_update = ?2, \
                     completed_at = COALESCE(completed_at, ?2), \
                     progress = CASE WHEN ?1 = 'completed' THEN 100 ELSE progress END \
                     WHERE agent_id = ?3 AND task_id = ?4 AND status = ?5 \
                     RETURNING progress",
                )
                .map_err(|e| err("preparing the update", e))?;
            let mut current = tx
                .prepare_cached("SELECT status FROM agents WHERE agent_id = ?1 AND task_id = ?2")
                .map_err(|e| err("preparing the status read", e))?;
            let mut upsert = tx
                .prepare_cached(
                    "INSERT INTO agent_progress_latest \
                     (task_id, agent_id, timestamp, status, progress, message) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                     ON CONFLICT(task_id, agent_id) DO UPDATE SET \
                     timestamp = excluded.timestamp, status = excluded.status, \
                     progress = excluded.progress, message = excluded.message",
                )
                .map_err(|e| err("preparing the progress upsert", e))?;
            for change in changes {
                let Some((status, _reason)) = change.set_status else {
                    // Nothing to write: only tell whether the row is still as we saw it.
                    let seen: Option<Option<String>> = current
                        .query_row(params![change.agent_id, change.task_id], |r| r.get(0))
                        .optional()
                        .map_err(|e| err("reading a status", e))?;
                    let applied = match seen {
                        None => Applied::Missing,
                        Some(s) if s.as_deref() == Some(change.expect_status.as_str()) => {
                            Applied::Done
                        }
                        Some(_) => Applied::StatusMoved,
                    };
                    out.push(DbApplied {
                        applied,
                        progress: None,
                    });
                    continue;
                };
                let written: Option<Option<i64>> = update
                    .query_row(
                        params![
                            status,
                            now,
                            change.agent_id,
                            change.task_id,
                            change.expect_status
                        ],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(|e| err("updating an agent", e))?;
                let Some(progress) = written else {
                    let exists = current
                        .exists(params![change.agent_id, change.task_id])
                        .map_err(|e| err("reading a status", e))?;
                    out.push(DbApplied {
                        applied: if exists {
                            Applied::StatusMoved
                        } else {
                            Applied::Missing
                        },
                        progress: None,
                    });
                    continue;
                };
                // The progress line needs a number; an agent that never reported is at 0.
                let progress = progress.unwrap_or(0);
                upsert
                    .execute(params![
                        change.task_id,
                        change.agent_id,
                        now,
                        status,
                        progress,
                        change.message
                    ])
                    .map_err(|e| err("upserting agent_progress_latest", e))?;
                out.push(DbApplied {
                    applied: Applied::Done,
                    progress: Some(progress),
                });
                if !touched_tasks.contains(&change.task_id.as_str()) {
                    touched_tasks.push(&change.task_id);
                }
            }
            // As `update_agent_status` does; a DB without a `tasks` table (an older schema)
            // has nothing to bump.
            let has_tasks: bool = tx
                .query_row(
                    "SELECT EXISTS(SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'tasks')",
                    [],
                    |row| row.get(0),
                )
                .map_err(|e| err("reading the schema", e))?;
            if has_tasks && !touched_tasks.is_empty() {
                let mut bump = tx
                    .prepare_cached("UPDATE tasks SET updated_at = ?1 WHERE task_id = ?2")
                    .map_err(|e| err("preparing the task update", e))?;
                for task in &touched_tasks {
                    bump.execute(params![now, task])
                        .map_err(|e| err("updating a task", e))?;
                }
            }
        }
        before_commit(&out);
        tx.commit().map_err(|e| err("commit", e))?;
        Ok(out)
    }
}

/// One `agents` row as a JSON entry and its task id; `None` for a row without a text task id.
fn row_to_entry(names: &[String], cells: &[ValueRef<'_>]) -> Option<(String, Value)> {
    let mut task = None;
    let mut id = None;
    let mut rest = Map::new();
    for (name, cell) in names.iter().zip(cells) {
        match name.as_str() {
            "task_id" => task = cell_to_json(*cell).and_then(|v| v.as_str().map(String::from)),
            "agent_id" => id = cell_to_json(*cell),
            "claude_pid" | "cursor_pid" => {}
            "tracked_files" => {
                if let Some(files) = cell_to_json(*cell)
                    .and_then(|v| {
                        v.as_str()
                            .and_then(|s| serde_json::from_str::<Value>(s).ok())
                    })
                    .filter(Value::is_object)
                {
                    rest.insert("tracked_files".into(), files);
                }
            }
            other => {
                let key = if other == "prompt_preview" {
                    "prompt"
                } else {
                    other
                };
                if let Some(v) = cell_to_json(*cell) {
                    rest.insert(key.to_string(), v);
                }
            }
        }
    }
    let mut entry = Map::new();
    // `id` first, as the JSON registries write it.
    if let Some(id) = id {
        entry.insert("id".into(), id);
    }
    entry.extend(rest);
    Some((task?, Value::Object(entry)))
}

/// A cell as JSON; NULL and blobs (no JSON form) give `None`.
fn cell_to_json(cell: ValueRef<'_>) -> Option<Value> {
    match cell {
        ValueRef::Null | ValueRef::Blob(_) => None,
        ValueRef::Integer(i) => Some(Value::from(i)),
        ValueRef::Real(f) => serde_json::Number::from_f64(f).map(Value::Number),
        ValueRef::Text(t) => Some(Value::String(String::from_utf8_lossy(t).into_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_become_registry_entries() {
        let names: Vec<String> = [
            "agent_id",
            "task_id",
            "type",
            "claude_pid",
            "tracked_files",
            "prompt_preview",
            "completed_at",
            "progress",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let cells = [
            ValueRef::Text(b"a-1"),
            ValueRef::Text(b"TASK-1"),
            ValueRef::Text(b"fixer"),
            ValueRef::Null,
            ValueRef::Text(br#"{"log_file": "/w/logs/a-1_stream.jsonl"}"#),
            ValueRef::Text(b"do it"),
            ValueRef::Null,
            ValueRef::Integer(40),
        ];
        let (task, entry) = row_to_entry(&names, &cells).unwrap();
        assert_eq!(task, "TASK-1");
        let keys: Vec<_> = entry.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["id", "type", "tracked_files", "prompt", "progress"]);
        assert_eq!(
            entry["tracked_files"]["log_file"],
            "/w/logs/a-1_stream.jsonl"
        );
    }

    #[test]
    fn bad_tracked_files_are_left_out() {
        let names = vec!["task_id".to_string(), "tracked_files".to_string()];
        for bad in [&b"[1,2]"[..], b"{not json", b""] {
            let (_, entry) =
                row_to_entry(&names, &[ValueRef::Text(b"T"), ValueRef::Text(bad)]).unwrap();
            assert!(entry.get("tracked_files").is_none());
        }
        assert!(row_to_entry(&names, &[ValueRef::Null, ValueRef::Null]).is_none());
    }

    #[test]
    fn paths_beside_the_base() {
        let db = state_db_path(Path::new("/ws"));
        assert_eq!(db, Path::new("/ws/registry/state.sqlite3"));
        assert_eq!(wal_path(&db), Path::new("/ws/registry/state.sqlite3-wal"));
    }
}
