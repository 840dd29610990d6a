//! Replacing a whole file in the state dir atomically (the pane map, the clean-task cache).

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` so that a crash leaves the old file or the new one, never a
/// mix: a temp file in the same folder (a rename across filesystems is not atomic),
/// fsync, rename over `path`, then fsync the folder so the rename itself survives a crash.
///
/// For the daemon's own state files only: `path` is trusted as given (no confinement as in
/// `crate::fs`, which is for workspaces an agent can write to).
pub(crate) fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}
