//! Reopening a file recorded by path (journal records, registry paths) beneath a trusted folder.

use super::dir::Dir;
use super::error::FsError;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The folder holding `path`, opened beneath the longest of `roots` it lies below (no
/// symlink followed under the root), and the file's name. A path below none of the roots
/// is refused ([`FsError::OutsideRoots`]). With no roots at all, the parent folder is
/// trusted as it is (callers that never learnt the roots: unit tests).
pub fn open_parent_within(path: &Path, roots: &[PathBuf]) -> Result<(Dir, OsString), FsError> {
    let (parent, name) = split(path)?;
    if roots.is_empty() {
        return Ok((Dir::open_base(parent)?, name));
    }
    let root = roots
        .iter()
        .filter(|r| parent.starts_with(r))
        .max_by_key(|r| r.components().count())
        .ok_or_else(|| FsError::OutsideRoots {
            path: path.to_path_buf(),
        })?;
    let base = Dir::open_base(root)?;
    let rel = parent.strip_prefix(root).expect("filtered on starts_with");
    let dir = if rel.as_os_str().is_empty() {
        base
    } else {
        base.open_dir(rel)?
    };
    Ok((dir, name))
}

/// The folder holding `path`, opened beneath its ancestor `levels_up` levels above the
/// file (trusted: e.g. 2 for `<base>/TASK-x/AGENT_REGISTRY.json` and
/// `<base>/registry/GLOBAL_REGISTRY.json`, 3 for `<base>/TASK-x/progress/<file>`), no
/// symlink followed below it; and the file's name.
pub fn open_parent_below(path: &Path, levels_up: usize) -> Result<(Dir, OsString), FsError> {
    let (parent, name) = split(path)?;
    let root = path
        .ancestors()
        .nth(levels_up.max(1))
        .filter(|r| !r.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let root = if parent.starts_with(root) {
        root
    } else {
        parent
    };
    let base = Dir::open_base(root)?;
    let rel = parent.strip_prefix(root).unwrap_or(Path::new(""));
    let dir = if rel.as_os_str().is_empty() {
        base
    } else {
        base.open_dir(rel)?
    };
    Ok((dir, name))
}

fn split(path: &Path) -> Result<(&Path, OsString), FsError> {
    let bad = || FsError::BadName {
        dir: path.parent().unwrap_or(Path::new("")).to_path_buf(),
        name: path.to_string_lossy().into_owned(),
    };
    let name = path.file_name().ok_or_else(bad)?;
    let parent = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Ok((parent, name.to_os_string()))
}
