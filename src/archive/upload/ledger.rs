//! `<state dir>/uploaded.jsonl`: archives uploaded and kept local (`keep_local`), so a later
//! pass neither asks the bucket about them again nor uploads them twice.
//!
//! One JSON line per upload (`{"path":..,"file":{dev,ino,size,mtime}}`), appended and
//! fsynced before the journal's `done`. A local file that no longer matches its line (it
//! grew, or another file took the name) is a new candidate: the bucket is asked again,
//! and a different object there is reported, never overwritten. The file is the daemon's
//! own, in its state dir (not a workspace path).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::fs::FileId;

/// The ledger's file name in the state dir.
pub(crate) const LEDGER_FILE: &str = "uploaded.jsonl";

#[derive(serde::Serialize, serde::Deserialize)]
struct Line {
    path: PathBuf,
    file: FileId,
}

/// The uploads kept local, by local path.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    path: PathBuf,
    kept: HashMap<PathBuf, FileId>,
}

impl Ledger {
    /// Reads `<state_dir>/uploaded.jsonl` (missing: empty). Unreadable lines are skipped: at
    /// worst an archive is checked against the bucket again, never uploaded twice.
    pub(crate) fn load(state_dir: &Path) -> io::Result<Ledger> {
        let path = state_dir.join(LEDGER_FILE);
        let mut kept = HashMap::new();
        match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(mut f) => {
                let mut text = Vec::new();
                f.read_to_end(&mut text)?;
                for line in text.split(|&b| b == b'\n') {
                    if let Ok(l) = serde_json::from_slice::<Line>(line) {
                        kept.insert(l.path, l.file);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(Ledger { path, kept })
    }

    /// Whether `path`, as `file` describes it, was uploaded and kept.
    pub(crate) fn has(&self, path: &Path, file: &FileId) -> bool {
        self.kept.get(path) == Some(file)
    }

    /// Records an upload kept local, durably (append + fsync).
    pub(crate) fn record(&mut self, path: &Path, file: FileId) -> io::Result<()> {
        if self.has(path, &file) {
            return Ok(());
        }
        let mut line = serde_json::to_vec(&Line {
            path: path.to_path_buf(),
            file,
        })?;
        line.push(b'\n');
        let mut f: File = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&self.path)?;
        f.write_all(&line)?;
        f.sync_data()?;
        self.kept.insert(path.to_path_buf(), file);
        Ok(())
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_a_reload_and_a_changed_file_is_not_known() {
        let dir = tempfile::tempdir().unwrap();
        let id = FileId {
            dev: 1,
            ino: 2,
            size: 3,
            mtime: (4, 5),
        };
        let mut l = Ledger::load(dir.path()).unwrap();
        l.record(Path::new("/w/T/archive/a_stream.jsonl"), id)
            .unwrap();
        let l = Ledger::load(dir.path()).unwrap();
        assert!(l.has(Path::new("/w/T/archive/a_stream.jsonl"), &id));
        let grown = FileId { size: 9, ..id };
        assert!(!l.has(Path::new("/w/T/archive/a_stream.jsonl"), &grown));
    }
}
