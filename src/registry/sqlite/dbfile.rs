//! The state DB file looked at as confinement demands, and proof that SQLite opened that file.

use super::{SQLITE_MAGIC, SqliteError};
use crate::fs::{FileId, FsError, Purpose, open_parent_below};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Opens `<base>/registry/state.sqlite3` beneath the base (no symlink on the way, a FIFO
/// never blocks, regular files only) and checks its header. `Ok(None)`: no file, or an empty
/// one (SQLite creates the file before its first write: an orchestrator starting up shows
/// one for a moment; it holds no agents and is no corruption). Random bytes are reported
/// without SQLite ever opening the file read-write (which would create `-wal`/`-shm` beside
/// it). Returns the identity SQLite's own open must then match ([`sqlite_holds`]).
pub(super) fn check_db_file(path: &Path) -> Result<Option<FileId>, SqliteError> {
    let opened =
        open_parent_below(path, 2).and_then(|(dir, name)| dir.open_file(name, Purpose::Read));
    let file = match opened {
        Ok(file) => file,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(FsError::Symlink { .. }) => {
            return Err(SqliteError::Symlink {
                path: path.to_path_buf(),
            });
        }
        Err(FsError::NotRegular { .. }) => {
            return Err(SqliteError::NotRegular {
                path: path.to_path_buf(),
            });
        }
        Err(e) => {
            return Err(SqliteError::Stat {
                path: path.to_path_buf(),
                source: std::io::Error::other(e),
            });
        }
    };
    Ok(header_says_sqlite(&file.file, path)?.then_some(file.id))
}

/// Reads the first 16 bytes of an open file: `Ok(false)` when empty, an error naming `path`
/// when they are not SQLite's magic.
pub(super) fn header_says_sqlite(file: &std::fs::File, path: &Path) -> Result<bool, SqliteError> {
    let mut head = [0u8; 16];
    let mut read = 0;
    while read < head.len() {
        match rustix::io::pread(file, &mut head[read..], read as u64) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) => {
                return Err(SqliteError::Stat {
                    path: path.to_path_buf(),
                    source: e.into(),
                });
            }
        }
    }
    if read == 0 {
        return Ok(false);
    }
    if read < head.len() || &head != SQLITE_MAGIC {
        return Err(SqliteError::Corrupt {
            path: path.to_path_buf(),
            detail: "no sqlite header".into(),
        });
    }
    Ok(true)
}

/// Whether one of this process's open descriptors is the file `expected` (SQLite opens by
/// path, so `<base>/registry` swapped for a symlink between our confined look and its open
/// would hand it another project's DB; what it holds is the proof). Call it after the
/// confined handle is closed, or it finds that one.
pub(super) fn sqlite_holds(expected: &FileId) -> bool {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::metadata(fd.path())
            .is_ok_and(|m| m.is_file() && (m.dev(), m.ino()) == (expected.dev, expected.ino))
    })
}

#[cfg(test)]
mod tests {
    use super::super::{StateDb, state_db_path as db_path};
    use super::*;

    fn make_db(dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        let conn = rusqlite::Connection::open(dir.join("state.sqlite3")).unwrap();
        conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE agents(x);")
            .unwrap();
    }

    #[test]
    fn a_registry_folder_symlinked_to_another_projects_db_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let other = tmp.path().join("other-project/registry");
        make_db(&other);
        let base = tmp.path().join("base");
        std::fs::create_dir_all(&base).unwrap();
        std::os::unix::fs::symlink(&other, base.join("registry")).unwrap();
        let err = StateDb::open(&db_path(&base)).unwrap_err();
        assert!(matches!(err, SqliteError::Symlink { .. }), "{err}");
        // Its own DB, reached without a link, opens.
        make_db(&base.join("own/registry"));
        assert!(
            StateDb::open(&db_path(&base.join("own")))
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn a_fifo_in_place_of_the_db_is_not_a_db_and_never_blocks() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        std::fs::create_dir_all(base.join("registry")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            db_path(base),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let err = StateDb::open(&db_path(base)).unwrap_err();
        assert!(matches!(err, SqliteError::NotRegular { .. }), "{err}");
    }

    #[test]
    fn sqlite_holds_finds_an_open_file_and_not_a_closed_one() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        std::fs::write(&path, "x").unwrap();
        let id = FileId::of_metadata(&std::fs::metadata(&path).unwrap());
        assert!(!sqlite_holds(&id));
        let held = std::fs::File::open(&path).unwrap();
        assert!(sqlite_holds(&id));
        drop(held);
    }
}
