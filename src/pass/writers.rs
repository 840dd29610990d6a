//! Which regular files some process holds open for writing: one scan of `/proc/*/fd` per
//! pass, made the first time a task has a log to judge, then shared by every task.

use crate::procs::openfiles::{FileId, fdinfo_writable};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::sync::OnceLock;

/// The pass's writers index, built on first use.
#[derive(Default)]
pub struct Writers(OnceLock<HashMap<FileId, Vec<i32>>>);

impl Writers {
    pub fn get(&self) -> &HashMap<FileId, Vec<i32>> {
        self.0.get_or_init(scan)
    }
}

/// Every regular file open with write access (`O_WRONLY`/`O_RDWR`), with its writers.
/// Bounded by the open files of the machine, not by the agents of the workspace.
fn scan() -> HashMap<FileId, Vec<i32>> {
    let mut out: HashMap<FileId, Vec<i32>> = HashMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in procs.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let dir = entry.path();
        let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            // stat() follows the magic link to the open file itself, even if it was
            // renamed or unlinked since: (dev, ino) is what identifies it.
            let Ok(meta) = std::fs::metadata(fd.path()) else {
                continue;
            };
            if !meta.file_type().is_file() {
                continue;
            }
            let info = dir.join("fdinfo").join(fd.file_name());
            let writable = std::fs::read_to_string(info)
                .ok()
                .and_then(|s| fdinfo_writable(&s));
            if writable == Some(true) {
                let pids = out.entry((meta.dev(), meta.ino())).or_default();
                if !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
        }
    }
    for pids in out.values_mut() {
        pids.sort_unstable();
    }
    out
}
