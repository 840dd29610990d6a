//! The cross-project index (`~/.claude-orchestrator/global_registry.sqlite3`): which workspace bases are active.

use super::dbfile::header_says_sqlite;
use super::{DEFAULT_BUSY_TIMEOUT, SqliteError, classify};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// SQLite truthiness as Python code writes it: non-zero numbers, and `true`/`yes`/`1` text.
fn truthy(cell: ValueRef<'_>) -> bool {
    match cell {
        ValueRef::Integer(i) => i != 0,
        ValueRef::Real(f) => f != 0.0,
        ValueRef::Text(t) => matches!(
            String::from_utf8_lossy(t)
                .trim()
                .to_ascii_lowercase()
                .as_str(),
            "1" | "true" | "yes"
        ),
        ValueRef::Null | ValueRef::Blob(_) => false,
    }
}

/// Active workspace bases from the cross-project index (`known_workspaces`, `is_active` truthy).
///
/// Opened read-only; a missing index gives none. Only absolute paths are returned (a relative
/// one would depend on our working directory), sorted and without duplicates.
pub fn discover_bases(index_path: &Path) -> Result<Vec<PathBuf>, SqliteError> {
    // The index is the user's own file in their home: a symlinked one is followed.
    let meta = match std::fs::metadata(index_path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(SqliteError::Stat {
                path: index_path.to_path_buf(),
                source,
            });
        }
    };
    if !meta.is_file() {
        return Err(SqliteError::NotRegular {
            path: index_path.to_path_buf(),
        });
    }
    let index_file = std::fs::File::open(index_path).map_err(|source| SqliteError::Stat {
        path: index_path.to_path_buf(),
        source,
    })?;
    if !header_says_sqlite(&index_file, index_path)? {
        return Ok(Vec::new());
    }
    let started = Instant::now();
    let err = |what, e| classify(index_path, what, started, e);
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(index_path, flags).map_err(|e| err("open", e))?;
    conn.busy_timeout(DEFAULT_BUSY_TIMEOUT)
        .map_err(|e| err("busy_timeout", e))?;
    let mut stmt = conn
        .prepare("SELECT workspace_base, is_active FROM known_workspaces")
        .map_err(|e| err("reading known_workspaces", e))?;
    let mut rows = stmt
        .query([])
        .map_err(|e| err("reading known_workspaces", e))?;
    let mut bases = Vec::new();
    while let Some(row) = rows
        .next()
        .map_err(|e| err("reading known_workspaces", e))?
    {
        let active = row
            .get_ref(1)
            .map_err(|e| err("reading known_workspaces", e))?;
        if !truthy(active) {
            continue;
        }
        if let Ok(ValueRef::Text(base)) = row.get_ref(0) {
            let base = PathBuf::from(String::from_utf8_lossy(base).into_owned());
            if base.is_absolute() {
                bases.push(base);
            }
        }
    }
    bases.sort();
    bases.dedup();
    Ok(bases)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truthiness_follows_python_writers() {
        assert!(truthy(ValueRef::Integer(1)));
        assert!(truthy(ValueRef::Text(b"True")));
        assert!(!truthy(ValueRef::Integer(0)));
        assert!(!truthy(ValueRef::Text(b"false")));
        assert!(!truthy(ValueRef::Null));
    }
}
