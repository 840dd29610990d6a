//! Which files some process holds open for writing (a scan of `/proc/*/fd`).

use std::collections::{HashMap, HashSet};

/// A file identity: `(st_dev, st_ino)`.
pub type FileId = (u64, u64);

/// For each of `candidates`, the pids that hold it open with write access
/// (`O_WRONLY`/`O_RDWR` in `/proc/<pid>/fdinfo/<fd>`). One pass over `/proc`.
pub fn writers_of(candidates: &HashSet<FileId>) -> HashMap<FileId, Vec<i32>> {
    let _ = candidates;
    todo!("procs helper")
}
