//! Which files some process holds open for writing (a scan of `/proc/*/fd`).

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Which inode a file is: `(st_dev, st_ino)` (what `/proc/<pid>/fd` links are matched by; `crate::fs::FileId` adds size and mtime).
pub type DevIno = (u64, u64);

/// The identity of a file on disk, for building `candidates`.
pub fn file_id(path: &Path) -> std::io::Result<DevIno> {
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

/// True when the `flags:` line of an fdinfo file has write access (`O_WRONLY` or `O_RDWR`).
/// `None` when there is no parsable `flags:` line.
pub fn fdinfo_writable(fdinfo: &str) -> Option<bool> {
    let octal = fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))?
        .trim();
    let flags = u32::from_str_radix(octal, 8).ok()?;
    let mode = flags & libc::O_ACCMODE as u32;
    Some(mode == libc::O_WRONLY as u32 || mode == libc::O_RDWR as u32)
}

/// For each of `candidates`, the pids that hold it open with write access
/// (`O_WRONLY`/`O_RDWR` in `/proc/<pid>/fdinfo/<fd>`). One pass over `/proc`.
/// Processes and fds that vanish or cannot be read (another user's, as non-root) are skipped.
pub fn writers_of(candidates: &HashSet<DevIno>) -> HashMap<DevIno, Vec<i32>> {
    let mut out: HashMap<DevIno, Vec<i32>> = HashMap::new();
    if candidates.is_empty() {
        return out;
    }
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
            let id = (meta.dev(), meta.ino());
            if !candidates.contains(&id) {
                continue;
            }
            let info = dir.join("fdinfo").join(fd.file_name());
            let writable = std::fs::read_to_string(info)
                .ok()
                .and_then(|s| fdinfo_writable(&s));
            if writable == Some(true) {
                let pids = out.entry(id).or_default();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    #[test]
    fn fdinfo_flags_access_mode() {
        assert_eq!(
            fdinfo_writable("pos:\t0\nflags:\t0102001\nmnt_id:\t1\n"),
            Some(true)
        );
        assert_eq!(fdinfo_writable("pos:\t0\nflags:\t02000002\n"), Some(true));
        assert_eq!(fdinfo_writable("pos:\t0\nflags:\t0100000\n"), Some(false));
        assert_eq!(fdinfo_writable("pos:\t0\n"), None);
        assert_eq!(fdinfo_writable("flags:\tzz\n"), None);
    }

    #[test]
    fn in_process_append_is_a_writer_and_read_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let w = dir.path().join("w.jsonl");
        let r = dir.path().join("r.jsonl");
        std::fs::write(&r, b"x").unwrap();
        let _wf = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&w)
            .unwrap();
        let _rf = std::fs::File::open(&r).unwrap();
        let (wid, rid) = (file_id(&w).unwrap(), file_id(&r).unwrap());
        let got = writers_of(&HashSet::from([wid, rid]));
        let me = std::process::id() as i32;
        assert!(got[&wid].contains(&me));
        assert!(!got.contains_key(&rid));
    }
}
