//! Moving a settled log into the archive: never replacing, never losing a byte, across filesystems too.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a regular file; not archived")]
    NotRegular { path: PathBuf },
    #[error("{src}: changed while being copied to {dest}; original kept, copy removed")]
    ChangedDuringCopy { src: PathBuf, dest: PathBuf },
    #[error("{src}: copy {dest} does not match the original; original kept")]
    VerifyFailed { src: PathBuf, dest: PathBuf },
    #[error("{dir}: no free archive name for {name} after {tries} tries")]
    NoFreeName { dir: PathBuf, name: String, tries: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Archived {
    /// Same filesystem: one atomic `renameat2(RENAME_NOREPLACE)`.
    Renamed(PathBuf),
    /// Other filesystem: copied, fsynced, verified, renamed into place, source unlinked.
    Copied(PathBuf),
}

impl Archived {
    pub fn path(&self) -> &Path {
        match self {
            Archived::Renamed(p) | Archived::Copied(p) => p,
        }
    }
}

/// Moves `src` into `archive_dir` under its own name, or `<stem>.<n><.ext>` when that
/// name is taken. Creates `archive_dir` (mode 0755) when missing. Never overwrites.
pub fn archive_file(src: &Path, archive_dir: &Path) -> Result<Archived, ArchiveError> {
    let _ = (src, archive_dir);
    todo!("archive helper")
}
